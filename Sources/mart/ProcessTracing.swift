import Logging
import MartRuntime
import OTel
import ServiceLifecycle
import Tracing

/// Tracing of this process: spans exported over OTLP/HTTP by swift-otel when an endpoint is
/// configured, off (swift-distributed-tracing's no-op tracer) otherwise.
///
/// It is configured by OpenTelemetry's own variables, which swift-otel reads: tracing is on when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `OTEL_EXPORTER_OTLP_PROTOCOL` is
/// `http/protobuf` (the default) or `http/json`; `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG` sample (every trace by default, parent-based). The service name is
/// `mart-<process>` unless `OTEL_SERVICE_NAME` says otherwise.
enum ProcessTracing {
  /// Whether the environment asks for tracing.
  static func isConfigured(_ environment: [String: String]) -> Bool {
    let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"].contains {
      !(environment[$0] ?? "").trimmingCharacters(in: .whitespaces).isEmpty
    }
    let disabled =
      environment["OTEL_SDK_DISABLED"]?.lowercased() == "true"
      || environment["OTEL_TRACES_EXPORTER"]?.lowercased() == "none"
    return endpoint && !disabled
  }

  /// Bootstraps the process's tracer when tracing is configured, and returns the service that
  /// exports its spans (run it with the process's other services; it flushes on shutdown).
  static func bootstrap(process name: String, environment: [String: String], logger: Logger) throws -> (any Service)? {
    guard isConfigured(environment) else { return nil }
    var configuration = OTel.Configuration.default
    configuration.serviceName = "mart-\(name)"
    configuration.diagnosticLogger = .custom(logger)
    // Logs stay JSON lines on standard error and metrics Prometheus; OTLP carries traces only.
    configuration.logs.enabled = false
    configuration.metrics.enabled = false
    configuration.traces.enabled = true
    let backend = try OTel.makeTracingBackend(configuration: configuration)
    InstrumentationSystem.bootstrap(backend.factory)
    logger.info("tracing: exporting spans over OTLP")
    return backend.service
  }
}
