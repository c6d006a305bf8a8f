import MartRuntime
import Testing

/// The one definition of "control character" (general category Cc), and the text check built on it.
@Suite struct ControlCharacterTests {
  @Test func controlCharactersAreC0DelAndC1() {
    for value in [0x00, 0x09, 0x0A, 0x1B, 0x1F, 0x7F, 0x80, 0x85, 0x9F] as [UInt32] {
      #expect(Unicode.Scalar(value)?.isControlCharacter == true, "U+\(String(value, radix: 16))")
    }
    // Printable characters, and format characters that names in many scripts need (ZWNJ, ZWJ,
    // the right-to-left mark, the soft hyphen), are not.
    for value in [0x20, 0x41, 0x7E, 0xA0, 0xAD, 0x200C, 0x200D, 0x200F, 0xFEFF] as [UInt32] {
      #expect(Unicode.Scalar(value)?.isControlCharacter == false, "U+\(String(value, radix: 16))")
    }
  }

  @Test func printableASCIIIsASCIIWithoutControls() {
    func printable(_ text: String) -> Bool { text.unicodeScalars.allSatisfy { $0.isPrintableASCII } }
    #expect(printable(" ~azAZ09\""))
    for text in ["\u{1F}", "\u{7F}", "é", "\u{85}"] {
      #expect(!printable(text), "\(text.debugDescription)")
    }
  }

  @Test func textValidationRefusesControlsButMayAllowLineBreaks() {
    #expect(RequestValidation.containsControlCharacters("a\u{7F}b"))
    #expect(RequestValidation.containsControlCharacters("a\nb"))
    #expect(!RequestValidation.containsControlCharacters("a\n\r\tb", allowingNewlines: true))
    #expect(RequestValidation.containsControlCharacters("a\u{0}b", allowingNewlines: true))
    #expect(!RequestValidation.containsControlCharacters("Zoë \u{200D}"))
    var validation = RequestValidation()
    _ = validation.text("bad\u{1B}[31m", field: "name", maximum: 100)
    #expect(validation.violations == [FieldViolation("name", "must not contain control characters")])
  }
}
