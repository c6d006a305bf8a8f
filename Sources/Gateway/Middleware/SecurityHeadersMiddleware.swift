import Hummingbird

/// Headers every answer carries, whatever produced it:
/// - `X-Content-Type-Options: nosniff`: a browser takes our JSON for JSON, never for a script or
///   a page it guessed from the bytes;
/// - `Cache-Control: no-store` unless the answer set its own: answers carry tokens (Register,
///   Login, Refresh) and personal data, which no shared or browser cache may keep (RFC 6749 5.1);
/// - `Strict-Transport-Security` when the gateway is configured to say it sits behind TLS
///   (`"hsts"` in its configuration): a plain-HTTP gateway must not send it.
struct SecurityHeadersMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let strictTransportSecurity: String?

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var response = try await next(request, context)
    response.headers[.xContentTypeOptions] = "nosniff"
    if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
    if let strictTransportSecurity { response.headers[.strictTransportSecurity] = strictTransportSecurity }
    return response
  }
}
