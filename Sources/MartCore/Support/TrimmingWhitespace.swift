extension StringProtocol {
  /// The text without leading and trailing Unicode whitespace (Foundation-free).
  package func trimmingWhitespace() -> String {
    let scalars = Array(unicodeScalars)
    guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
      let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
    else { return "" }
    return String(String.UnicodeScalarView(scalars[first...last]))
  }
}
