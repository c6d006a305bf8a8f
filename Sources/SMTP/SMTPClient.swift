import Logging
import NIOCore
import NIOPosix

/// What the server said to an accepted message.
public struct SMTPSendResult: Sendable {
  public var messageID: String
  /// The server's last reply line to the message, e.g. "250 2.0.0 OK queued as 1A2B3C".
  public var serverReply: String
  /// Recipients the server refused while it accepted others (the message went to those only).
  public var refusedRecipients: [EmailAddress: SMTPError]

  public init(messageID: String, serverReply: String, refusedRecipients: [EmailAddress: SMTPError] = [:]) {
    self.messageID = messageID
    self.serverReply = serverReply
    self.refusedRecipients = refusedRecipients
  }
}

/// Submits mail to one server. Each call is a session of its own; the client keeps no connection
/// between calls. Everything it throws is an SMTPError.
public struct SMTPClient: Sendable {
  public let configuration: SMTPConfiguration
  private let eventLoopGroup: any EventLoopGroup
  private let logger: Logger

  public init(
    configuration: SMTPConfiguration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    logger: Logger = Logger(label: "smtp")
  ) {
    self.configuration = configuration
    self.eventLoopGroup = eventLoopGroup
    var logger = logger
    logger[metadataKey: "smtp.server"] = "\(configuration.host):\(configuration.port)"
    self.logger = logger
  }

  /// One session: connect, greeting, EHLO, STARTTLS and EHLO again, AUTH, then the message, then QUIT.
  public func send(_ message: EmailMessage) async throws -> SMTPSendResult {
    try await send([message])[0].get()
  }

  /// Several messages over one session, with RSET between them; one result per message, in order.
  /// A message that is refused (or invalid) fails alone; once the connection is lost, the
  /// messages not yet sent fail with a transient error. Throws when the session cannot be set
  /// up (connection, TLS, AUTH), so that no message was sent.
  public func send(_ messages: [EmailMessage]) async throws -> [Result<SMTPSendResult, SMTPError>] {
    try await send(messages) { _, _ in }
  }

  /// `send(_:)`, telling `onResult` each message's outcome (its index and result) as soon as the
  /// server has answered it, so that a caller can record it before the session goes on: what a
  /// server accepted is then not lost if the caller dies during a later message.
  public func send(
    _ messages: [EmailMessage], onResult: (Int, Result<SMTPSendResult, SMTPError>) async -> Void
  ) async throws -> [Result<SMTPSendResult, SMTPError>] {
    var results: [Result<SMTPSendResult, SMTPError>] = []
    func append(_ result: Result<SMTPSendResult, SMTPError>) async {
      results.append(result)
      await onResult(results.count - 1, result)
    }
    var session: SMTPSession?
    var lostConnection: SMTPError?
    for message in messages {
      do throws(SMTPError) {
        try message.validate()
      } catch {
        await append(.failure(error))
        continue
      }
      if let lostConnection {
        await append(
          .failure(
            SMTPError(
              kind: .transient, stage: lostConnection.stage,
              message: "not sent: the connection was lost with an earlier message (\(lostConnection.message))")))
        continue
      }
      let isFirstTransaction = session == nil
      let current: SMTPSession
      if let session {
        current = session
      } else {
        current = try await SMTPSession.open(configuration, group: eventLoopGroup, logger: logger)
      }
      session = current
      do throws(SMTPError) {
        if !isFirstTransaction { try await current.reset() }
        let result = try await current.transfer(message)
        logger.debug("message \(message.messageID) accepted: \(result.serverReply)")
        await append(.success(result))
      } catch {
        logger.debug("message \(message.messageID) not sent: \(error)")
        await append(.failure(error))
        // 421: the server is closing the connection (RFC 5321 3.8).
        let isOpen = await current.connection.isOpen()
        if error.code == 421 || !isOpen { lostConnection = error }
      }
    }
    await session?.quit()
    return results
  }
}
