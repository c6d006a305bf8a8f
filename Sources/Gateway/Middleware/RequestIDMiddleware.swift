import Foundation
import Hummingbird
import MartCore

/// Gives the request its id and trace: `X-Request-Id` if it is one we can pass on, else a new
/// UUID, echoed on the answer; a valid W3C `traceparent`. Both are bound as MartRuntime's
/// task-locals around the inner steps, so that every log line written for the request (the access
/// log's included) carries `request_id` and `trace_id`.
struct RequestIDMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    let requestID = Self.acceptedRequestID(request.headers[.requestID]) ?? UUID().uuidString.lowercased()
    context.requestID = requestID
    context.traceparent = request.headers[.traceparent].flatMap {
      MartCore.RequestContext.traceID(fromTraceparent: $0) == nil ? nil : $0
    }
    var response = try await MartCore.RequestContext.$requestID.withValue(requestID) {
      try await MartCore.RequestContext.$traceparent.withValue(context.traceparent) {
        try await next(request, context)
      }
    }
    response.headers[.requestID] = requestID
    return response
  }

  /// A client's request id if it is one we can pass on: 1–128 visible ASCII characters (printable,
  /// not a space: it goes into log lines and gRPC metadata as it came).
  static func acceptedRequestID(_ value: String?) -> String? {
    guard let value, (1...128).contains(value.utf8.count),
      value.unicodeScalars.allSatisfy({ $0.isPrintableASCII && $0 != " " })
    else { return nil }
    return value
  }
}
