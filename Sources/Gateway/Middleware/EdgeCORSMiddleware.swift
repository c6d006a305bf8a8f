import Hummingbird

/// Cross-origin access (`CORSPolicy`): a preflight is answered here, 204, without reaching a
/// route; every other answer, errors included, gets the CORS headers for an allowed origin (else
/// the browser hides the error from the page).
struct EdgeCORSMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let policy: CORSPolicy

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var response: Response
    if CORSPolicy.isPreflight(request) {
      context.exchange.name(operation: "preflight", route: request.uri.path)
      response = policy.preflight(request)
    } else {
      response = try await next(request, context)
    }
    for field in policy.responseHeaders(origin: request.headers[.origin]) {
      response.headers[field.name] = field.value
    }
    return response
  }
}
