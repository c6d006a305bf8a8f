import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// One TCP connection to the server, seen from async code: each call hops to the event loop,
/// waits for the handler's reply with its deadline, and turns a failure into the SMTPError of
/// the stage it happened in. Cancelling the calling task closes the connection.
struct SMTPConnection: Sendable {
  let channel: any Channel
  let handler: NIOLoopBound<SMTPClientHandler>
  let host: String
  let logger: Logger

  /// Connects, with TLS from the first byte when `implicitTLS` is given.
  static func open(
    _ configuration: SMTPConfiguration, implicitTLS sslContext: NIOSSLContext?, group: any EventLoopGroup,
    logger: Logger
  ) async throws(SMTPError) -> SMTPConnection {
    let host = configuration.host
    let serverName = serverHostname(host)
    let bootstrap = ClientBootstrap(group: group).connectTimeout(TimeAmount(configuration.connectTimeout))
    do {
      return try await bootstrap.connect(host: host, port: configuration.port) { channel in
        channel.eventLoop.makeCompletedFuture {
          if let sslContext {
            let tlsHandler = try NIOSSLClientHandler(context: sslContext, serverHostname: serverName)
            try channel.pipeline.syncOperations.addHandler(tlsHandler)
          }
          let handler = SMTPClientHandler(eventLoop: channel.eventLoop, tlsHandshakeUnderway: sslContext != nil)
          try channel.pipeline.syncOperations.addHandler(handler)
          return SMTPConnection(
            channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop), host: host, logger: logger)
        }
      }
    } catch let error where error is NIOSSLError || error is NIOSSLExtraError {
      // Made before connecting, from the configuration: only a change of it helps.
      throw SMTPError(kind: .permanent, stage: .tls, message: "cannot set up TLS for \(host): \(error)")
    } catch ChannelError.connectTimeout {
      throw SMTPError(
        kind: .transient, stage: .connect,
        message: "timed out after \(configuration.connectTimeout) connecting to \(host):\(configuration.port)")
    } catch {
      throw SMTPError(
        kind: .transient, stage: .connect, message: "cannot connect to \(host):\(configuration.port): \(error)")
    }
  }

  /// The SNI and certificate name: the host, unless it is an IP address (which SNI must not carry;
  /// NIOSSL then checks the certificate against the address it connected to).
  static func serverHostname(_ host: String) -> String? {
    (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil
  }

  /// Sends one command line and waits for its reply. `logAs` stands in for a line that must not
  /// reach the log (AUTH's credentials).
  func command(_ line: String, stage: SMTPError.Stage, within timeout: Duration, logAs: String? = nil)
    async throws(SMTPError) -> SMTPReply
  {
    logger.trace("C: \(logAs ?? line)")
    var bytes = channel.allocator.buffer(capacity: line.utf8.count + 2)
    bytes.writeString(line)
    bytes.writeString("\r\n")
    return try await send(bytes, stage: stage, within: timeout, awaiting: "the reply to \(logAs ?? line)")
  }

  /// Writes `bytes` (a command, or the message) and waits for the reply.
  func send(_ bytes: ByteBuffer, stage: SMTPError.Stage, within timeout: Duration, awaiting what: String)
    async throws(SMTPError) -> SMTPReply
  {
    let handler = self.handler
    let reply = try await wait(
      for: channel.eventLoop.flatSubmit { handler.value.send(bytes, replyWithin: TimeAmount(timeout)) },
      stage: stage, timeout: timeout, awaiting: what)
    logger.trace("S: \(reply.code) \(reply.lines.joined(separator: " | "))")
    return reply
  }

  /// Waits for a reply nobody asked for: the greeting.
  func reply(stage: SMTPError.Stage, within timeout: Duration, awaiting what: String) async throws(SMTPError)
    -> SMTPReply
  {
    let handler = self.handler
    let reply = try await wait(
      for: channel.eventLoop.flatSubmit { handler.value.nextReply(within: TimeAmount(timeout)) },
      stage: stage, timeout: timeout, awaiting: what)
    logger.trace("S: \(reply.code) \(reply.lines.joined(separator: " | "))")
    return reply
  }

  /// Starts TLS after the server's 220 to STARTTLS. The handshake runs within the deadline of the
  /// next reply, which can only come through it.
  func startTLS(_ sslContext: NIOSSLContext) async throws(SMTPError) {
    let handler = self.handler
    let serverName = Self.serverHostname(host)
    do {
      try await channel.eventLoop.submit {
        try handler.value.startTLS(context: sslContext, serverHostname: serverName)
      }.get()
    } catch {
      throw failure(error, stage: .tls, timeout: nil, awaiting: "the TLS handshake")
    }
  }

  /// Whether the connection can carry another command (after one failed).
  func isOpen() async -> Bool {
    let handler = self.handler
    return (try? await channel.eventLoop.submit { handler.value.isOpen }.get()) ?? false
  }

  func close() {
    channel.close(promise: nil)
  }

  private func wait<Value: Sendable>(
    for future: EventLoopFuture<Value>, stage: SMTPError.Stage, timeout: Duration, awaiting what: String
  ) async throws(SMTPError) -> Value {
    do {
      return try await withTaskCancellationHandler {
        try await future.get()
      } onCancel: { [channel] in
        channel.close(promise: nil)
      }
    } catch {
      throw failure(error, stage: stage, timeout: timeout, awaiting: what)
    }
  }

  /// `timeout`: the deadline of the wait that failed, if it had one.
  private func failure(_ error: any Error, stage: SMTPError.Stage, timeout: Duration?, awaiting what: String)
    -> SMTPError
  {
    let after = timeout.map { " after \($0)" } ?? ""
    switch error as? ConnectionFailure {
    case .timedOut(duringTLSHandshake: true):
      return SMTPError(kind: .transient, stage: .tls, message: "timed out\(after) in the TLS handshake")
    case .timedOut:
      return SMTPError(kind: .transient, stage: stage, message: "timed out\(after) waiting for \(what)")
    case .closed where Task.isCancelled:
      return SMTPError(kind: .transient, stage: stage, message: "cancelled while waiting for \(what)")
    case .closed:
      return SMTPError(kind: .transient, stage: stage, message: "the server closed the connection before \(what)")
    case .malformedReply(let reason):
      return SMTPError(kind: .permanent, stage: stage, message: "not an SMTP server's answer: \(reason)")
    case .tlsHandshake(let cause):
      return SMTPError(kind: .permanent, stage: .tls, message: "the TLS handshake with \(host) failed: \(cause)")
    case .dataBeforeTLS:
      return SMTPError(
        kind: .permanent, stage: .startTLS,
        message: "the server sent data after its reply to STARTTLS, before the TLS handshake")
    case .failed(let cause):
      return SMTPError(kind: .transient, stage: stage, message: "the connection failed before \(what): \(cause)")
    case nil:
      return SMTPError(kind: .transient, stage: stage, message: "\(error) while waiting for \(what)")
    }
  }
}
