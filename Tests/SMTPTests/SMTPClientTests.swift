import Foundation
import Logging
import MartTestSupport
import NIOCore
import NIOSSL
import SMTP
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The client against aiosmtpd on loopback (scripts/smtp-test-server.py): one server per test,
/// STARTTLS with a certificate made for the test, AUTH with a random password.
@Suite("SMTP client against a real server")
struct SMTPClientTests {
  @Test("STARTTLS, AUTH PLAIN and a multipart message arrive intact")
  func startTLSAndPlain() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    // "localhost": SNI, and the certificate checked against a host name.
    let client = SMTPClient(configuration: try configuration(server, host: "localhost"), logger: logger)
    let longLine = String(repeating: "Eine lange Zeile, die weit über sechsundsiebzig Zeichen geht. ", count: 4)
    let text = ["Hallo Jörg,", "", "Grüße aus dem Laden! " + longLine, ".", ".hidden", "Preis = 10 € "]
      .joined(separator: "\n")
    let html = "<p>Grüße aus dem Laden!</p>\n<p>\(String(repeating: "<b>lang</b> = lang ", count: 12))</p>\n"
    let message = try EmailMessage(
      from: EmailAddress("shop@mart.example", name: "Mart Shop"),
      to: [EmailAddress("customer@example.com", name: "Jörg Müller")],
      subject: "Grüße: Ihre Bestellung 1042 ist unterwegs – wir melden uns, sobald sie angekommen ist",
      textBody: text, htmlBody: html, messageID: "<\(UUID().uuidString)@mart.test>",
      date: Date(timeIntervalSince1970: 1_764_979_200), headers: [("X-Mart-Delivery", "d-1042")])

    let result = try await client.send(message)

    #expect(result.messageID == message.messageID)
    #expect(result.serverReply.hasPrefix("250"))
    let received = try #require(try await server.waitForMessages(1).first)
    #expect(received.mailFrom == "shop@mart.example")
    #expect(received.recipients == ["customer@example.com"])
    #expect(received.authUser == "mart")
    #expect(received.tls)
    #expect(try server.authAttempts() == ["PLAIN mart ok"])
    #expect(received.header("Message-ID") == message.messageID)
    #expect(received.header("Date") == "Sat, 06 Dec 2025 00:00:00 +0000")
    #expect(received.header("MIME-Version") == "1.0")
    #expect(received.header("X-Mart-Delivery") == "d-1042")
    #expect(received.header("Content-Type")?.hasPrefix("multipart/alternative; boundary=\"=_") == true)
    #expect(received.header("Subject")?.hasPrefix("=?UTF-8?B?") == true)

