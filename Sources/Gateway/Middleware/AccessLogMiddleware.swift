import Foundation
import Hummingbird
import Logging
import MartProto

/// One access-log line and the metrics per request: method, route template, operationID, status,
/// duration, request id, client address; never the `Authorization` header, never a body. It runs
/// inside `RequestIDMiddleware` so that its line carries the request's trace id, and reads what the
/// inner steps decided (operation, route, error code) from the context's `exchange` record.
struct AccessLogMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let instruments: GatewayInstruments
  let logger: Logger

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let start = ContinuousClock.now
    let response = try await next(request, context)
    let elapsed = ContinuousClock.now - start
    let labels = context.exchange.current
    instruments.record(
      operation: labels.operation, method: request.method.rawValue, status: response.status.code,
      code: labels.code.map(Self.codeName), duration: elapsed)
    logger.info(
      "request",
      metadata: [
        "http_method": .string(request.method.rawValue), "route": .string(labels.route),
        "operation": .string(labels.operation), "status": .stringConvertible(response.status.code),
        "duration_ms": .string(String(format: "%.1f", elapsed.secondsValue * 1000)),
        "request_id": .string(context.requestID), "client_ip": .string(context.clientAddress?.description ?? "-"),
      ])
    return response
  }

  /// `INVALID_ARGUMENT` for `.invalidArgument`: the label value of the error counter.
  static func codeName(_ code: Google_Rpc_Code) -> String {
    switch code {
    case .ok: "OK"
    case .cancelled: "CANCELLED"
    case .unknown: "UNKNOWN"
    case .invalidArgument: "INVALID_ARGUMENT"
    case .deadlineExceeded: "DEADLINE_EXCEEDED"
    case .notFound: "NOT_FOUND"
    case .alreadyExists: "ALREADY_EXISTS"
    case .permissionDenied: "PERMISSION_DENIED"
    case .unauthenticated: "UNAUTHENTICATED"
    case .resourceExhausted: "RESOURCE_EXHAUSTED"
    case .failedPrecondition: "FAILED_PRECONDITION"
    case .aborted: "ABORTED"
    case .outOfRange: "OUT_OF_RANGE"
    case .unimplemented: "UNIMPLEMENTED"
    case .internal: "INTERNAL"
    case .unavailable: "UNAVAILABLE"
    case .dataLoss: "DATA_LOSS"
    case .UNRECOGNIZED(let value): "CODE_\(value)"
    }
  }
}
