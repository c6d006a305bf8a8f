import GRPCCore
import GRPCProtobuf
import MartTestSupport
import Testing

@testable import MartRuntime

/// A service over capacity refuses a call at once with UNAVAILABLE, reason OVERLOADED and a
/// RetryInfo (what the gateway turns into 503 with Retry-After); health checks always pass.
@Suite struct AdmissionInterceptorTests {
  let interceptor = AdmissionInterceptor(
    limiter: AdmissionLimiter(.init(maximumInFlight: 1, maximumQueued: 0, maximumWait: .milliseconds(100))))

  func call(
    service: String = "mart.test.v1.Test",
    _ next: @escaping @Sendable () async throws -> StreamingServerResponse<String>
  ) async throws -> StreamingServerResponse<String> {
    try await withServerContextRPCCancellationHandle { cancellation in
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: service, method: "Call"),
        remotePeer: "in-process:1", localPeer: "in-process:1", cancellation: cancellation)
      return try await interceptor.intercept(
        request: StreamingServerRequest<String>(
          metadata: [:], messages: RPCAsyncSequence(wrapping: AsyncThrowingStream<String, any Error> { $0.finish() })),
        context: context
      ) { _, _ in try await next() }
    }
  }

  @Test func overCapacityIsUnavailableWithRetryInfoAndHealthPasses() async throws {
    let (release, releaser) = AsyncStream.makeStream(of: Void.self)
    let (entered, enter) = AsyncStream.makeStream(of: Void.self)
    try await withThrowingTaskGroup(of: Void.self) { group in
      // One call holds the only slot until released.
      group.addTask {
        _ = try await call {
          enter.yield()
          for await _ in release { break }
          return StreamingServerResponse(single: ServerResponse(message: "held"))
        }
      }
      for await _ in entered { break }
      let refused: GoogleRPCStatus?
      do {
        _ = try await call { StreamingServerResponse(single: ServerResponse(message: "not admitted")) }
        refused = nil
      } catch let status as GoogleRPCStatus {
        refused = status
      }
      let status = try #require(refused)
      #expect(status.code == .unavailable)
      #expect(status.details.compactMap(\.errorInfo).first?.reason == "OVERLOADED")
      #expect(status.details.contains { $0.retryInfo != nil })
      // The health service is never refused.
      _ = try await call(service: "grpc.health.v1.Health") {
        StreamingServerResponse(single: ServerResponse(message: "serving"))
      }
      releaser.yield()
      try await group.waitForAll()
    }
    // The slot is free again.
    _ = try await call { StreamingServerResponse(single: ServerResponse(message: "admitted")) }
  }
}

/// The RED metrics' code label: a gRPC status code's name in Prometheus' style.
@Suite struct RPCMetricsInterceptorTests {
  @Test func codesAreNamedInSnakeCase() {
    #expect(RPCMetricsInterceptor.name(.notFound) == "not_found")
    #expect(RPCMetricsInterceptor.name(.unavailable) == "unavailable")
    #expect(RPCMetricsInterceptor.name(.resourceExhausted) == "resource_exhausted")
  }
}