    // Python's email package reads the message independently of the code that wrote it.
    let parsed = try await parseWithPython(received.raw)
    #expect(parsed.subject == message.subject)
    #expect(parsed.from == "Mart Shop <shop@mart.example>")
    #expect(parsed.to == "Jörg Müller <customer@example.com>")
    #expect(parsed.contentType == "multipart/alternative")
    #expect(parsed.partTypes == ["text/plain", "text/html"])
    #expect(parsed.charsets == ["UTF-8", "UTF-8"])
    #expect(parsed.transferEncodings == ["quoted-printable", "quoted-printable"])
    // Quoted-printable's line breaks are CRLF, which Python keeps in the HTML.
    #expect(parsed.text.replacingOccurrences(of: "\r\n", with: "\n") == text)
    #expect(parsed.html.replacingOccurrences(of: "\r\n", with: "\n") == html)
    #expect(parsed.defects.isEmpty)
    // Sent as it is, the "." line would have ended DATA there: it arrives intact, so it was stuffed.
    #expect(received.raw.contains("\r\n.\r\n.hidden\r\n"))
  }

  @Test("AUTH LOGIN when it is the configured preference")
  func authLogin() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.preferredAuthMechanism = .login
    let client = SMTPClient(configuration: configuration, logger: logger)

    _ = try await client.send(try makeMessage(to: "someone@example.com"))

    let received = try #require(try await server.waitForMessages(1).first)
    #expect(received.authUser == "mart")
    #expect(try server.authAttempts() == ["LOGIN mart ok"])
  }

  @Test("Plain text only: text/plain quoted-printable, lines starting with dots intact")
  func plainTextAndDots() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)
    let text = ".\n.hidden\n..two\nend.\r\nbare CR\rdone"

    _ = try await client.send(try makeMessage(to: "someone@example.com", text: text))

    let received = try #require(try await server.waitForMessages(1).first)
    #expect(received.header("Content-Type") == "text/plain; charset=UTF-8")
    #expect(received.header("Content-Transfer-Encoding") == "quoted-printable")
    let body = try #require(received.raw.components(separatedBy: "\r\n\r\n").dropFirst().first)
    #expect(body == ".\r\n.hidden\r\n..two\r\nend.\r\nbare CR\r\ndone\r\n")
  }

  @Test("451 to RCPT: transient at rcptTo; the next try goes through")
  func temporaryFailure() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)
    let message = try makeMessage(to: "tempfail-1+\(UUID().uuidString)@example.com")

    let error = try await #require(throws: SMTPError.self) { try await client.send(message) }
    #expect(error.kind == .transient)
    #expect(error.isRetryable)
    #expect(error.stage == .rcptTo)
    #expect(error.code == 451)
    #expect(error.enhancedCode == "4.3.0")

    let result = try await client.send(message)
    #expect(result.messageID == message.messageID)
    #expect(try await server.waitForMessages(1).count == 1)
  }

  @Test("550 5.1.1 to RCPT: permanent, with the enhanced code")
  func rejectedRecipient() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "reject+a@example.com"))
    }
    #expect(error.kind == .permanent)
    #expect(!error.isRetryable)
    #expect(error.stage == .rcptTo)
    #expect(error.code == 550)
    #expect(error.enhancedCode == "5.1.1")
    #expect(error.message.contains("No such user"))
    #expect(try server.receivedMessages().isEmpty)
  }

  @Test("One refused recipient of two: the message goes to the other, the result names the refused one")
  func partlyRefusedRecipients() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)
    var message = try makeMessage(to: "someone@example.com")
    message.to.append(try EmailAddress("reject+b@example.com"))

    let result = try await client.send(message)

    #expect(result.refusedRecipients.keys.map(\.address) == ["reject+b@example.com"])
    #expect(result.refusedRecipients.values.first?.code == 550)
    let received = try #require(try await server.waitForMessages(1).first)
    #expect(received.recipients == ["someone@example.com"])
  }

  @Test("No reply after the message: transient at data once dataTimeout has passed")
  func hangAfterData() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.dataTimeout = .seconds(1)
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "hang+a@example.com"))
    }
    #expect(error.kind == .transient)
    #expect(error.stage == .data)
    #expect(error.code == nil)
    #expect(error.message.contains("timed out"))
  }

  @Test("No reply to RCPT: transient at rcptTo once commandTimeout has passed")
  func hangOnRecipient() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.commandTimeout = .seconds(1)
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "hangrcpt+a@example.com"))
    }
    #expect(error.kind == .transient)
    #expect(error.stage == .rcptTo)
    #expect(error.message.contains("timed out"))
  }

  @Test("A server that accepts the connection and never greets: transient at greeting")
  func silentServer() async throws {
    let listener = try SilentListener()
    defer { listener.close() }
    var configuration = SMTPConfiguration(host: "127.0.0.1", port: listener.port, security: .startTLS)
    configuration.commandTimeout = .seconds(1)
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "someone@example.com"))
    }
    #expect(error.kind == .transient)
    #expect(error.stage == .greeting)
    #expect(error.message.contains("timed out"))
  }

  @Test("Nobody listening: transient at connect")
  func connectionRefused() async throws {
    let configuration = SMTPConfiguration(host: "127.0.0.1", port: try freePort(), security: .startTLS)
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "someone@example.com"))
    }
    #expect(error.kind == .transient)
    #expect(error.stage == .connect)
  }

  @Test("A wrong password: permanent 535 at auth")
  func wrongPassword() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.credentials = .init(username: "mart", password: "not-\(SMTPTestServer.randomPassword())")
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "someone@example.com"))
    }
    #expect(error.kind == .permanent)
    #expect(error.stage == .auth)
    #expect(error.code == 535)
    #expect(error.enhancedCode == "5.7.8")
    #expect(try server.authAttempts() == ["PLAIN mart refused"])
  }

  @Test("STARTTLS required but not offered: permanent, and no credentials sent")
  func startTLSNotOffered() async throws {
    // This server offers AUTH in the clear, so a client that went on would log in.
    let server = try await SMTPTestServer.start(tls: false)
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "someone@example.com"))
    }
    #expect(error.kind == .permanent)
    #expect(error.stage == .startTLS)
    #expect(error.message.contains("STARTTLS"))
    #expect(try server.authAttempts().isEmpty)
    #expect(try server.receivedMessages().isEmpty)
  }

  @Test("Plaintext, when chosen explicitly, authenticates in the clear")
  func explicitPlaintext() async throws {
    let server = try await SMTPTestServer.start(tls: false)
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.security = .plaintext
    let client = SMTPClient(configuration: configuration, logger: logger)

    _ = try await client.send(try makeMessage(to: "someone@example.com"))

    let received = try #require(try await server.waitForMessages(1).first)
    #expect(!received.tls)
    #expect(received.authUser == "mart")
  }

  @Test("A certificate the client does not trust: permanent at tls")
  func untrustedCertificate() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    var configuration = try configuration(server)
    configuration.tlsConfiguration = .makeClientConfiguration()  // the system's roots only
    let client = SMTPClient(configuration: configuration, logger: logger)

    let error = try await #require(throws: SMTPError.self) {
      try await client.send(try makeMessage(to: "someone@example.com"))
    }
    #expect(error.kind == .permanent)
    #expect(error.stage == .tls)
    #expect(try server.authAttempts().isEmpty)
  }

  @Test("Three messages over one session, the middle one refused: ok, failure, ok")
  func severalMessagesOneSession() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let client = SMTPClient(configuration: try configuration(server), logger: logger)
    let messages = [
      try makeMessage(to: "first@example.com"), try makeMessage(to: "reject+x@example.com"),
      try makeMessage(to: "third@example.com"),
    ]

    let results = try await client.send(messages)

    try #require(results.count == 3)
    #expect((try? results[0].get())?.messageID == messages[0].messageID)
    #expect((try? results[2].get())?.messageID == messages[2].messageID)
    guard case .failure(let error) = results[1] else {
      Issue.record("the refused message succeeded")
      return
    }
    #expect(error.kind == .permanent)
    #expect(error.code == 550)
    let received = try await server.waitForMessages(2)
    #expect(received.map(\.recipients) == [["first@example.com"], ["third@example.com"]])
    #expect(received[0].peer == received[1].peer)
    #expect(try server.authAttempts().count == 1)
  }

  @Test("An invalid message fails alone, before any connection")
  func invalidMessage() async throws {
    // Nobody listens there: a connection attempt would fail the whole call.
    let configuration = SMTPConfiguration(host: "127.0.0.1", port: try freePort(), security: .startTLS)
    let client = SMTPClient(configuration: configuration, logger: logger)
    var message = try makeMessage(to: "someone@example.com")
    message.headers = [("X-Injected", "a\r\nBcc: victim@example.com")]

    let results = try await client.send([message])

    guard case .failure(let error) = results.first else {
      Issue.record("an invalid message was sent")
      return
    }
    #expect(error.kind == .permanent)
    #expect(error.stage == .message)
  }

  // MARK: Helpers

  private let logger: Logger = {
    var logger = Logger(label: "smtp.test")
    logger.logLevel =
      ProcessInfo.processInfo.environment["MART_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .error
    return logger
  }()

  /// STARTTLS, trusting the test server's certificate, with its credentials; short deadlines.
  private func configuration(_ server: SMTPTestServer, host: String = "127.0.0.1") throws -> SMTPConfiguration {
    var configuration = SMTPConfiguration(
      host: host, port: server.port, security: .startTLS,
      credentials: server.credentials.map { .init(username: $0.user, password: $0.password) }, heloName: "mart.test")
    if let certificate = server.certificatePath {
      configuration.tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
    }
    configuration.connectTimeout = .seconds(5)
    configuration.commandTimeout = .seconds(10)
    configuration.dataTimeout = .seconds(10)
    return configuration
  }
}

