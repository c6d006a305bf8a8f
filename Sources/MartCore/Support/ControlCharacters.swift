// The mart's one definition of "control character", for every check of names, text fields and
// headers: Unicode's general category Cc, which is C0 (U+0000–U+001F), DEL (U+007F) and C1
// (U+0080–U+009F). Format characters (Cf: zero-width joiners, bidi marks) are not control
// characters: names and addresses in many scripts need them.
//
// JSON's own rule (U+0000–U+001F must be escaped, RFC 8259) is a grammar, not this policy, and
// stays with the JSON parser and writer.

extension Unicode.Scalar {
  /// Whether this is a control character (general category Cc).
  public var isControlCharacter: Bool { properties.generalCategory == .control }

  /// Printable ASCII: U+0020–U+007E, the characters of an HTTP token-ish value or an sf-string.
  public var isPrintableASCII: Bool { isASCII && !isControlCharacter }
}
