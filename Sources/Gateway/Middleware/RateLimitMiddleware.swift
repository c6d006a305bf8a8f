import Hummingbird
import MartCore
import MartProto
import SwiftProtobuf

/// The route's quota (`RateLimiter`), per caller: the token's subject when signed in, else the
/// client's address (a refused token's attempt included: it is charged, then refused). Every
/// answer of the route, refusals from the steps inside included, carries `RateLimit-Policy` and
/// `RateLimit`; over quota is 429 with `Retry-After` and a RetryInfo.
struct RateLimitMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let limiter: RateLimiter

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let compiled = try context.matchedRoute().compiled
    // An anonymous client by its address, and an IPv6 one by its /64: rotating addresses inside
    // one subscriber's block must not buy a fresh quota (login and register are the target).
    let bucket =
      context.caller.map { "sub:\($0.subject)" }
      ?? "ip:\(context.clientAddress.map(IPNetwork.subscriberKey) ?? "unknown")"
    let decision = limiter.acquire(compiled.rateLimit, key: bucket)
    var headers = HTTPFields()
    headers[.rateLimitPolicy] = decision.policy.policyHeader
    headers[.rateLimit] = decision.rateLimitHeader
    if let retryAfter = decision.retryAfterSeconds {
      var error = Self.tooManyRequests(decision, retryAfter: retryAfter, operation: compiled.route.operationID)
      error.headers.append(contentsOf: headers)
      throw error
    }
    if var refusal = context.authenticationFailure {
      refusal.headers.append(contentsOf: headers)
      throw refusal
    }
    do {
      var response = try await next(request, context)
      response.headers.append(contentsOf: headers)
      return response
    } catch var error as GatewayError {
      error.headers.append(contentsOf: headers)
      throw error
    }
  }

  static func tooManyRequests(_ decision: RateLimiter.Decision, retryAfter: Int, operation: String) -> GatewayError {
    var headers = HTTPFields()
    headers[.retryAfter] = String(retryAfter)
    var retryInfo = Google_Rpc_RetryInfo()
    retryInfo.retryDelay = .init(seconds: Int64(retryAfter))
    let details = [
      try? Google_Protobuf_Any(message: retryInfo),
      GatewayError.errorInfo(
        reason: "RATE_LIMITED", metadata: ["policy": decision.policy.name, "limit": String(decision.policy.limit)]),
    ].compactMap { $0 }
    return GatewayError(
      .tooManyRequests, code: .resourceExhausted,
      message: "rate limit exceeded for \(operation); retry in \(retryAfter)s",
      details: details, headers: headers)
  }
}
