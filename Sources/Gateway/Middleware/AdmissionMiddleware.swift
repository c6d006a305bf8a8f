import Hummingbird
import MartCore
import MartProto
import SwiftProtobuf

/// Admission control for the routes (`AdmissionLimiter`, `GatewaySettings.admission`): past the
/// gateway's capacity a request is answered 503 with Retry-After at once, or after at most a short
/// wait for a slot, rather than queued until it misses its deadline. It sits behind the built-in
/// endpoints, so /healthz, /readyz and /metrics answer whatever the load. The slot is held until
/// the answer's head is ready: a streamed body (an order's watch) does not keep one.
struct AdmissionMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let limiter: AdmissionLimiter
  /// The operationIDs admitted with priority (`admission.priorityOperations`).
  let priorityOperations: Set<String>

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let priority = context.route.map { priorityOperations.contains($0.compiled.route.operationID) } ?? false
    do {
      return try await limiter.withAdmission(priority: priority) { try await next(request, context) }
    } catch let refused as AdmissionLimiter.Refused {
      // Counted with every answer by the access log's metrics: 503, code UNAVAILABLE.
      throw Self.overloaded(refused)
    }
  }

  static func overloaded(_ refused: AdmissionLimiter.Refused) -> GatewayError {
    let seconds = max(1, refused.retryAfter.components.seconds)
    var headers = HTTPFields()
    headers[.retryAfter] = String(seconds)
    var retryInfo = Google_Rpc_RetryInfo()
    retryInfo.retryDelay = .init(seconds: seconds)
    let details = [try? Google_Protobuf_Any(message: retryInfo), GatewayError.errorInfo(reason: "OVERLOADED")]
      .compactMap { $0 }
    return GatewayError(
      .serviceUnavailable, code: .unavailable,
      message: "the shop is busy: \(refused); retry in \(seconds)s", details: details, headers: headers)
  }
}
