import Foundation
import Logging
import NIOCore
import NIOSSL

/// One SMTP session (RFC 5321 3): opened up to the point where mail can be sent (greeting, EHLO,
/// STARTTLS and EHLO again, AUTH), then one transaction per message, then QUIT.
struct SMTPSession: Sendable {
  let connection: SMTPConnection
  let capabilities: SMTPCapabilities
  let configuration: SMTPConfiguration

  /// Connects and gets ready for the first MAIL; on failure the connection is closed.
  static func open(_ configuration: SMTPConfiguration, group: any EventLoopGroup, logger: Logger)
    async throws(SMTPError) -> SMTPSession
  {
    guard !configuration.heloName.isEmpty, !configuration.heloName.unicodeScalars.contains(where: \.isSpaceOrControl)
    else {
      throw SMTPError(kind: .permanent, stage: .ehlo, message: "the EHLO name \"\(configuration.heloName)\" is invalid")
    }
    var sslContext: NIOSSLContext?
    if configuration.security != .plaintext {
      do {
        sslContext = try NIOSSLContext(configuration: configuration.tlsConfiguration)
      } catch {
        throw SMTPError(kind: .permanent, stage: .tls, message: "invalid TLS configuration: \(error)")
      }
    }
    let connection = try await SMTPConnection.open(
      configuration, implicitTLS: configuration.security == .implicitTLS ? sslContext : nil, group: group,
      logger: logger)
    do {
      let capabilities = try await handshake(over: connection, configuration, sslContext: sslContext, logger: logger)
      return SMTPSession(connection: connection, capabilities: capabilities, configuration: configuration)
    } catch {
      connection.close()
      throw error
    }
  }

  private static func handshake(
    over connection: SMTPConnection, _ configuration: SMTPConfiguration, sslContext: NIOSSLContext?, logger: Logger
  ) async throws(SMTPError) -> SMTPCapabilities {
    let timeout = configuration.commandTimeout
    let greeting = try await connection.reply(stage: .greeting, within: timeout, awaiting: "the server's greeting")
    guard greeting.code == 220 else { throw SMTPError(reply: greeting, stage: .greeting) }

    var capabilities = try await hello(over: connection, configuration)
    if configuration.security == .startTLS, let sslContext {
      guard capabilities.startTLS else {
        throw SMTPError(
          kind: .permanent, stage: .startTLS,
          message:
            "\(configuration.host) does not offer STARTTLS, which the configuration requires (security .startTLS)")
      }
      let reply = try await connection.command("STARTTLS", stage: .startTLS, within: timeout)
      guard reply.code == 220 else { throw SMTPError(reply: reply, stage: .startTLS) }
      try await connection.startTLS(sslContext)
      // RFC 3207 4.2: what the server said before TLS no longer counts.
      capabilities = try await hello(over: connection, configuration)
      logger.debug("TLS established after STARTTLS")
    }
    logger.debug("server capabilities: \(capabilities.summary)")

    // Here the connection is encrypted, or the configuration says .plaintext: credentials never go
    // in the clear unless that was asked for.
    if let credentials = configuration.credentials {
      try await authenticate(credentials, over: connection, capabilities, configuration)
      logger.debug("authenticated as \(credentials.username)")
    }
    return capabilities
  }

  /// EHLO, or HELO for an old server when nothing EHLO brings (STARTTLS, AUTH) is needed.
  private static func hello(over connection: SMTPConnection, _ configuration: SMTPConfiguration)
    async throws(SMTPError) -> SMTPCapabilities
  {
    let timeout = configuration.commandTimeout
    let ehlo = try await connection.command("EHLO \(configuration.heloName)", stage: .ehlo, within: timeout)
    if ehlo.code == 250 { return SMTPCapabilities(ehlo: ehlo) }
    guard [500, 502].contains(ehlo.code), configuration.security != .startTLS, configuration.credentials == nil else {
      throw SMTPError(reply: ehlo, stage: .ehlo)
    }
    let helo = try await connection.command("HELO \(configuration.heloName)", stage: .ehlo, within: timeout)
    guard helo.code == 250 else { throw SMTPError(reply: helo, stage: .ehlo) }
    return SMTPCapabilities()
  }

  /// AUTH PLAIN (RFC 4616) or LOGIN, whichever the server offers (the configured preference
  /// first, then PLAIN, which takes one round trip).
  private static func authenticate(
    _ credentials: SMTPConfiguration.Credentials, over connection: SMTPConnection, _ capabilities: SMTPCapabilities,
    _ configuration: SMTPConfiguration
  ) async throws(SMTPError) {
    let timeout = configuration.commandTimeout
    let offered = capabilities.authMechanisms
    let preferences = [configuration.preferredAuthMechanism, .plain, .login].compactMap { $0 }
    guard let mechanism = preferences.first(where: { offered.contains($0.rawValue) }) else {
      throw SMTPError(
        kind: .permanent, stage: .auth,
        message: offered.isEmpty
          ? "credentials are configured but \(configuration.host) does not offer AUTH"
          : "\(configuration.host) offers AUTH \(offered.sorted().joined(separator: " ")) but not PLAIN or LOGIN")
    }
    func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
    var reply: SMTPReply
    switch mechanism {
    case .plain:
      reply = try await connection.command(
        "AUTH PLAIN " + base64("\0\(credentials.username)\0\(credentials.password)"), stage: .auth, within: timeout,
        logAs: "AUTH PLAIN <credentials>")
    case .login:
      reply = try await connection.command("AUTH LOGIN", stage: .auth, within: timeout)
      if reply.code == 334 {
        reply = try await connection.command(
          base64(credentials.username), stage: .auth, within: timeout, logAs: "<username>")
      }
      if reply.code == 334 {
        reply = try await connection.command(
          base64(credentials.password), stage: .auth, within: timeout, logAs: "<password>")
      }
    }
    guard reply.code == 235 else {
      throw SMTPError(reply: reply, stage: .auth, about: "AUTH \(mechanism.rawValue) as \(credentials.username)")
    }
  }

