import Foundation

/// Renders an EmailMessage as an RFC 5322 message with MIME (RFC 2045-2047) bodies.
///
/// Every line ends in CRLF. The bodies are quoted-printable, so they are 7-bit ASCII with lines
/// of at most 76 characters whatever the text holds; header fields are folded to 76 characters
/// where their words allow (the RFC 2047 limit for lines with encoded words, inside RFC 5322's 78)
/// and non-ASCII text in them is written as encoded words. Only a non-ASCII address (which needs
/// SMTPUTF8) puts raw UTF-8 in the message.
public enum MIMEMessage {
  public static func render(_ message: EmailMessage) -> String {
    var output = ""
    output += header("Date", [rfc5322Date(message.date)])
    output += header("From", addressTokens([message.from], after: "From"))
    output += header("To", addressTokens(message.to, after: "To"))
    output += header("Subject", unstructuredTokens(message.subject, after: "Subject"))
    output += header("Message-ID", [message.messageID])
    output += header("MIME-Version", ["1.0"])
    for (name, value) in message.headers
    where EmailMessage.isAllowedHeaderName(name) && EmailMessage.isAllowedHeaderValue(value) {
      output += header(name, unstructuredTokens(value, after: name))
    }
    guard let html = message.htmlBody else {
      output += textPartHeaders(subtype: "plain")
      return output + "\r\n" + quotedPrintable(message.textBody) + "\r\n"
    }
    let boundary = makeBoundary()
    output += header("Content-Type", ["multipart/alternative;", "boundary=\"\(boundary)\""])
    output += "\r\n"
    for (subtype, body) in [("plain", message.textBody), ("html", html)] {
      output += "--\(boundary)\r\n" + textPartHeaders(subtype: subtype) + "\r\n" + quotedPrintable(body) + "\r\n"
    }
    return output + "--\(boundary)--\r\n"
  }

  static let maximumHeaderLineLength = 76
  static let maximumEncodedWordLength = 75

  private static func textPartHeaders(subtype: String) -> String {
    header("Content-Type", ["text/\(subtype);", "charset=UTF-8"])
      + header("Content-Transfer-Encoding", ["quoted-printable"])
  }

  /// A boundary that quoted-printable output cannot contain: there "=" is always followed by two
  /// hex digits or a line break, never by "_" (RFC 2045 6.7, RFC 2046 5.1.1).
  private static func makeBoundary() -> String {
    var generator = SystemRandomNumberGenerator()
    let random = (0..<2).map { _ in String(generator.next() as UInt64, radix: 16) }.joined(separator: "_")
    return "=_" + random
  }

  // MARK: Header fields

  /// "Name: tokens", folded (RFC 5322 2.2.3) before a token that would pass the line limit. The
  /// first token always stays on the name's line; callers size it to fit.
  static func header(_ name: String, _ tokens: [String]) -> String {
    var field = name + ":"
    var lineLength = field.count
    for (index, token) in tokens.enumerated() {
      if index > 0 && lineLength + 1 + token.count > maximumHeaderLineLength {
        field += "\r\n"
        lineLength = 0
      }
      field += " " + token
      lineLength += 1 + token.count
    }
    return field + "\r\n"
  }

  /// Free text (RFC 5322 "unstructured"): its words as they are when that is safe to fold and
  /// unambiguous, otherwise encoded words.
  static func unstructuredTokens(_ text: String, after name: String) -> [String] {
    if text.isEmpty { return [] }
    let firstLimit = maximumHeaderLineLength - name.count - 2
    let words = text.split(separator: " ", omittingEmptySubsequences: false)
    let plain =
      text.unicodeScalars.allSatisfy { (32...126).contains($0.value) }
      && !text.contains("=?")
      && !words.contains { $0.isEmpty }  // leading, trailing or repeated spaces: folding would change them
      && words.enumerated().allSatisfy {
        $0.element.count <= ($0.offset == 0 ? firstLimit : maximumHeaderLineLength - 1)
      }
    return plain ? words.map(String.init) : encodedWords(text, firstLimit: firstLimit)
  }

  /// A comma-separated address list; display names are atoms, a quoted string, or encoded words.
  static func addressTokens(_ addresses: [EmailAddress], after name: String) -> [String] {
    var tokens: [String] = []
    for (index, address) in addresses.enumerated() {
      var mailbox: [String]
      if let displayName = address.name, !displayName.isEmpty {
        let firstLimit = tokens.isEmpty ? maximumHeaderLineLength - name.count - 2 : maximumEncodedWordLength
        mailbox = phraseTokens(displayName, firstLimit: firstLimit) + ["<\(address.address)>"]
      } else {
        mailbox = [address.address]
      }
      if index < addresses.count - 1, let last = mailbox.popLast() { mailbox.append(last + ",") }
      tokens += mailbox
    }
    return tokens
  }