func makeMessage(to recipient: String, text: String = "Your order has shipped.") throws -> EmailMessage {
  EmailMessage(
    from: try EmailAddress("shop@mart.example", name: "Mart Shop"), to: [try EmailAddress(recipient)],
    subject: "Your order", textBody: text, messageID: "<\(UUID().uuidString)@mart.test>")
}

/// What Python's email package (policy.default) makes of a message.
struct ParsedByPython: Decodable {
  var subject: String
  var from: String
  var to: String
  var contentType: String
  var partTypes: [String]
  var charsets: [String]
  var transferEncodings: [String]
  var text: String
  var html: String
  var defects: [String]
}

func parseWithPython(_ raw: String) async throws -> ParsedByPython {
  let python = try #require(ProcessInfo.processInfo.environment["MART_AIOSMTPD_PYTHON"])
  let script = """
    import email, email.policy, json, sys
    m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
    parts = [p for p in m.walk() if not p.is_multipart()]
    print(json.dumps({
        "subject": str(m["subject"]), "from": str(m["from"]), "to": str(m["to"]),
        "contentType": m.get_content_type(),
        "partTypes": [p.get_content_type() for p in parts],
        "charsets": [p.get_param("charset") for p in parts],
        "transferEncodings": [p["content-transfer-encoding"] for p in parts],
        "text": m.get_body(("plain",)).get_content(), "html": m.get_body(("html",)).get_content(),
        "defects": [str(d) for p in m.walk() for d in p.defects],
    }))
    """
  let process = try ChildProcess(
    URL(fileURLWithPath: python), ["-c", script], environment: ProcessInfo.processInfo.environment, input: raw)
  let status = await process.waitForExit()
  try #require(status == 0, "python: \(process.standardError)")
  return try JSONDecoder().decode(ParsedByPython.self, from: Data(process.standardOutput.utf8))
}

