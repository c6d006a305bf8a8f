import Hummingbird

/// `HEAD` is answered as `GET` would be (routes and built-in endpoints match it as `GET`), with
/// the same status and headers and no body, whatever step answered.
struct HeadMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var response = try await next(request, context)
    if request.method == .head { response.body = ResponseBody() }
    return response
  }
}
