/// JSON string literals (RFC 8259), for code that writes JSON by hand: log lines, outbox
/// headers, the gateway's responses.
public enum JSONString {
  /// `text` as a JSON string literal, quotes included: `"`, `\` and control characters escaped
  /// (the short forms where JSON has them), everything else as is.
  public static func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case let control where control.value < 0x20:
        let hex = String(control.value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }
}