/// A TCP port that takes connections (the kernel completes them from the backlog) and never
/// says a word: a server that hangs before its greeting.
final class SilentListener {
  let port: Int
  private let descriptor: Int32

  init() throws {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(.EMFILE) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let listening = withUnsafeMutablePointer(to: &address) { pointer in
      pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(descriptor, $0, length) == 0 && listen(descriptor, 8) == 0 && getsockname(descriptor, $0, &length) == 0
      }
    }
    guard listening else {
      Glibc.close(descriptor)
      throw POSIXError(.EADDRINUSE)
    }
    self.descriptor = descriptor
    port = Int(UInt16(bigEndian: address.sin_port))
  }

  func close() {
    Glibc.close(descriptor)
  }
}

/// MIMEMessage.render and EmailAddress on their own, no server.
@Suite("MIME rendering")
struct MIMERenderingTests {
  @Test("Line lengths, CRLF, encoded words and quoted-printable that decode back")
  func render() throws {
    let subject = "Ihre Bestellung: Grüße, Überraschungen und 🎁 Geschenke für die ganze Familie – bis Freitag"
    let text = "Grüße!\nA line with = and trailing space \r\n\(String(repeating: "0123456789 ", count: 20))\rend\t"
    let html = "<p>\(String(repeating: "Grüße ", count: 30))</p>"
    let message = EmailMessage(
      from: try EmailAddress("shop@mart.example", name: "Mart, the shop"),
      to: [
        try EmailAddress("jane@example.com", name: "Jane Doe"),
        try EmailAddress("jörg@example.com", name: "Jörg Müller"),
        try EmailAddress("plain@example.com"),
      ],
      subject: subject, textBody: text, htmlBody: html, messageID: "<abc@mart.test>",
      date: Date(timeIntervalSince1970: 951_782_400 + 3661), headers: [("X-Note", "Ünïcode value")])

    let rendered = MIMEMessage.render(message)

    #expect(!rendered.replacingOccurrences(of: "\r\n", with: "").contains { $0 == "\r" || $0 == "\n" })
    let (head, body) = try #require(headAndBody(rendered))
    let headLines = head.components(separatedBy: "\r\n")
    #expect(headLines.allSatisfy { $0.utf8.count <= 78 }, "\(headLines.filter { $0.utf8.count > 78 })")
    let bodyLines = body.components(separatedBy: "\r\n")
    #expect(bodyLines.allSatisfy { $0.utf8.count <= 76 }, "\(bodyLines.filter { $0.utf8.count > 76 })")
    // Only the non-ASCII address is not ASCII: everything else is encoded.
    #expect(rendered.replacingOccurrences(of: "jörg@example.com", with: "").utf8.allSatisfy { $0 < 0x80 })

    #expect(mimeHeader("Date", in: rendered) == "Tue, 29 Feb 2000 01:01:01 +0000")
    #expect(decodeEncodedWords(try #require(mimeHeader("Subject", in: rendered))) == subject)
    #expect(decodeEncodedWords(try #require(mimeHeader("X-Note", in: rendered))) == "Ünïcode value")
    #expect(mimeHeader("From", in: rendered) == "\"Mart, the shop\" <shop@mart.example>")
    let to = try #require(mimeHeader("To", in: rendered))
    #expect(to.hasPrefix("Jane Doe <jane@example.com>, =?UTF-8?B?"))
    #expect(to.hasSuffix("<jörg@example.com>, plain@example.com"))
    #expect(decodeEncodedWords(to).contains("Jörg Müller <jörg@example.com>"))

    let parts = try #require(multipartParts(rendered))
    try #require(parts.count == 2)
    #expect(mimeHeader("Content-Type", in: parts[0]) == "text/plain; charset=UTF-8")
    #expect(mimeHeader("Content-Type", in: parts[1]) == "text/html; charset=UTF-8")
    #expect(mimeHeader("Content-Transfer-Encoding", in: parts[0]) == "quoted-printable")
    let plain = try #require(headAndBody(parts[0])?.body)
    #expect(plain.contains("=3D"))
    #expect(plain.contains("space=20\r\n"))
    #expect(plain.hasSuffix("end=09"))
    #expect(
      decodeQuotedPrintable(plain)
        == text.replacingOccurrences(of: "\r\n", with: "\n")
        .replacingOccurrences(of: "\r", with: "\n").replacingOccurrences(of: "\n", with: "\r\n"))
    #expect(decodeQuotedPrintable(try #require(headAndBody(parts[1])?.body)) == html)
  }

  @Test("A new boundary each time, one quoted-printable cannot contain")
  func boundaries() throws {
    let message = EmailMessage(
      from: try EmailAddress("a@example.com"), to: [try EmailAddress("b@example.com")], subject: "Hi",
      textBody: "x", htmlBody: "<p>x</p>", messageID: "<1@example.com>")
    let first = try #require(mimeHeader("Content-Type", in: MIMEMessage.render(message)))
    let second = try #require(mimeHeader("Content-Type", in: MIMEMessage.render(message)))
    #expect(first != second)
    #expect(first.contains("boundary=\"=_"))
  }

  @Test(
    "Invalid addresses are refused",
    arguments: [
      "", "no-at-sign", "two@@example.com", "a@b@example.com", "@example.com", "local@", "a b@example.com",
      "a@example.com\r\nRCPT TO:<x@example.com>", "<a@example.com>", "a\t@example.com",
    ])
  func invalidAddress(_ address: String) {
    #expect(throws: SMTPError.self) { try EmailAddress(address) }
  }

  @Test("Valid addresses are kept as they are")
  func validAddress() throws {
    #expect(try EmailAddress("tempfail-2+a@example.com").address == "tempfail-2+a@example.com")
    #expect(try EmailAddress("jörg@例え.jp", name: "Jörg").name == "Jörg")
    #expect(throws: SMTPError.self) { try EmailAddress("a@example.com", name: "Line\nbreak") }
  }
}

