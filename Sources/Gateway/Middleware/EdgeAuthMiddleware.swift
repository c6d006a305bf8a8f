import Hummingbird

/// The route's access rule at the edge (`EdgeAuthenticator`): 401, 403 or 503 before the call
/// costs a service anything; a verified caller goes on as `context.caller` (its subject is the
/// quota key). Public routes pass without a check.
struct EdgeAuthMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let authenticator: EdgeAuthenticator

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let route = try context.matchedRoute().compiled.route
    var context = context
    context.caller = try await authenticator.authenticate(
      access: route.access, authorization: request.headers[.authorization])
    return try await next(request, context)
  }
}
