import GRPCCore
import MartCore

/// Admission control over a service's RPCs (`ServiceConfiguration.admission`, `AdmissionLimiter`):
/// past its capacity a call is refused with UNAVAILABLE (reason OVERLOADED, RetryInfo; the gateway
/// answers 503 with Retry-After) at once or after a short wait, instead of piling up behind the
/// database pool until its deadline. Health checks always pass. A call holds its slot until its
/// handler has answered: a server stream (an order's watch) holds none while it streams.
struct AdmissionInterceptor: ServerInterceptor {
  let limiter: AdmissionLimiter

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    guard context.descriptor.service.fullyQualifiedService != "grpc.health.v1.Health" else {
      return try await next(request, context)
    }
    do {
      // Every call may use every slot: the gateway decides what is shed first, and a service does
      // not yet know which of its callers' calls finish work already taken.
      return try await limiter.withAdmission(priority: true) { try await next(request, context) }
    } catch let refused as AdmissionLimiter.Refused {
      throw APIStatus.status(
        .unavailable, "the service is at capacity (\(refused)); retry", reason: "OVERLOADED",
        extra: [.retryInfo(delay: refused.retryAfter)])
    }
  }
}
