import Foundation
import HTTPTypes
import Hummingbird
import MartProto
import MartRuntime
import MartTestSupport
import NIOCore
import Prometheus
import Testing

@testable import Gateway

/// Each of the gateway's middleware steps alone, with a `next` that stands for the steps inside
/// it. (The whole chain is GatewayHTTPTests'.)
@Suite struct MiddlewareTests {
  // MARK: Request id and client address

  @Test func aGoodRequestIDAndTraceparentGoInwardAndTheIDIsEchoed() async throws {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    let inner = Inner()
    let response = try await RequestIDMiddleware().handle(
      request(headers: [.requestID: "req-1", .traceparent: traceparent]), context: makeContext()
    ) { request, context in
      inner.saw(context)
      #expect(MartRuntime.RequestContext.requestID == "req-1", "bound for every log line inside")
      #expect(MartRuntime.RequestContext.traceparent == traceparent)
      return Response(status: .ok)
    }
    #expect(response.headers[.requestID] == "req-1")
    #expect(inner.context?.requestID == "req-1")
    #expect(inner.context?.traceparent == traceparent)
  }

  @Test func aBadRequestIDIsReplacedAndABadTraceparentDropped() async throws {
    for bad in [String(repeating: "x", count: 129), "two words", ""] {
      let inner = Inner()
      let response = try await RequestIDMiddleware().handle(
        request(headers: [.requestID: bad, .traceparent: "00-nonsense-01"]), context: makeContext()
      ) { _, context in
        inner.saw(context)
        return Response(status: .ok)
      }
      let id = try #require(inner.context?.requestID)
      #expect(UUID(uuidString: id) != nil && id == id.lowercased(), "a fresh UUID for \(bad.debugDescription): \(id)")
      #expect(response.headers[.requestID] == id)
      #expect(inner.context?.traceparent == nil)
    }
    #expect(RequestIDMiddleware.acceptedRequestID("ok-\u{7F}") == nil, "DEL is a control character")
    #expect(RequestIDMiddleware.acceptedRequestID("caf\u{E9}") == nil, "ASCII only")
    #expect(RequestIDMiddleware.acceptedRequestID(String(repeating: "~", count: 128)) != nil)
  }