  /// RFC 5322 3.2.5 phrase: plain atoms when every character is atext, a quoted string when it is
  /// printable ASCII with specials in it, encoded words when it is not ASCII.
  private static func phraseTokens(_ phrase: String, firstLimit: Int) -> [String] {
    guard phrase.unicodeScalars.allSatisfy({ (32...126).contains($0.value) }) else {
      return encodedWords(phrase, firstLimit: firstLimit)
    }
    let words = phrase.split(separator: " ")
    if !phrase.contains("=?") && words.allSatisfy({ $0.unicodeScalars.allSatisfy(isAtext) }) {
      return words.map(String.init)
    }
    let escaped = phrase.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    return ["\"\(escaped)\""]
  }

  private static func isAtext(_ scalar: Unicode.Scalar) -> Bool {
    ("0"..."9").contains(scalar) || ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar)
      || "!#$%&'*+-/=?^_`{|}~".unicodeScalars.contains(scalar)
  }

  /// RFC 2047 "B" encoded words of at most 75 characters (the first at most `firstLimit`), each
  /// holding whole characters, as RFC 2047 5 requires.
  static func encodedWords(_ text: String, firstLimit: Int) -> [String] {
    func encodedLength(_ octets: Int) -> Int { "=?UTF-8?B??=".count + (octets + 2) / 3 * 4 }
    func word(_ octets: [UInt8]) -> String { "=?UTF-8?B?" + Data(octets).base64EncodedString() + "?=" }
    var words: [String] = []
    var chunk: [UInt8] = []
    var limit = min(firstLimit, maximumEncodedWordLength)
    for scalar in text.unicodeScalars {
      var octets: [UInt8] = []
      UTF8.encode(scalar) { octets.append($0) }
      if !chunk.isEmpty && encodedLength(chunk.count + octets.count) > limit {
        words.append(word(chunk))
        chunk = []
        limit = maximumEncodedWordLength
      }
      chunk += octets
    }
    words.append(word(chunk))
    return words
  }

  /// RFC 5322 3.3, in UTC: "Fri, 05 Dec 2025 09:28:00 +0000".
  static func rfc5322Date(_ date: Date) -> String {
    let seconds = Int(date.timeIntervalSince1970.rounded(.down))
    let (days, secondOfDay) = seconds.quotientAndRemainder(dividingBy: 86_400)
    // Floor division: a date before 1970 must not round towards it.
    let (day, second) = secondOfDay < 0 ? (days - 1, secondOfDay + 86_400) : (days, secondOfDay)
    let (year, month, dayOfMonth) = civilDate(daysSince1970: day)
    let weekdays = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]  // 1970-01-01 was a Thursday
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func twoDigits(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
    return "\(weekdays[((day % 7) + 7) % 7]), \(twoDigits(dayOfMonth)) \(months[month - 1]) \(year) "
      + "\(twoDigits(second / 3600)):\(twoDigits(second / 60 % 60)):\(twoDigits(second % 60)) +0000"
  }

  /// The proleptic Gregorian date of a day count (Howard Hinnant's days_from_civil, inverted),
  /// rather than Calendar, whose answers depend on the process's settings.
  private static func civilDate(daysSince1970 days: Int) -> (year: Int, month: Int, day: Int) {
    let shifted = days + 719_468  // days since 0000-03-01
    let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
    let dayOfEra = shifted - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let shiftedMonth = (5 * dayOfYear + 2) / 153  // 0 = March
    let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
    let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
    return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
  }

  // MARK: Bodies

  /// RFC 2045 6.7 quoted-printable of the UTF-8 text. Its line breaks (CRLF, LF or CR) become
  /// CRLF hard breaks; longer lines get soft breaks ("=" at the end) so that no line passes 76
  /// characters; "=", bytes outside printable ASCII and white space that would end a line are
  /// written as =XX.
  static func quotedPrintable(_ text: String) -> String {
    let hex = Array("0123456789ABCDEF".utf8)
    var output: [UInt8] = []
    for (index, line) in hardLines(text).enumerated() {
      if index > 0 { output += [13, 10] }
      var lineLength = 0
      for (position, byte) in line.enumerated() {
        let endsLine = position == line.count - 1
        let isWhitespace = byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
        let literal = ((33...126).contains(byte) && byte != UInt8(ascii: "=")) || (isWhitespace && !endsLine)
        let unit = literal ? [byte] : [UInt8(ascii: "="), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
        // A unit that does not end the line leaves room for a soft break's "=".
        if lineLength + unit.count > (endsLine ? 76 : 75) {
          output += [UInt8(ascii: "="), 13, 10]
          lineLength = 0
        }
        output += unit
        lineLength += unit.count
      }
    }
    return String(decoding: output, as: UTF8.self)
  }

  /// The text's lines, split at CRLF, LF or a lone CR.
  private static func hardLines(_ text: String) -> [ArraySlice<UInt8>] {
    let bytes = Array(text.utf8)
    var lines: [ArraySlice<UInt8>] = []
    var start = 0
    var index = 0
    while index < bytes.count {
      switch bytes[index] {
      case 13:
        lines.append(bytes[start..<index])
        index += index + 1 < bytes.count && bytes[index + 1] == 10 ? 2 : 1
        start = index
      case 10:
        lines.append(bytes[start..<index])
        index += 1
        start = index
      default:
        index += 1
      }
    }
    lines.append(bytes[start..<bytes.count])
    return lines
  }
}
