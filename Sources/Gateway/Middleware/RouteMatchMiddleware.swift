import Hummingbird

/// Matches the path against the generated route table's templates (the Hummingbird router has no
/// routes of its own): no template is 404, templates of other methods only are 405 with `Allow`
/// (a plain `OPTIONS` there gets 204 with `Allow`). A match goes on with `context.route` set.
struct RouteMatchMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let matcher: RouteMatcher<CompiledRoute>

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let path = request.uri.path
    switch matcher.match(method: request.method.rawValue, path: path) {
    case .malformedPath:
      context.exchange.name(operation: "unmatched", route: "-")
      throw GatewayError.badRequest("the path is not valid percent-encoded UTF-8")
    case .notFound:
      context.exchange.name(operation: "unmatched", route: "-")
      throw GatewayError.notFound(path: path)
    case .methodNotAllowed(let allowed):
      guard request.method == .options else {
        context.exchange.name(operation: "unmatched", route: path)
        throw GatewayError.methodNotAllowed(request.method.rawValue, allowed: allowed)
      }
      context.exchange.name(operation: "options", route: path)
      return BuiltInEndpointsMiddleware.allow(allowed)
    case .found(let compiled, let bindings):
      context.exchange.name(operation: compiled.route.operationID, route: compiled.route.pathTemplate)
      var context = context
      context.route = MatchedRoute(compiled: compiled, bindings: bindings)
      return try await next(request, context)
    }
  }
}