  @Test func theClientAddressTrustsForwardedForOnlyFromOurProxies() async throws {
    let middleware = ClientAddressMiddleware(
      resolver: ClientAddressResolver(trustedProxies: [try #require(IPNetwork("10.0.0.0/8"))]))
    let forwarded = request(headers: [.forwardedFor: "6.6.6.6, 203.0.113.9"])
    for (peer, expected) in [("10.0.0.5", "203.0.113.9"), ("198.51.100.7", "198.51.100.7")] {
      let inner = Inner()
      _ = try await middleware.handle(
        forwarded, context: makeContext(peer: try SocketAddress(ipAddress: peer, port: 4711)), next: inner.ok)
      #expect(inner.context?.clientAddress?.description == expected, "peer \(peer)")
    }
    let inner = Inner()
    _ = try await middleware.handle(forwarded, context: makeContext(), next: inner.ok)
    #expect(inner.context != nil && inner.context?.clientAddress == nil, "no socket, no address")
  }

  // MARK: Access log, CORS, HEAD, errors

  @Test func theAccessLogCountsWhatTheInnerStepsDecided() async throws {
    let registry = PrometheusCollectorRegistry()
    let middleware = AccessLogMiddleware(instruments: GatewayInstruments(registry: registry), logger: TestBed.logger)
    let response = try await middleware.handle(request(.delete, "/v1/users/me"), context: makeContext()) { _, context in
      context.exchange.name(operation: "UserService_DeleteMe", route: "/v1/users/me")
      context.exchange.failed(.permissionDenied)
      return Response(status: .forbidden)
    }
    #expect(response.status == .forbidden)
    var bytes: [UInt8] = []
    registry.emit(into: &bytes)
    let exposition = String(decoding: bytes, as: UTF8.self)
    let lines = exposition.split(separator: "\n")
    #expect(
      lines.contains {
        $0.hasPrefix("mart_gateway_requests_total{") && $0.contains(#"operation="UserService_DeleteMe""#)
          && $0.contains(#"method="DELETE""#) && $0.contains(#"status="403""#) && $0.hasSuffix(" 1")
      }, "\(exposition)")
    #expect(
      lines.contains {
        $0.hasPrefix("mart_gateway_errors_total{") && $0.contains(#"code="PERMISSION_DENIED""#) && $0.hasSuffix(" 1")
      }, "\(exposition)")
  }

  @Test func corsAnswersAPreflightItselfAndLabelsEveryOtherAnswer() async throws {
    var settings = CORSSettings()
    settings.allowedOrigins = ["https://shop.example"]
    let middleware = EdgeCORSMiddleware(policy: CORSPolicy(settings))
    let preflight = request(
      .options, "/v1/users/me", headers: [.origin: "https://shop.example", .accessControlRequestMethod: "PATCH"])
    let context = makeContext()
    let answered = try await middleware.handle(preflight, context: context, next: Inner.unreachable)
    #expect(answered.status == .noContent)
    #expect(answered.headers[.accessControlAllowOrigin] == "https://shop.example")
    #expect(answered.headers[.accessControlAllowMethods]?.contains("PATCH") == true)
    #expect(context.exchange.current.operation == "preflight")

    let inner = Inner()
    let allowed = try await middleware.handle(
      request(headers: [.origin: "https://shop.example"]), context: makeContext(), next: inner.notFound)
    #expect(inner.context != nil)
    #expect(allowed.status == .notFound, "errors too get the headers")
    #expect(allowed.headers[.accessControlAllowOrigin] == "https://shop.example")
    #expect(allowed.headers[.vary] == "Origin")
    let other = try await middleware.handle(
      request(headers: [.origin: "https://evil.example"]), context: makeContext(), next: Inner().ok)
    #expect(other.headers[.accessControlAllowOrigin] == nil)
    #expect(other.headers[.vary] == "Origin")
  }

  @Test func headKeepsStatusAndHeadersButDropsTheBody() async throws {
    let answer: (Request, GatewayRequestContext) async throws -> Response = { _, _ in
      BuiltInEndpointsMiddleware.json(#"{"status":"ok"}"#, status: .ok)
    }
    let head = try await HeadMiddleware().handle(request(.head, "/healthz"), context: makeContext(), next: answer)
    #expect(head.status == .ok)
    #expect(head.headers[.contentType] == "application/json")
    #expect(try await collect(head).isEmpty)
    let get = try await HeadMiddleware().handle(request(.get, "/healthz"), context: makeContext(), next: answer)
    #expect(try await collect(get) == #"{"status":"ok"}"#)
  }

  @Test func theErrorStepRendersGatewayErrorsAndHidesAnythingElse() async throws {
    let middleware = GatewayErrorMiddleware(logger: TestBed.logger)
    var context = makeContext()
    context.requestID = "req-9"
    let refused = try await middleware.handle(request(), context: context) { _, _ in
      throw GatewayError.methodNotAllowed("PUT", allowed: ["GET"])
    }
    #expect(refused.status == .methodNotAllowed)
    #expect(refused.headers[.allow] == "GET")
    #expect(refused.headers[.contentType] == "application/json")
    let status = try JSONSerialization.jsonObject(with: Data(try await collect(refused).utf8)) as? [String: Any]
    #expect(status?["code"] as? Int == 12)
    #expect(context.exchange.current.code == .unimplemented)

    struct Surprise: Error {}
    let hidden = try await middleware.handle(request(), context: makeContext()) { _, _ in throw Surprise() }
    #expect(hidden.status == .internalServerError)
    #expect(try await collect(hidden).contains("internal error (request id "))

    let passed = try await middleware.handle(request(), context: makeContext(), next: Inner().ok)
    #expect(passed.status == .ok)
  }

  // MARK: Built-in endpoints and routing

  @Test func builtInEndpointsAnswerThemselvesAndPassEverythingElseOn() async throws {
    let registry = PrometheusCollectorRegistry()
    let adminToken = "metrics-reader-0123456789abcdef0123"
    let middleware = BuiltInEndpointsMiddleware(
      upstreams: try ServiceClients(directory: ServiceDirectory(endpoints: [:]), services: []),
      instruments: GatewayInstruments(registry: registry), adminToken: try AdminToken(adminToken))
    let context = makeContext()
    let health = try await middleware.handle(request(.get, "/healthz"), context: context, next: Inner.unreachable)
    #expect(health.status == .ok)
    #expect(try await collect(health) == #"{"status":"ok"}"#)
    #expect(context.exchange.current.operation == "healthz")
    let metrics = try await middleware.handle(
      request(.get, "/metrics", headers: [.authorization: "Bearer \(adminToken)"]), context: makeContext(),
      next: Inner.unreachable)
    #expect(metrics.headers[.contentType]?.hasPrefix("text/plain") == true)
    await #expect(throws: GatewayError.self, "no admin token") {
      try await middleware.handle(request(.get, "/metrics"), context: makeContext(), next: Inner.unreachable)
    }
    let options = try await middleware.handle(
      request(.options, "/docs"), context: makeContext(), next: Inner.unreachable)
    #expect(options.status == .noContent)
    #expect(options.headers[.allow] == "GET, HEAD, OPTIONS")
    await #expect(throws: GatewayError.self) {
      try await middleware.handle(request(.post, "/healthz"), context: makeContext(), next: Inner.unreachable)
    }
    let inner = Inner()
    _ = try await middleware.handle(request(.get, "/v1/users/me"), context: makeContext(), next: inner.ok)
    #expect(inner.context != nil, "not ours: passed on")
  }

  @Test func routeMatchSetsTheRouteOrRefuses() async throws {
    let middleware = RouteMatchMiddleware(
      matcher: try CompiledRoute.matcher(
        routes: GatewayRouteTable.routes, schemas: .generated, settings: GatewaySettings()))
    let inner = Inner()
    let context = makeContext()
    _ = try await middleware.handle(request(.get, "/v1/users/me"), context: context, next: inner.ok)
    #expect(inner.context?.route?.compiled.route.operationID == "UserService_GetMe")
    #expect(context.exchange.current == .init(operation: "UserService_GetMe", route: "/v1/users/me"))

    let bound = Inner()
    _ = try await middleware.handle(request(.get, "/v1/users/u%2042"), context: makeContext(), next: bound.ok)
    #expect(bound.context?.route?.bindings.first?.value == "u 42")

    let notFound = await refusal {
      try await middleware.handle(request(.get, "/v2/nothing"), context: $0, next: Inner.unreachable)
    }
    #expect(notFound?.httpStatus == .notFound)
    let wrongMethod = await refusal {
      try await middleware.handle(request(.delete, "/v1/users/me"), context: $0, next: Inner.unreachable)
    }
    #expect(wrongMethod?.httpStatus == .methodNotAllowed)
    #expect(wrongMethod?.headers[.allow]?.contains("GET") == true)
    let malformed = await refusal {
      try await middleware.handle(request(.get, "/v1/users/%FF"), context: $0, next: Inner.unreachable)
    }
    #expect(malformed?.httpStatus == .badRequest)
    let options = try await middleware.handle(
      request(.options, "/v1/users/me"), context: makeContext(), next: Inner.unreachable)
    #expect(options.status == .noContent)
    #expect(options.headers[.allow]?.contains("PATCH") == true)
  }

  // MARK: Token and quota

  @Test func edgeAuthLetsPublicRoutesPassAndVerifiesTheRest() async throws {
    let userKey = TokenSigningKey.random(kid: "unit-key")
    let middleware = EdgeAuthMiddleware(
      authenticator: EdgeAuthenticator(
        verifier: TokenVerifier(
          configuration: AuthConfiguration.ephemeral(),
          userKeys: StaticKeyProvider(["unit-key": userKey.privateKey.publicKey]), service: nil)))
    let matcher = try CompiledRoute.matcher(
      routes: GatewayRouteTable.routes, schemas: .generated, settings: GatewaySettings())

    let publicRoute = Inner()
    _ = try await middleware.handle(
      request(.post, "/v1/auth/login", headers: [.authorization: "Bearer not-checked-here"]),
      context: try routed(.post, "/v1/auth/login", matcher), next: publicRoute.ok)
    #expect(publicRoute.context != nil && publicRoute.context?.caller == nil)

    // A refusal goes on to the quota step, which charges it before answering with it.
    let me = try routed(.get, "/v1/users/me", matcher)
    let anonymousStep = Inner()
    _ = try await middleware.handle(request(), context: me, next: anonymousStep.ok)
    let anonymous = anonymousStep.context?.authenticationFailure
    #expect(anonymousStep.context?.caller == nil)
    #expect(anonymous?.httpStatus == .unauthorized)
    #expect(anonymous?.headers[.wwwAuthenticate] == #"Bearer realm="mart""#)

    let now = Int64(Date().timeIntervalSince1970)
    let subject = UUID().uuidString.lowercased()
    let token = try userKey.sign(
      AccessTokenClaims(sub: subject, roles: ["customer"], iss: "mart", aud: "mart", iat: now, exp: now + 600))
    let signedIn = Inner()
    _ = try await middleware.handle(
      request(headers: [.authorization: "Bearer \(token)"]), context: me, next: signedIn.ok)
    #expect(signedIn.context?.caller?.subject == subject)
  }

  @Test func theQuotaLabelsEveryAnswerAndRefusesOverIt() async throws {
    var settings = GatewaySettings()
    settings.defaultRateLimit = RateLimitPolicy(name: "tiny", limit: 1, window: .seconds(30))
    let matcher = try CompiledRoute.matcher(routes: GatewayRouteTable.routes, schemas: .generated, settings: settings)
    let clock = ManualClock()
    let middleware = RateLimitMiddleware(limiter: RateLimiter(now: clock.function))
    var first = try routed(.get, "/v1/users/me", matcher)
    first.clientAddress = IPAddress("192.0.2.1")

    let passed = try await middleware.handle(request(), context: first, next: Inner().ok)
    #expect(passed.headers[.rateLimitPolicy] == #""tiny";q=1;w=30"#)
    #expect(passed.headers[.rateLimit] == #""tiny";r=0;t=30"#)

    let refused = await refusal { _ in try await middleware.handle(request(), context: first, next: Inner.unreachable) }
    #expect(refused?.httpStatus == .tooManyRequests)
    #expect(refused?.headers[.retryAfter] == "30")
    #expect(refused?.headers[.rateLimit] == #""tiny";r=0;t=30"#)

    // Another address, or a signed-in caller, has its own bucket; an inner refusal keeps the headers.
    var other = first
    other.clientAddress = IPAddress("192.0.2.2")
    let inner = await refusal { _ in
      try await middleware.handle(request(), context: other) { _, _ in throw GatewayError.contentTooLarge(limit: 1) }
    }
    #expect(inner?.httpStatus == .contentTooLarge)
    #expect(inner?.headers[.rateLimitPolicy] == #""tiny";q=1;w=30"#)

    clock.advance(30)
    #expect(try await middleware.handle(request(), context: first, next: Inner().ok).status == .ok, "refilled")
  }

  // MARK: Transcoding

  @Test func transcodingAnswersEverythingItselfAndNeverCallsNext() async throws {
    let matcher = try CompiledRoute.matcher(
      routes: GatewayRouteTable.routes, schemas: .generated, settings: GatewaySettings())
    let middleware = TranscodingMiddleware(
      upstreams: try ServiceClients(directory: ServiceDirectory(endpoints: [:]), services: []), gatewayTokens: nil,
      maxBodyBytes: 8,
      streamHeartbeat: .seconds(15), logger: TestBed.logger)
    let login = try routed(.post, "/v1/auth/login", matcher)
    let tooLarge = await refusal { _ in
      try await middleware.handle(
        request(.post, "/v1/auth/login", headers: [.contentType: "application/json"], body: #"{"email": "a@b.c"}"#),
        context: login, next: Inner.unreachable)
    }
    #expect(tooLarge?.httpStatus == .contentTooLarge)
    let unknownParameter = await refusal { _ in
      try await middleware.handle(
        request(.get, "/v1/users/me?debug=1"), context: try routed(.get, "/v1/users/me", matcher),
        next: Inner.unreachable)
    }
    #expect(unknownParameter?.httpStatus == .badRequest)
    let noUpstream = await refusal { _ in
      try await middleware.handle(
        request(.post, "/v1/auth/login", headers: [.contentType: "application/json"], body: "{}"), context: login,
        next: Inner.unreachable)
    }
    #expect(noUpstream?.httpStatus == .serviceUnavailable, "the user service is not configured")
    let unrouted = await refusal { try await middleware.handle(request(), context: $0, next: Inner.unreachable) }
    #expect(unrouted?.httpStatus == .internalServerError, "wired in front of route matching")
  }
}

// MARK: - Helpers

private func request(
  _ method: HTTPRequest.Method = .get, _ path: String = "/v1/users/me", headers: HTTPFields = [:], body: String = ""
) -> Request {
  Request(
    head: HTTPRequest(method: method, scheme: "http", authority: "localhost", path: path, headerFields: headers),
    body: RequestBody(buffer: ByteBuffer(string: body)))
}

private func makeContext(peer: SocketAddress? = nil) -> GatewayRequestContext {
  GatewayRequestContext(logger: TestBed.logger, remoteAddress: peer)
}

/// A context as `RouteMatchMiddleware` leaves it for this method and path.
private func routed(
  _ method: HTTPRequest.Method, _ path: String, _ matcher: RouteMatcher<CompiledRoute>
) throws -> GatewayRequestContext {
  guard case .found(let compiled, let bindings) = matcher.match(method: method.rawValue, path: path) else {
    throw GatewayError.notFound(path: path)
  }
  var context = makeContext()
  context.route = MatchedRoute(compiled: compiled, bindings: bindings)
  return context
}

/// The GatewayError a step threw, or nil (recorded as an issue) if it answered instead.
private func refusal(
  _ body: (GatewayRequestContext) async throws -> Response, sourceLocation: SourceLocation = #_sourceLocation
) async -> GatewayError? {
  do {
    let response = try await body(makeContext())
    Issue.record("answered \(response.status) instead of refusing", sourceLocation: sourceLocation)
  } catch let error as GatewayError {
    return error
  } catch {
    Issue.record("threw \(error), not a GatewayError", sourceLocation: sourceLocation)
  }
  return nil
}

private func collect(_ response: Response) async throws -> String {
  let writer = CollectingWriter()
  try await response.body.write(writer)
  return String(buffer: writer.collected)
}

/// A response body writer that keeps what is written.
private final class CollectingWriter: ResponseBodyWriter {
  var collected = ByteBuffer()

  func write(_ buffer: ByteBuffer) async throws {
    var buffer = buffer
    collected.writeBuffer(&buffer)
  }

  func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// The steps inside the one under test: remembers the context it was handed.
private final class Inner {
  private(set) var context: GatewayRequestContext?

  func saw(_ context: GatewayRequestContext) { self.context = context }

  func ok(_: Request, _ context: GatewayRequestContext) -> Response {
    saw(context)
    return Response(status: .ok)
  }

  func notFound(_: Request, _ context: GatewayRequestContext) -> Response {
    saw(context)
    return Response(status: .notFound)
  }

  /// For a step that must answer by itself.
  static func unreachable(_: Request, _: GatewayRequestContext) -> Response {
    Issue.record("the step called next")
    return Response(status: .internalServerError)
  }
}
