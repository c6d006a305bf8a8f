import Metrics
import Prometheus
import Synchronization

// Prometheus metrics of the edge, served at /metrics: a request counter per route, method and
// HTTP status, an error counter per route and google.rpc code, and a latency histogram per route.
// The gateway writes to its registry directly; `bootstrapProcessMetrics()` also points
// swift-metrics (whatever else in the process records through it: the services' RPCs, events,
// sagas, deliveries) at the same registry, once per process, from the `mart` entry points, never
// from library code or tests. A service process serves it with `MetricsListener`.

public enum ProcessMetrics {
  /// The registry that /metrics shows: the gateway's (`mart serve gateway`, `mart dev`) or a
  /// service's metrics listener (`mart serve <service>`).
  public static let processRegistry = PrometheusCollectorRegistry()

  private static let bootstrapped = Mutex(false)

  /// Bootstraps swift-metrics with a Prometheus factory over `processRegistry`. Safe to call more
  /// than once; only the first call bootstraps (swift-metrics allows one bootstrap per process).
  public static func bootstrapProcessMetrics() {
    let first = bootstrapped.withLock { done in
      defer { done = true }
      return !done
    }
    if first { MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: processRegistry)) }
  }
}

/// The gateway's instruments over one registry.
struct GatewayInstruments: Sendable {
  let registry: PrometheusCollectorRegistry

  static let durationBuckets: [Duration] = [
    .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
    .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
  ]

  /// Methods outside this set are counted as OTHER, so that a client cannot mint label values.
  private static let knownMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

  /// Records one answered request. `operation` is the route's operationID, or a fixed name for the
  /// gateway's own endpoints and for unmatched paths.
  func record(operation: String, method: String, status: Int, code: String?, duration: Duration) {
    let method = Self.knownMethods.contains(method) ? method : "OTHER"
    registry.makeCounter(
      descriptor: Self.descriptor("requests", unit: "total", help: "HTTP requests answered by the gateway"),
      labels: [("operation", operation), ("method", method), ("status", String(status))]
    ).increment()
    registry.makeDurationHistogram(
      descriptor: Self.descriptor("request_duration", unit: "seconds", help: "Time from request to response"),
      labels: [("operation", operation), ("method", method)], buckets: Self.durationBuckets
    ).record(duration)
    if let code {
      registry.makeCounter(
        descriptor: Self.descriptor(
          "errors", unit: "total", help: "Requests answered with an error, by google.rpc code"),
        labels: [("operation", operation), ("code", code)]
      ).increment()
    }
  }

  /// `mart_gateway_<name>_<unit>`.
  private static func descriptor(_ name: String, unit: String, help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "mart", subsystem: "gateway", metricName: name, unitName: unit, helpText: help)
  }

  /// The Prometheus text exposition of the registry.
  func exposition() -> [UInt8] {
    var buffer: [UInt8] = []
    registry.emit(into: &buffer)
    return buffer
  }
}
