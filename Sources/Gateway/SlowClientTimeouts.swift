import HummingbirdCore
import NIOCore
import NIOHTTPTypes

// A client that opens a connection and then sends its request one byte every few seconds (a
// slowloris) costs it nothing and holds one of the gateway's connections, a file descriptor and
// its buffers for as long as the gateway waits. Without timeouts that is forever, so a few
// thousand such clients take every descriptor and nobody else is answered (docs/PERFORMANCE.md,
// "Slow clients"). Three limits bound how long any connection can be held without a request
// making progress:
// - idle: Hummingbird's own idle timeout. It counts from the last HTTP part decoded, so it closes
//   a connection that sends nothing, or nothing that completes a request head, for that long.
// - header: from the first bytes of a request to the end of its head (`RequestReadTimeoutHandler`),
//   so that bytes trickling in cannot keep a head open for longer than the idle timeout lets
//   nothing at all keep it open.
// - body: from the head to the end of the body, so that a body trickling in a byte at a time,
//   each one a decoded part that resets the idle timer, is cut off too.
// Handlers that are answering, or a stream being written, are not limited by any of them.

/// Closes a connection whose request head is not complete `header` after its first bytes arrived,
/// or whose body has not ended `body` after its head. It sits after the HTTP decoder, so it sees
/// request parts; that bytes arrived without completing a part it learns from `channelReadComplete`,
/// which the decoder passes on for every read from the socket.
final class RequestReadTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
  typealias InboundIn = HTTPRequestPart
  typealias InboundOut = HTTPRequestPart
  typealias OutboundIn = HTTPResponsePart
  typealias OutboundOut = HTTPResponsePart

  private enum State {
    /// No request yet, or the last one answered: the next bytes start a head.
    case waitingForRequest
    case readingHead
    case readingBody
    /// The request is read; the answer is being written.
    case answering
  }

  private let headerTimeout: TimeAmount
  private let bodyTimeout: TimeAmount
  private var state = State.waitingForRequest
  /// Requests whose answer has not ended yet: more than one when a client pipelines, and a body
  /// may still be arriving after its answer ended when the answer did not wait for it.
  private var answersPending = 0
  private var deadline: Scheduled<Void>?
  /// Whether the current read from the socket produced a part: then it was no stray first bytes.
  private var decodedPartInThisRead = false

  init(header: Duration, body: Duration) {
    headerTimeout = TimeAmount(header)
    bodyTimeout = TimeAmount(body)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    decodedPartInThisRead = true
    switch unwrapInboundIn(data) {
    case .head:
      answersPending += 1
      state = .readingBody
      arm(bodyTimeout, context: context)
    case .body:
      break
    case .end:
      cancelDeadline()
      state = answersPending > 0 ? .answering : .waitingForRequest
    }
    context.fireChannelRead(data)
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    // Bytes arrived that did not make a whole head: the head's clock starts with the first of them.
    // (Bytes that came with the end of the last request are left to the idle timeout.)
    if case .waitingForRequest = state, !decodedPartInThisRead {
      state = .readingHead
      arm(headerTimeout, context: context)
    }
    decodedPartInThisRead = false
    context.fireChannelReadComplete()
  }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    if case .end = unwrapOutboundIn(data) {
      answersPending = max(0, answersPending - 1)
      if answersPending == 0, case .answering = state { state = .waitingForRequest }
    }
    context.write(data, promise: promise)
  }

  func channelInactive(context: ChannelHandlerContext) {
    cancelDeadline()
    context.fireChannelInactive()
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    cancelDeadline()
  }

  private func arm(_ timeout: TimeAmount, context: ChannelHandlerContext) {
    cancelDeadline()
    // The handler and its context live on the channel's event loop, where the task runs too.
    deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
      context.close(promise: nil)
    }
  }

  private func cancelDeadline() {
    deadline?.cancel()
    deadline = nil
  }
}

@available(*, unavailable)
extension RequestReadTimeoutHandler: Sendable {}
