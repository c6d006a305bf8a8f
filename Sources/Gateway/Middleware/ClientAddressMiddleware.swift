import Hummingbird

/// Finds whose request it is by address (the connection's peer, or `X-Forwarded-For` from our own
/// proxies): the key of anonymous quotas, the access log's client, and `x-mart-client-ip`.
struct ClientAddressMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let resolver: ClientAddressResolver

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    context.clientAddress = resolver.clientAddress(
      peer: ClientAddressResolver.address(of: context.remoteAddress),
      forwardedFor: request.headers[values: .forwardedFor])
    return try await next(request, context)
  }
}