/// The header section and the body of a message or part.
func headAndBody(_ message: String) -> (head: String, body: String)? {
  guard let blank = message.range(of: "\r\n\r\n") else { return nil }
  return (String(message[..<blank.lowerBound]), String(message[blank.upperBound...]))
}

/// The parts of a multipart message, each with its headers, without the delimiters' CRLFs.
func multipartParts(_ message: String) -> [String]? {
  guard let contentType = mimeHeader("Content-Type", in: message),
    let boundary = contentType.components(separatedBy: "boundary=\"").last?.components(separatedBy: "\"").first
  else { return nil }
  let chunks = message.components(separatedBy: "\r\n--\(boundary)")
  guard chunks.last == "--\r\n" else { return nil }
  return chunks.dropFirst().dropLast().map { String($0.dropFirst()) }  // "\r\n" is one Character
}

func decodeQuotedPrintable(_ encoded: String) -> String {
  let input = Array(encoded.replacingOccurrences(of: "=\r\n", with: "").utf8)
  var output: [UInt8] = []
  var index = 0
  while index < input.count {
    if input[index] == UInt8(ascii: "="), index + 2 < input.count,
      let byte = UInt8(String(decoding: input[(index + 1)...(index + 2)], as: UTF8.self), radix: 16)
    {
      output.append(byte)
      index += 3
    } else {
      output.append(input[index])
      index += 1
    }
  }
  return String(decoding: output, as: UTF8.self)
}

/// Decodes RFC 2047 "B" words; white space between two encoded words goes (RFC 2047 6.2).
func decodeEncodedWords(_ value: String) -> String {
  var output = ""
  var previousWasEncoded = false
  for (index, token) in value.split(separator: " ", omittingEmptySubsequences: false).enumerated() {
    let encoded = token.hasPrefix("=?UTF-8?B?") && token.hasSuffix("?=")
    if index > 0 && !(encoded && previousWasEncoded) { output += " " }
    if encoded, let data = Data(base64Encoded: String(token.dropFirst(10).dropLast(2))) {
      output += String(decoding: data, as: UTF8.self)
    } else {
      output += token
    }
    previousWasEncoded = encoded
  }
  return output
}
