import GRPCNIOTransportHTTP2
import Hummingbird
import Logging
import MartRuntime
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
  /// Metrics go to `GatewayMetrics.processRegistry` (served at /metrics); call
  /// `GatewayMetrics.bootstrapProcessMetrics()` first to send swift-metrics there too.
  /// `onListening` is told the port once the server accepts connections (with port 0 in the
  /// configuration, the one the system chose).
  public static func makeServices(
    configuration: GatewayConfiguration, logger: Logger, onListening: (@Sendable (Int) async -> Void)? = nil
  ) throws -> [any Service] {
    let upstreams = try ServiceClients(directory: configuration.directory)
    let app = try makeApplication(
      configuration: configuration, upstreams: upstreams, registry: GatewayMetrics.processRegistry,
      onListening: onListening, logger: logger)
    return [upstreams, app]
  }

  /// The HTTP application over `upstreams` (which the caller runs). Tests pass their own registry,
  /// route table and clock.
  static func makeApplication(
    configuration: GatewayConfiguration, upstreams: Upstreams,
    registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
    routes: [GatewayRoute] = GatewayRouteTable.routes, schemas: SchemaIndex = .generated,
    verifier: TokenVerifier? = nil, clock: @escaping @Sendable () -> Double = RateLimiter.monotonicSeconds(),
    onListening: (@Sendable (Int) async -> Void)? = nil, logger: Logger
  ) throws -> Application<GatewayResponder> {
    let responder = try GatewayResponder(
      routes: routes, schemas: schemas, settings: configuration.settings, upstreams: upstreams,
      verifier: verifier
        ?? TokenVerifier(configuration: configuration.auth, userKeys: JWKSKeyProvider.userService(upstreams)),
      instruments: GatewayInstruments(registry: registry), clock: clock, logger: logger)
    return Application(
      responder: responder,
      configuration: .init(address: .hostname(configuration.bindHost, port: configuration.port), serverName: "mart"),
      onServerRunning: { channel in
        if let port = channel.localAddress?.port { await onListening?(port) }
      },
      logger: logger)
  }
}
