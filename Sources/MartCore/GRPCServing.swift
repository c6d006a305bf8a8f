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

/// Binds the caller's request id and trace id to the call, so that every log line carries them,
/// and so that calls this service makes onwards pass them on.
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
      .flatMap { RequestContext.traceID(fromTraceparent: $0) == nil ? nil : $0 }
    return try await RequestContext.$requestID.withValue(requestID) {
      try await RequestContext.$traceparent.withValue(traceparent) {
        try await next(request, context)
      }
    }
  }
}
