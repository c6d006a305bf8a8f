import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle

/// Runs a `GRPCServer` as a ServiceLifecycle service: on SIGTERM/SIGINT it stops accepting calls
/// and returns once the calls in flight have finished.
/// (grpc-swift-extras has this adapter, but is not among our dependencies.)
public struct GRPCServerService<Transport: ServerTransport>: Service {
  public let server: GRPCServer<Transport>
  private let onStop: @Sendable () -> Void

  public init(server: GRPCServer<Transport>, onStop: @escaping @Sendable () -> Void = {}) {
    self.server = server
    self.onStop = onStop
  }

  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await server.serve()
    } onGracefulShutdown: {
      onStop()
      server.beginGracefulShutdown()
    }
  }
}

extension HTTP2ServerTransport.Posix {
  /// Plaintext HTTP/2 on `host:port` (port 0 picks a free port; see `listeningAddress`).
  ///
  /// A caller (the gateway above all) multiplexes every call on one connection, and server-streaming
  /// calls such as WatchOrder stay open for minutes. Left unset, HTTP/2's concurrent-stream limit is
  /// swift-nio-http2's 100, so a hundred open streams made every further call on the connection
  /// wait (measured: CreateOrder timing out behind 100 order watchers). The limit is raised well
  /// past what a connection carries; the gateway's rate limits bound what a client can open.
  public static let maximumConcurrentStreams = 16_384

  public static func mart(host: String, port: Int) -> HTTP2ServerTransport.Posix {
    var config = HTTP2ServerTransport.Posix.Config.defaults
    config.http2.maxConcurrentStreams = maximumConcurrentStreams
    return .http2NIOPosix(
      address: host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port),
      transportSecurity: .plaintext, config: config)
  }
}

/// Binds the caller's request id to the call, and serves it in a server span (`MartTracing`) that
/// continues the caller's `traceparent`, so that every log line carries them, and so that calls
/// this service makes onwards (`RequestContextClientInterceptor`) and events it appends pass them
/// on. The span covers the handler; a server stream's span ends when the stream is accepted.
public struct RequestContextInterceptor: ServerInterceptor {
  public init() {}

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let requestID =
      request.metadata[stringValues: "x-request-id"].first(where: { _ in true })
      .flatMap { $0.count <= 128 ? $0 : nil } ?? UUID().uuidString.lowercased()
    let traceparent = request.metadata[stringValues: "traceparent"].first(where: { _ in true })
      .flatMap(RequestContext.validTraceparent)
    let method = context.descriptor
    return try await RequestContext.$requestID.withValue(requestID) {
      guard MartTracing.traces(method) else {
        return try await RequestContext.$traceparent.withValue(traceparent) { try await next(request, context) }
      }
      return try await MartTracing.withSpan(method.fullyQualifiedMethod, ofKind: .server, continuing: traceparent) {
        span in
        try await MartTracing.traceRPC(method, in: span, asServer: true, rejection: { $0.accepted.failure }) {
          try await next(request, context)
        }
      }
    }
  }
}

/// Passes the request id and the trace on to the service called, in a client span: what
/// `RequestContextInterceptor` reads on the other side.
public struct RequestContextClientInterceptor: ClientInterceptor {
  public init() {}

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>,
    context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
  ) async throws -> StreamingClientResponse<Output> {
    let method = context.descriptor
    guard MartTracing.traces(method) else { return try await next(Self.passingOn(request), context) }
    return try await MartTracing.withSpan(method.fullyQualifiedMethod, ofKind: .client) { span in
      let outgoing = Self.passingOn(request)
      return try await MartTracing.traceRPC(method, in: span, asServer: false, rejection: { $0.accepted.failure }) {
        try await next(outgoing, context)
      }
    }
  }

  /// `request` with the current request id (unless it has one) and trace in its metadata.
  static func passingOn<Input>(_ request: StreamingClientRequest<Input>) -> StreamingClientRequest<Input> {
    var request = request
    if let requestID = RequestContext.requestID,
      request.metadata[stringValues: "x-request-id"].first(where: { _ in true }) == nil
    {
      request.metadata.addString(requestID, forKey: "x-request-id")
    }
    request.metadata.removeAllValues(forKey: "traceparent")
    if let traceparent = RequestContext.traceparent { request.metadata.addString(traceparent, forKey: "traceparent") }
    return request
  }
}

/// Turns the cancellation of an RPC into the cancellation of the task that serves it.
///
/// grpc-swift signals a cancelled RPC (the caller reset the stream or went away, or its deadline
/// passed) through `ServerContext.cancellation`, not by cancelling the handler's task. Handlers
/// written to stop on `Task.isCancelled` (every one here, and everything they await: admission
/// queues, PostgreSQL, sleeps) would then run on for a caller that is gone. A server stream never
/// ended at all: a WatchOrder of a PAID order, abandoned by its client, looked at its order every
/// 30 s until the process stopped, and the order service's memory and CPU grew with every order
/// a load test placed. So the handler, and a stream's producer, run in a child task that is
/// cancelled when the RPC is. It goes first in a server's interceptors, so that it covers them all.
public struct RPCCancellationInterceptor: ServerInterceptor {
  public init() {}

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let cancellation = context.cancellation
    var response = try await withoutActuallyEscaping(next) { next in
      // The child task ends before this closure returns, so `next` does not outlive the call.
      let handler = UncheckedSendableBox(next)
      return try await Self.run(cancelledWith: cancellation) { try await handler.value(request, context) }
    }
    if case .success(var contents) = response.accepted {
      let producer = contents.producer
      contents.producer = { writer in
        try await Self.run(cancelledWith: cancellation) { try await producer(writer) }
      }
      response.accepted = .success(contents)
    }
    return response
  }

  /// Runs `operation` in a child task that is cancelled as soon as the RPC is.
  ///
  /// A server that starts to drain cancels every call's handle as well: that is grpc-swift's hint
  /// for streams to wrap up (WatchOrder ends itself on the drain). A call in flight is meant to
  /// finish during a drain, so the drain does not cancel it; the drain's own time limit bounds it.
  static func run<Result: Sendable>(
    cancelledWith cancellation: ServerContext.RPCCancellationHandle,
    _ operation: @escaping @Sendable () async throws -> Result
  ) async throws -> Result {
    try await withThrowingTaskGroup(of: Outcome<Result>.self) { group in
      group.addTask { .finished(try await operation()) }
      group.addTask {
        // Returns when the RPC is cancelled, or (throwing, and ignored) when the operation ended
        // first and the group cancels this watcher.
        try? await cancellation.cancelled
        return Task.isShuttingDownGracefully ? .drainStarted : .rpcCancelled
      }
      while let outcome = try await group.next() {
        switch outcome {
        case .finished(let result):
          group.cancelAll()
          return result
        case .rpcCancelled:
          // The operation's end (usually a CancellationError) is the next outcome.
          group.cancelAll()
        case .drainStarted:
          continue
        }
      }
      throw CancellationError()
    }
  }

  private enum Outcome<Result: Sendable>: Sendable {
    case finished(Result)
    case rpcCancelled
    case drainStarted
  }
}

/// Carries a value the compiler cannot prove `Sendable` into a child task whose lifetime the
/// carrier bounds (see `RPCCancellationInterceptor`).
private struct UncheckedSendableBox<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
