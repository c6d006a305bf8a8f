import Foundation

/// `application/x-www-form-urlencoded` as payment and SMS providers write and read it.
public enum FormEncoding {
  /// Characters kept as they are (RFC 3986 unreserved).
  public static let unreserved = CharacterSet(
    charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

  public static func encode(_ fields: [(String, String)]) -> String {
    fields.map { "\(escape($0.0))=\(escape($0.1))" }.joined(separator: "&")
  }

  public static func escape(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? ""
  }

  /// The fields of a form body in the order they were sent (`+` is a space); nil if it is not a
  /// well-formed form.
  public static func decode(_ body: String) -> [(String, String)]? {
    var fields: [(String, String)] = []
    for pair in body.split(separator: "&", omittingEmptySubsequences: true) {
      let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      guard let name = unescape(parts[0]) else { return nil }
      let value = parts.count > 1 ? unescape(parts[1]) : ""
      guard let value else { return nil }
      fields.append((name, value))
    }
    return fields
  }

  public static func unescape(_ text: Substring) -> String? {
    text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
  }
}
