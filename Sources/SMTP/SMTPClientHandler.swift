import NIOCore
import NIOSSL

/// Why a connection cannot carry the session any further.
enum ConnectionFailure: Error {
  case timedOut(duringTLSHandshake: Bool)
  case closed
  case malformedReply(String)
  /// NIOSSL failed the TLS handshake (a certificate that does not verify, no protocol in common),
  /// or the TLS handler could not be made.
  case tlsHandshake(any Error)
  /// The server said more after its 220 to STARTTLS and before the handshake: bytes that someone
  /// in the middle may have injected, to be read as if they had come encrypted (RFC 3207 5).
  case dataBeforeTLS
  case failed(any Error)
}

/// The last handler of the pipeline: frames the server's bytes into replies and hands each to
/// the one waiting command. One command waits at a time (no PIPELINING), each with its own
/// deadline; when the deadline passes or the connection fails, the waiter fails and the channel
/// is closed. Every method runs on the channel's event loop.
///
/// The TLS handshake has no waiter of its own: the reply to the next command (the greeting for
/// implicit TLS, EHLO after STARTTLS) can only arrive through it, and until one does, an error
/// from the pipeline is the handshake's.
final class SMTPClientHandler: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private let eventLoop: any EventLoop
  private var context: ChannelHandlerContext?
  private var parser = SMTPReplyParser()
  /// Replies that came before anyone asked: the greeting, usually.
  private var replies = CircularBuffer<SMTPReply>()
  private var waiter: (promise: EventLoopPromise<SMTPReply>, deadline: Scheduled<Void>)?
  private var failure: ConnectionFailure?
  private var tlsHandshakeUnderway: Bool

  /// `tlsHandshakeUnderway` for implicit TLS, whose handler is in the pipeline from the start.
  init(eventLoop: any EventLoop, tlsHandshakeUnderway: Bool) {
    self.eventLoop = eventLoop
    self.tlsHandshakeUnderway = tlsHandshakeUnderway
  }

  var isOpen: Bool { failure == nil }

  /// Writes one command line (or the message) and waits for the reply.
  func send(_ bytes: ByteBuffer, replyWithin timeout: TimeAmount) -> EventLoopFuture<SMTPReply> {
    if failure == nil, let context {
      context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }
    return nextReply(within: timeout)
  }

  func nextReply(within timeout: TimeAmount) -> EventLoopFuture<SMTPReply> {
    if let reply = replies.popFirst() { return eventLoop.makeSucceededFuture(reply) }
    if let failure { return eventLoop.makeFailedFuture(failure) }
    let promise = eventLoop.makePromise(of: SMTPReply.self)
    precondition(waiter == nil, "the session waits for one reply at a time")
    let deadline = eventLoop.assumeIsolated().scheduleTask(in: timeout) {
      self.end(.timedOut(duringTLSHandshake: self.tlsHandshakeUnderway))
    }
    waiter = (promise, deadline)
    return promise.futureResult
  }

  /// After the server's 220 to STARTTLS: puts TLS under everything; the handshake starts at once.
  func startTLS(context sslContext: NIOSSLContext, serverHostname: String?) throws(ConnectionFailure) {
    if let failure { throw failure }
    guard replies.isEmpty, !parser.hasPartialInput else {
      end(.dataBeforeTLS)
      throw .dataBeforeTLS
    }
    guard let context else { throw .closed }
    do {
      let tlsHandler = try NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname)
      try context.pipeline.syncOperations.addHandler(tlsHandler, position: .first)
      tlsHandshakeUnderway = true
    } catch {
      end(.tlsHandshake(error))
      throw .tlsHandshake(error)
    }
  }

  // MARK: ChannelInboundHandler

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    // Bytes that got through the TLS handler prove its handshake done.
    tlsHandshakeUnderway = false
    parser.append(unwrapInboundIn(data))
    do {
      while let reply = try parser.nextReply() {
        if let promise = takeWaiter() {
          promise.succeed(reply)
        } else {
          replies.append(reply)
        }
      }
    } catch {
      end(.malformedReply(error.reason))
    }
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    let isTLSError = error is NIOSSLError || error is NIOSSLExtraError
    end(tlsHandshakeUnderway && isTLSError ? .tlsHandshake(error) : .failed(error))
  }

  func channelInactive(context: ChannelHandlerContext) {
    end(.closed)
    context.fireChannelInactive()
  }

  // MARK: Waiting

  private func takeWaiter() -> EventLoopPromise<SMTPReply>? {
    defer { waiter = nil }
    waiter?.deadline.cancel()
    return waiter?.promise
  }

  /// The first failure ends the connection: the waiter learns why, later calls fail at once.
  private func end(_ reason: ConnectionFailure) {
    guard failure == nil else { return }
    failure = reason
    let waiting = takeWaiter()
    context?.close(promise: nil)
    waiting?.fail(reason)
  }
}
