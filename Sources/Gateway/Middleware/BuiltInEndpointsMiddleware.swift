import Hummingbird
import MartCore

/// The gateway's own endpoints, answered before any route: `/healthz`, `/readyz` (every service
/// SERVING on grpc.health.v1), `/metrics`, `/openapi.json` and `/docs`. They answer GET and HEAD;
/// OPTIONS gets 204 with `Allow`, any other method 405. They have no quota. `/metrics` and the
/// per-service detail of `/readyz` need the admin token; the rest, and `/readyz`'s status, are public.
struct BuiltInEndpointsMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let upstreams: Upstreams
  let instruments: GatewayInstruments
  /// nil: no one reads the admin endpoints through the gateway.
  let adminToken: AdminToken?

  /// Path → the operation name in the access log and the metrics.
  static let endpoints = [
    "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics", APIDocumentation.openAPIPath: "openapi",
    APIDocumentation.docsPath: "docs",
  ]
  static let methods = ["GET", "HEAD", "OPTIONS"]

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let path = request.uri.path
    guard let operation = Self.endpoints[path] else { return try await next(request, context) }
    context.exchange.name(operation: operation, route: path)
    switch request.method {
    case .get, .head:
      return try await response(path, admitted: adminToken?.admits(request) ?? false)
    case .options:
      return Self.allow(Self.methods)
    default:
      throw GatewayError.methodNotAllowed(request.method.rawValue, allowed: Self.methods)
    }
  }

  private func response(_ path: String, admitted: Bool) async throws(GatewayError) -> Response {
    switch path {
    case "/healthz":
      return Self.json(#"{"status":"ok"}"#, status: .ok)
    case "/readyz":
      return await readiness(detailed: admitted)
    case "/metrics":
      guard admitted else { throw Self.adminTokenRequired }
      var headers = HTTPFields()
      headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
      return Response(
        status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: instruments.exposition())))
    case APIDocumentation.openAPIPath:
      return APIDocumentation.openAPIDocument()
    default:
      return APIDocumentation.docsPage()
    }
  }

  /// Ready when every upstream service reports SERVING on grpc.health.v1. Only the admin sees
  /// which service is not: the status code is all a load balancer or `make run` needs.
  private func readiness(detailed: Bool) async -> Response {
    let upstreams = self.upstreams
    let statuses = await withTaskGroup(of: (MartService, HealthStatus).self) { group in
      for service in upstreams.services {
        group.addTask { (service, await upstreams.health(of: service)) }
      }
      return await group.reduce(into: [MartService: HealthStatus]()) { $0[$1.0] = $1.1 }
    }
    let ready = statuses.values.allSatisfy { $0 == .serving }
    let services = statuses.sorted { $0.key.rawValue < $1.key.rawValue }.map {
      JSONMember(key: $0.key.rawValue, value: .string($0.value == .serving ? "SERVING" : "NOT_SERVING"))
    }
    let status = JSONMember(key: "status", value: .string(ready ? "ready" : "not ready"))
    let body = JSONValue.object(detailed ? [JSONMember(key: "services", value: .object(services)), status] : [status])
    return Self.json(body.serialized, status: ready ? .ok : .serviceUnavailable)
  }

  /// One answer whether the token is missing, wrong or not configured at all.
  static let adminTokenRequired: GatewayError = {
    var headers = HTTPFields()
    headers[.wwwAuthenticate] = #"Bearer realm="mart-admin""#
    return GatewayError(
      .unauthorized, code: .unauthenticated, message: "the admin bearer token is required", headers: headers)
  }()

  static func json(_ text: String, status: HTTPResponse.Status) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
  }

  /// 204 with `Allow`: the answer to a plain `OPTIONS`.
  static func allow(_ methods: [String]) -> Response {
    var headers = HTTPFields()
    headers[.allow] = methods.joined(separator: ", ")
    return Response(status: .noContent, headers: headers)
  }
}
