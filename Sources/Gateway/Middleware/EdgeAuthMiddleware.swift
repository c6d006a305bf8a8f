import Hummingbird

/// The route's access rule at the edge (`EdgeAuthenticator`): 401, 403 or 503 before the call
/// costs a service anything; a verified caller goes on as `context.caller` (its subject is the
/// quota key). A refusal is handed on as `context.authenticationFailure`, so that the quota step
/// charges it to the client's address before answering with it. Public routes pass unchecked.
struct EdgeAuthMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let authenticator: EdgeAuthenticator

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let route = try context.matchedRoute().compiled.route
    var context = context
    do {
      context.caller = try await authenticator.authenticate(
        access: route.access, authorization: request.headers[.authorization])
    } catch {
      context.authenticationFailure = error
    }
    return try await next(request, context)
  }
}
