import Foundation
import Hummingbird
import MartCore
import Tracing

/// Gives the request its id and trace: `X-Request-Id` if it is one we can pass on, else a new
/// UUID, echoed on the answer; and the request's span (`MartTracing`), continuing a valid W3C
/// `traceparent` from the client. Both are bound as MartRuntime's task-locals around the inner
/// steps, so that every log line written for the request (the access log's included) carries
/// `request_id` and `trace_id`, and the upstream call continues the span. The span is named by
/// the route template once the inner steps have matched it (`POST /v1/orders`), and ends with the
/// answer's head (a stream's body goes on after it).
struct RequestIDMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    let requestID = Self.acceptedRequestID(request.headers[.requestID]) ?? UUID().uuidString.lowercased()
    context.requestID = requestID
    let callerTrace = request.headers[.traceparent].flatMap(MartCore.RequestContext.validTraceparent)
    context.traceparent = callerTrace
    let method = request.method.rawValue
    var response = try await MartCore.RequestContext.$requestID.withValue(requestID) {
      // Probes and scrapes come every few seconds and would only fill a trace store with roots.
      guard !Self.untracedPaths.contains(request.uri.path) else {
        return try await MartCore.RequestContext.$traceparent.withValue(callerTrace) {
          try await next(request, context)
        }
      }
      return try await MartTracing.withSpan(method, ofKind: .server, continuing: callerTrace) { span in
        span.attributes["http.request.method"] = method
        var context = context
        context.traceparent = MartCore.RequestContext.traceparent
        let response = try await next(request, context)
        let route = context.exchange.current.route
        span.operationName = route == "-" ? method : "\(method) \(route)"
        if route != "-" { span.attributes["http.route"] = route }
        span.attributes["http.response.status_code"] = Int64(response.status.code)
        if response.status.code >= 500 { span.setStatus(SpanStatus(code: .error)) }
        return response
      }
    }
    response.headers[.requestID] = requestID
    return response
  }

  /// The built-in endpoints that load balancers, orchestrators and Prometheus call.
  static let untracedPaths: Set<String> = ["/healthz", "/readyz", "/metrics"]

  /// A client's request id if it is one we can pass on: 1–128 visible ASCII characters (printable,
  /// not a space: it goes into log lines and gRPC metadata as it came).
  static func acceptedRequestID(_ value: String?) -> String? {
    guard let value, (1...128).contains(value.utf8.count),
      value.unicodeScalars.allSatisfy({ $0.isPrintableASCII && $0 != " " })
    else { return nil }
    return value
  }
}
