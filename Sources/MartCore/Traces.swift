import GRPCCore
import Tracing

/// Spans through swift-distributed-tracing, and the W3C `traceparent` that carries them from
/// process to process: in gRPC metadata, in the outbox row and in the Kafka record's headers.
///
/// Whatever tracer the process bootstrapped does the work: swift-otel's when an OTLP endpoint is
/// configured (see `mart`'s `ProcessTracing`), else swift-distributed-tracing's no-op one. Inside a
/// span, `RequestContext.traceparent` is that span's, so calls made, events appended and log lines
/// written there carry it (log lines: `trace_id` and `span_id`). With tracing off it stays the
/// caller's, so that a caller's trace id still reaches every log line of the request.
public enum MartTracing {
  /// Runs `operation` in a span named `name`: a child of the span `parent` names (a `traceparent`
  /// from a request or an event) when there is a valid one, else of the current span.
  ///
  /// A failure is recorded by its type only (`error.type`): its description can hold a failed
  /// statement's values (a PSQLError's detail), which must not reach a trace store. A thrown
  /// RPCError is a status, which `traceRPC` records by its code.
  public static func withSpan<Result>(
    _ name: String, ofKind kind: SpanKind = .internal, continuing parent: String? = nil,
    _ operation: (any Span) async throws -> Result
  ) async rethrows -> Result {
    let parent = parent.flatMap(RequestContext.validTraceparent)
    // Tracing off (the default): no span to start, no context to inject; every RPC, transaction
    // and event passes here, so the no-op tracer's work is skipped, not just discarded.
    guard isTracing else {
      return try await RequestContext.$traceparent.withValue(parent ?? RequestContext.traceparent) {
        try await operation(NoOpTracer.NoOpSpan(context: .topLevel))
      }
    }
    let span = Tracing.startSpan(name, context: context(continuing: parent), ofKind: kind)
    defer { span.end() }
    do {
      return try await ServiceContext.withValue(span.context) {
        guard let own = traceparent(of: span.context) else {
          return try await RequestContext.$traceparent.withValue(parent ?? RequestContext.traceparent) {
            try await operation(span)
          }
        }
        return try await RequestContext.$traceparent.withValue(own) {
          try await RequestContext.$spanID.withValue(RequestContext.spanID(fromTraceparent: own)) {
            try await operation(span)
          }
        }
      }
    } catch {
      span.attributes["error.type"] = String(describing: type(of: error))
      if !(error is RPCError) { span.setStatus(SpanStatus(code: .error)) }
      throw error
    }
  }

  /// Starts a span that the caller ends (for work that does not fit in one closure, such as a
  /// batch of publishes), and the `traceparent` that continues it (the parent's with tracing off).
  public static func startSpan(
    _ name: String, ofKind kind: SpanKind, continuing parent: String?
  ) -> (span: any Span, traceparent: String?) {
    let parent = parent.flatMap(RequestContext.validTraceparent)
    guard isTracing else { return (NoOpTracer.NoOpSpan(context: .topLevel), parent) }
    let span = Tracing.startSpan(name, context: context(continuing: parent), ofKind: kind)
    return (span, traceparent(of: span.context) ?? parent)
  }

  /// Whether the process bootstrapped a tracer (`ProcessTracing`), rather than running with
  /// swift-distributed-tracing's no-op one.
  static var isTracing: Bool { !(InstrumentationSystem.tracer is NoOpTracer) }

  /// The current context, or (given a `traceparent`) a new one that continues it.
  static func context(continuing parent: String?) -> ServiceContext {
    guard let parent else { return .current ?? .topLevel }
    var context = ServiceContext.current ?? .topLevel
    InstrumentationSystem.instrument.extract(
      ["traceparent": parent], into: &context, using: DictionaryCarrier())
    return context
  }

  /// The `traceparent` of the span in `context`; nil with tracing off.
  static func traceparent(of context: ServiceContext) -> String? {
    var carrier: [String: String] = [:]
    InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryCarrier())
    return carrier["traceparent"]
  }

  /// Whether calls of `method` get spans: not health checks, which load balancers, orchestrators
  /// and the gateway's /readyz make every few seconds, and which would only fill a trace store
  /// with root spans.
  static func traces(_ method: MethodDescriptor) -> Bool {
    method.service.fullyQualifiedService != "grpc.health.v1.Health"
  }

  /// Runs one side of a gRPC call in `span`: names the method by OpenTelemetry's RPC attributes,
  /// and records the status the call ends with, thrown or (`rejection`) in its response.
  static func traceRPC<Response>(
    _ method: MethodDescriptor, in span: any Span, asServer: Bool, rejection: (Response) -> RPCError?,
    _ call: () async throws -> Response
  ) async throws -> Response {
    span.attributes["rpc.system"] = "grpc"
    span.attributes["rpc.service"] = method.service.fullyQualifiedService
    span.attributes["rpc.method"] = method.method
    do {
      let response = try await call()
      if let error = rejection(response) { record(error.code, message: error.message, on: span, asServer: asServer) }
      return response
    } catch let error as RPCError {
      record(error.code, message: error.message, on: span, asServer: asServer)
      throw error
    }
  }

  /// The codes that make a server span failed (OpenTelemetry's RPC conventions).
  static let serverFaults: Set<RPCError.Code> = [
    .unknown, .deadlineExceeded, .unimplemented, .internalError, .unavailable, .dataLoss,
  ]

  /// Marks `span` failed with a gRPC status, as OpenTelemetry's RPC conventions say: the code as
  /// `rpc.grpc.status_code`, and an error status for a server only on codes that are the
  /// server's fault (a client's NOT_FOUND is not a failed server span).
  static func record(_ code: RPCError.Code, message: String, on span: any Span, asServer: Bool) {
    span.attributes["rpc.grpc.status_code"] = Int64(code.rawValue)
    if !asServer || serverFaults.contains(code) {
      span.setStatus(SpanStatus(code: .error, message: message))
    }
  }
}

/// A `[String: String]` as a propagation carrier (for `traceparent` alone).
struct DictionaryCarrier: Injector, Extractor {
  func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
    carrier[key] = value
  }

  func extract(key: String, from carrier: [String: String]) -> String? {
    carrier[key]
  }
}

extension Result {
  /// The error of a failure; nil for a success.
  var failure: Failure? {
    if case .failure(let error) = self { return error }
    return nil
  }
}
