import GRPCNIOTransportHTTP2
import Hummingbird
import HummingbirdCore
import Logging
import MartCore
import NIOCore
import Prometheus
import ServiceLifecycle

// The edge gateway as lifecycle services: the gRPC clients of the six services and the HTTP
// application in front of them (port 8000). Hummingbird's Application is a Service, so on
// SIGTERM it stops accepting connections and drains the requests in flight.

/// The gateway's gRPC clients of the services: HTTP/2, whatever transport the services' own tests use.
typealias Upstreams = ServiceClients<HTTP2ClientTransport.Posix>

/// The edge gateway: the HTTP/JSON face of the mart on port 8000.
public enum Gateway {
  /// The gateway's HTTP application and the gRPC clients it needs, as lifecycle services.
  /// Metrics go to `ProcessMetrics.processRegistry` (served at /metrics); call
  /// `ProcessMetrics.bootstrapProcessMetrics()` first to send swift-metrics there too.
  /// `onListening` is told the port once the server accepts connections (with port 0 in the
  /// configuration, the one the system chose). `rateLimitClock` is the time since any fixed
  /// origin that quotas refill by (default: `ContinuousClock`); tests move one by hand.
  public static func makeServices(
    configuration: GatewayConfiguration, logger: Logger, onListening: (@Sendable (Int) async -> Void)? = nil,
    rateLimitClock: (@Sendable () -> Duration)? = nil
  ) throws -> [any Service] {
    let upstreams = try ServiceClients(
      directory: configuration.directory, connectionsPerService: configuration.settings.upstreamConnections)
    let app = try makeApplication(
      configuration: configuration, upstreams: upstreams, registry: ProcessMetrics.processRegistry,
      clock: rateLimitClock ?? RateLimiter.monotonicClock(), onListening: onListening, logger: logger)
    return [upstreams, app]
  }

  /// The HTTP application over `upstreams` (which the caller runs). Tests pass their own registry,
  /// route table and clock.
  static func makeApplication(
    configuration: GatewayConfiguration, upstreams: Upstreams,
    registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
    routes: [GatewayRoute] = GatewayRouteTable.routes, schemas: SchemaIndex = .generated,
    verifier: TokenVerifier? = nil, clock: @escaping @Sendable () -> Duration = RateLimiter.monotonicClock(),
    onListening: (@Sendable (Int) async -> Void)? = nil, logger: Logger
  ) throws -> Application<RouterResponder<GatewayRequestContext>> {
    let settings = configuration.settings
    let matcher = try CompiledRoute.matcher(routes: routes, schemas: schemas, settings: settings)
    let verifier =
      verifier
      ?? TokenVerifier(
        configuration: configuration.auth, userKeys: JWKSKeyProvider.userService(upstreams), service: nil)
    let instruments = GatewayInstruments(registry: registry)
    // No routes: every request reaches the middleware, which routes by the generated table. Order
    // is run order, outermost first. The request id comes before the access log so that the
    // log line is written inside the request's task-locals (its request_id and trace_id); the
    // error middleware sits inside everything that must see every answer as a Response.
    let router = Router(context: GatewayRequestContext.self)
    router.addMiddleware {
      RequestIDMiddleware()
      SecurityHeadersMiddleware(strictTransportSecurity: settings.strictTransportSecurity)
      ClientAddressMiddleware(resolver: ClientAddressResolver(trustedProxies: settings.trustedProxies))
      AccessLogMiddleware(instruments: instruments, logger: logger)
      EdgeCORSMiddleware(policy: CORSPolicy(settings.cors))
      HeadMiddleware()
      GatewayErrorMiddleware(logger: logger)
      BuiltInEndpointsMiddleware(upstreams: upstreams, instruments: instruments, adminToken: configuration.adminToken)
      RouteMatchMiddleware(matcher: matcher)
      // After matching (cheap, and an unknown path is 404 whatever the load), so that the route
      // decides the priority.
      AdmissionMiddleware(
        limiter: AdmissionLimiter(settings.admission), priorityOperations: settings.admissionPriorityOperations)
      EdgeAuthMiddleware(authenticator: EdgeAuthenticator(verifier: verifier))
      RateLimitMiddleware(limiter: RateLimiter(maximumBuckets: settings.maxRateLimitBuckets, now: clock))
      TranscodingMiddleware(
        upstreams: upstreams, gatewayTokens: ServiceTokenIssuer(.gateway, configuration: configuration.auth),
        maxBodyBytes: settings.maxBodyBytes, streamHeartbeat: settings.streamHeartbeat, logger: logger)
    }
    let timeouts = settings.timeouts
    return Application(
      router: router,
      server: .http1(
        configuration: .init(
          additionalChannelHandlers: [RequestReadTimeoutHandler(header: timeouts.header, body: timeouts.body)],
          idleTimeout: TimeAmount(timeouts.idle))),
      configuration: .init(address: .hostname(configuration.bindHost, port: configuration.port), serverName: "mart"),
      onServerRunning: { channel in
        if let port = channel.localAddress?.port { await onListening?(port) }
      },
      logger: logger)
  }
}
