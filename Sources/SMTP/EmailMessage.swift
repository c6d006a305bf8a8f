import Foundation

/// A mailbox: an address as used in the envelope (MAIL FROM, RCPT TO) and, with its display
/// name, in the From and To headers.
public struct EmailAddress: Sendable, Hashable {
  public var address: String
  public var name: String?

  /// Accepts a plain addr-spec ("local@domain"): one "@", a non-empty local part of at most 64
  /// octets and a non-empty domain, no white space, control characters or angle brackets (which
  /// would let an address end the command or the header it is written into). Quoted local parts
  /// are not supported. A non-ASCII address needs a server that offers SMTPUTF8.
  public init(_ address: String, name: String? = nil) throws {
    let parts = address.split(separator: "@", omittingEmptySubsequences: false)
    guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
      throw Self.invalid(address, "it needs exactly one @ between a local part and a domain")
    }
    guard parts[0].utf8.count <= 64, address.utf8.count <= 254 else {
      throw Self.invalid(address, "it is longer than RFC 5321 allows")
    }
    guard !address.unicodeScalars.contains(where: { $0 == "<" || $0 == ">" || $0.isSpaceOrControl }) else {
      throw Self.invalid(address, "it contains white space, a control character or an angle bracket")
    }
    if let name, name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
      throw Self.invalid(address, "its display name contains a control character")
    }
    self.address = address
    self.name = name
  }

  var isASCII: Bool { address.utf8.allSatisfy { $0 < 0x80 } }

  private static func invalid(_ address: String, _ reason: String) -> SMTPError {
    SMTPError(kind: .permanent, stage: .message, message: "invalid email address \"\(address)\": \(reason)")
  }
}

/// One message: its envelope (the sender and the recipients) and what MIMEMessage renders.
public struct EmailMessage: Sendable {
  public var from: EmailAddress
  public var to: [EmailAddress]
  public var subject: String
  public var textBody: String
  /// When set, the message is multipart/alternative: the text first, then the HTML.
  public var htmlBody: String?
  /// The Message-ID header, angle brackets included ("<id@domain>"). The caller chooses it so that
  /// a retried delivery carries the same one and receivers can tell it is the same message.
  public var messageID: String
  public var date: Date
  /// Extra header fields, in order. The client sets Date, From, To, Subject, Message-ID and the
  /// MIME fields itself; send refuses a message that sets one of those, or a name or value with
  /// CR or LF in it (MIMEMessage.render leaves such fields out). Non-ASCII values are encoded.
  public var headers: [(String, String)]

  public init(
    from: EmailAddress, to: [EmailAddress], subject: String, textBody: String, htmlBody: String? = nil,
    messageID: String, date: Date = Date(), headers: [(String, String)] = []
  ) {
    self.from = from
    self.to = to
    self.subject = subject
    self.textBody = textBody
    self.htmlBody = htmlBody
    self.messageID = messageID
    self.date = date
    self.headers = headers
  }

  /// The header fields the client writes itself, lower-cased.
  static let reservedHeaders: Set<String> = [
    "date", "from", "to", "cc", "bcc", "subject", "message-id", "mime-version", "content-type",
    "content-transfer-encoding",
  ]

  /// RFC 5322 2.2: printable ASCII but for the colon; and none of the fields we write.
  static func isAllowedHeaderName(_ name: String) -> Bool {
    !name.isEmpty && name.utf8.allSatisfy { (33...126).contains($0) && $0 != UInt8(ascii: ":") }
      && !reservedHeaders.contains(name.lowercased())
  }

  static func isAllowedHeaderValue(_ value: String) -> Bool {
    !value.utf8.contains { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }
  }

  /// Why the message cannot be sent as it is, checked before any connection is made.
  func validate() throws(SMTPError) {
    func invalid(_ reason: String) -> SMTPError { SMTPError(kind: .permanent, stage: .message, message: reason) }
    guard !to.isEmpty else { throw invalid("the message has no recipient") }
    let id = messageID.utf8
    guard id.first == UInt8(ascii: "<"), id.last == UInt8(ascii: ">"), id.contains(UInt8(ascii: "@")),
      id.count <= 250, id.allSatisfy({ (33...126).contains($0) })
    else { throw invalid("the Message-ID \"\(messageID)\" is not of the form <left@right>") }
    for (name, value) in headers {
      guard Self.isAllowedHeaderName(name) else {
        throw invalid("the header name \"\(name)\" is not allowed (invalid, or a field the client writes itself)")
      }
      guard Self.isAllowedHeaderValue(value) else { throw invalid("the \(name) header's value contains CR or LF") }
    }
  }
}

extension Unicode.Scalar {
  var isSpaceOrControl: Bool { properties.isWhitespace || properties.generalCategory == .control }
}
