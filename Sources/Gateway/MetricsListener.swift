import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// A service process's Prometheus endpoint (`mart serve <service>`): GET /metrics on its own port
/// (`MART_<SERVICE>_METRICS_PORT`, the service's gRPC port + 1000 by default), showing what the
/// process recorded through swift-metrics: its RPCs (RED), events, outbox, sagas, payments and
/// deliveries. It listens beside the gRPC port, on the same host, which is internal: the edge's
/// /metrics, public by position, needs the admin token instead.
public struct MetricsListener: Service {
  let host: String
  let port: Int
  let registry: PrometheusCollectorRegistry
  let logger: Logger

  public init(
    host: String, port: Int, registry: PrometheusCollectorRegistry = ProcessMetrics.processRegistry, logger: Logger
  ) {
    self.host = host
    self.port = port
    self.registry = registry
    self.logger = logger
  }

  public func run() async throws {
    let router = Router()
    let registry = self.registry
    router.get("/metrics") { _, _ -> Response in
      var buffer: [UInt8] = []
      registry.emit(into: &buffer)
      var headers = HTTPFields()
      headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
      return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
    }
    let app = Application(
      router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil), logger: logger)
    // `run()`, not `runService()`: the latter starts a service group of its own that traps
    // SIGTERM, so the listener would end before the process's drain reached it, and the group
    // would count that as a failure (exit 1) and cancel the gRPC server mid-drain.
    try await app.run()
  }
}
