import NIOCore

/// One complete server reply (RFC 5321 4.2): "250-first", "250 last" is code 250 with the text
/// lines ["first", "last"].
struct SMTPReply: Sendable, Equatable {
  var code: Int
  var lines: [String]

  /// The RFC 3463 status code at the start of the text ("5.1.1"), when its class agrees with the
  /// reply code's first digit.
  var enhancedCode: String? {
    guard let first = lines.first?.split(separator: " ", maxSplits: 1).first else { return nil }
    let parts = first.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3, parts[0] == "\(code / 100)",
      parts.dropFirst().allSatisfy({
        (1...3).contains($0.count) && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber)
      })
    else { return nil }
    return String(first)
  }

  var text: String { lines.joined(separator: " ") }

  /// The code and the last line, as a log or a result shows it: "250 2.0.0 OK queued as 1".
  var lastLine: String { "\(code) \(lines.last ?? "")" }
}

/// Frames the bytes a server sends into replies: lines end in CRLF (a bare LF is tolerated), a
/// reply ends at the line whose code is followed by a space or by nothing.
struct SMTPReplyParser {
  struct Malformed: Error {
    var reason: String
  }

  /// RFC 5321 4.5.3.1.5 allows 512 octets a reply line; longer ones are taken, within reason.
  static let maximumLineLength = 4096
  static let maximumLinesPerReply = 1000

  private var pending: [UInt8] = []
  private var code: Int?
  private var lines: [String] = []

  /// Whether part of a reply has been received: bytes of a line, or lines of an unfinished reply.
  var hasPartialInput: Bool { !pending.isEmpty || !lines.isEmpty }

  mutating func append(_ buffer: ByteBuffer) {
    pending += buffer.readableBytesView
  }

  /// The next complete reply, if the input holds one.
  mutating func nextReply() throws(Malformed) -> SMTPReply? {
    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
      var line = pending[..<newline]
      pending.removeSubrange(...newline)
      if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
      if let reply = try take(line) { return reply }
    }
    guard pending.count <= Self.maximumLineLength else {
      throw Malformed(reason: "a reply line longer than \(Self.maximumLineLength) octets")
    }
    return nil
  }

  private mutating func take(_ line: ArraySlice<UInt8>) throws(Malformed) -> SMTPReply? {
    let text = String(decoding: line, as: UTF8.self)
    let digits = line.prefix(3)
    guard digits.count == 3, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
      let lineCode = Int(String(decoding: digits, as: UTF8.self)), (200...599).contains(lineCode)
    else { throw Malformed(reason: "a reply line without a code: \"\(text.prefix(100))\"") }
    guard code == nil || code == lineCode else {
      throw Malformed(reason: "a multi-line reply whose lines have different codes (\(code ?? 0), \(lineCode))")
    }
    let separator = line.dropFirst(3).first
    guard separator == nil || separator == UInt8(ascii: " ") || separator == UInt8(ascii: "-") else {
      throw Malformed(reason: "a reply line with no space or hyphen after its code: \"\(text.prefix(100))\"")
    }
    code = lineCode
    lines.append(String(decoding: line.dropFirst(4), as: UTF8.self))
    guard separator != UInt8(ascii: "-") else {
      guard lines.count < Self.maximumLinesPerReply else {
        throw Malformed(reason: "a reply of more than \(Self.maximumLinesPerReply) lines")
      }
      return nil
    }
    let reply = SMTPReply(code: lineCode, lines: lines)
    code = nil
    lines = []
    return reply
  }
}

/// What a server offers, from its EHLO reply (RFC 5321 4.1.1.1): each line after the first is a
/// keyword with parameters.
struct SMTPCapabilities: Sendable {
  private var keywords: [String: [String]] = [:]

  /// A server that answered HELO offers nothing.
  init() {}

  init(ehlo reply: SMTPReply) {
    for line in reply.lines.dropFirst() {
      let words = line.split(separator: " ").map(String.init)
      guard let keyword = words.first?.uppercased() else { continue }
      keywords[keyword] = Array(words.dropFirst())
    }
  }

  var startTLS: Bool { keywords["STARTTLS"] != nil }
  var authMechanisms: Set<String> { Set(keywords["AUTH"]?.map { $0.uppercased() } ?? []) }
  /// RFC 1870: the largest message the server takes; nil when it does not say (or says 0, no limit).
  var maximumSize: Int? { keywords["SIZE"]?.first.flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil } }
  var sizeExtension: Bool { keywords["SIZE"] != nil }
  var smtpUTF8: Bool { keywords["SMTPUTF8"] != nil }
  /// For the log: the keywords offered, e.g. "8BITMIME AUTH PIPELINING SIZE STARTTLS".
  var summary: String { keywords.keys.sorted().joined(separator: " ") }
}