  // MARK: Transactions

  /// One mail transaction: MAIL, one RCPT per recipient, DATA and the message.
  ///
  /// A recipient the server refuses does not stop the others: the message goes to those it
  /// accepts, and the result names the refused ones. Only when it refuses every recipient does
  /// the transaction fail: transient if any refusal was (a later try may reach them), otherwise
  /// with the first permanent refusal.
  func transfer(_ message: EmailMessage) async throws(SMTPError) -> SMTPSendResult {
    let timeout = configuration.commandTimeout
    let payload = Self.dataPayload(MIMEMessage.render(message), allocator: connection.channel.allocator)
    var parameters = ""
    if capabilities.sizeExtension {
      if let maximum = capabilities.maximumSize, payload.readableBytes > maximum {
        throw SMTPError(
          kind: .permanent, stage: .mailFrom,
          message: "the message has \(payload.readableBytes) octets; the server takes at most \(maximum)")
      }
      parameters += " SIZE=\(payload.readableBytes)"
    }
    if !([message.from] + message.to).allSatisfy(\.isASCII) {
      guard capabilities.smtpUTF8 else {
        throw SMTPError(
          kind: .permanent, stage: .mailFrom,
          message: "a non-ASCII address needs SMTPUTF8, which the server does not offer")
      }
      parameters += " SMTPUTF8"
    }

    let mail = try await connection.command(
      "MAIL FROM:<\(message.from.address)>\(parameters)", stage: .mailFrom, within: timeout)
    guard mail.code == 250 else { throw SMTPError(reply: mail, stage: .mailFrom, about: message.from.address) }

    var addresses = Set<String>()
    var refusals: [(recipient: EmailAddress, error: SMTPError)] = []
    for recipient in message.to where addresses.insert(recipient.address).inserted {
      let reply = try await connection.command("RCPT TO:<\(recipient.address)>", stage: .rcptTo, within: timeout)
      if reply.code != 250 && reply.code != 251 {
        refusals.append((recipient, SMTPError(reply: reply, stage: .rcptTo, about: recipient.address)))
      }
    }
    if refusals.count == addresses.count, let first = refusals.first {
      throw refusals.first { $0.error.kind == .transient }?.error ?? first.error
    }

    let data = try await connection.command("DATA", stage: .data, within: timeout)
    guard data.code == 354 else { throw SMTPError(reply: data, stage: .data) }
    let accepted = try await connection.send(
      payload, stage: .data, within: configuration.dataTimeout, awaiting: "the reply to the message (after \".\")")
    guard accepted.code == 250 else { throw SMTPError(reply: accepted, stage: .data) }
    return SMTPSendResult(
      messageID: message.messageID, serverReply: accepted.lastLine,
      refusedRecipients: Dictionary(refusals, uniquingKeysWith: { first, _ in first }))
  }

  /// RSET: a clean transaction state for the next message whatever happened to the last one.
  func reset() async throws(SMTPError) {
    let reply = try await connection.command("RSET", stage: .mailFrom, within: configuration.commandTimeout)
    guard reply.code == 250 else { throw SMTPError(reply: reply, stage: .mailFrom, about: "RSET") }
  }

  /// QUIT, whose answer does not matter any more, then close.
  func quit() async {
    _ = try? await connection.command("QUIT", stage: .quit, within: configuration.commandTimeout)
    connection.close()
  }

  /// The message as DATA sends it (RFC 5321 4.5.2): every line ending in CRLF (a bare CR or LF
  /// becomes one), a "." doubled at the start of a line, then the "." line that ends it.
  static func dataPayload(_ message: String, allocator: ByteBufferAllocator) -> ByteBuffer {
    let bytes = Array(message.utf8)
    var payload = allocator.buffer(capacity: bytes.count + bytes.count / 50 + 5)
    var atLineStart = true
    var index = 0
    while index < bytes.count {
      let byte = bytes[index]
      index += 1
      if byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") {
        if byte == UInt8(ascii: "\r") && index < bytes.count && bytes[index] == UInt8(ascii: "\n") { index += 1 }
        payload.writeStaticString("\r\n")
        atLineStart = true
        continue
      }
      if atLineStart && byte == UInt8(ascii: ".") { payload.writeInteger(UInt8(ascii: ".")) }
      payload.writeInteger(byte)
      atLineStart = false
    }
    if !atLineStart { payload.writeStaticString("\r\n") }
    payload.writeStaticString(".\r\n")
    return payload
  }
}
