import Foundation
import Logging

/// Per-call context that every log line written while handling the call carries.
public enum RequestContext {
  /// The caller's `x-request-id` (or one generated at the edge), passed from service to service.
  @TaskLocal public static var requestID: String?
  /// The W3C `traceparent` to pass on: the current span's with tracing on, else the caller's
  /// valid one (`validTraceparent`).
  @TaskLocal public static var traceparent: String?

  /// The id (16 hex digits) of the span this process is in, when tracing is on (`MartTracing`).
  @TaskLocal public static var spanID: String?

  /// The trace id (32 hex digits) of the current `traceparent`.
  public static var traceID: String? { traceparent.flatMap(traceID(fromTraceparent:)) }

  /// Adds `request_id`, `trace_id` and `span_id` to every log line written inside a call.
  public static let metadataProvider = Logger.MetadataProvider {
    var metadata: Logger.Metadata = [:]
    if let requestID { metadata["request_id"] = .string(requestID) }
    if let traceID { metadata["trace_id"] = .string(traceID) }
    if let spanID { metadata["span_id"] = .string(spanID) }
    return metadata
  }

  /// The parent id (16 hex digits) of a W3C `traceparent` header: the span it names.
  static func spanID(fromTraceparent header: String) -> String? { field(2, of: header) }

  /// `header` when it is a valid W3C `traceparent` (Trace Context, section 3.2): version, trace
  /// id, parent id and flags in lower-case hex, neither id all zeros, version `00` with exactly
  /// those four fields (a later version may add more) and never `ff`. Anything else is dropped
  /// rather than passed on into calls, events and log lines.
  public static func validTraceparent(_ header: String) -> String? {
    let parts = header.split(separator: "-", omittingEmptySubsequences: false)
    func hex(_ part: Substring, _ count: Int) -> Bool {
      part.count == count && part.allSatisfy { ("0"..."9").contains($0) || ("a"..."f").contains($0) }
    }
    guard parts.count >= 4, hex(parts[0], 2), parts[0] != "ff", hex(parts[1], 32), hex(parts[2], 16),
      hex(parts[3], 2), parts[1] != Substring(String(repeating: "0", count: 32)),
      parts[2] != Substring(String(repeating: "0", count: 16)), parts[0] != "00" || parts.count == 4
    else { return nil }
    return header
  }

  /// The trace id (32 hex digits) of a W3C `traceparent` header, or nil when it is malformed.
  public static func traceID(fromTraceparent header: String) -> String? { field(1, of: header) }

  /// Field `index` of a valid `traceparent` (1: the trace id, 2: the parent's span id).
  private static func field(_ index: Int, of header: String) -> String? {
    validTraceparent(header).map { String($0.split(separator: "-")[index]) }
  }
}

/// Writes one JSON object per log event to standard error:
/// `{"ts":"…","level":"info","service":"order","logger":"…","msg":"…", …metadata}`.
public struct JSONLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level
  public var metadataProvider: Logger.MetadataProvider?
  let label: String
  let service: String
  let stream: TextOutputStreamSink

  public init(
    label: String, service: String, level: Logger.Level,
    metadataProvider: Logger.MetadataProvider? = RequestContext.metadataProvider,
    stream: TextOutputStreamSink = .standardError
  ) {
    self.label = label
    self.service = service
    self.logLevel = level
    self.metadataProvider = metadataProvider
    self.stream = stream
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    var merged = metadata
    if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
    if let extra = event.metadata { merged.merge(extra) { _, new in new } }

    var line = "{\"ts\":\(JSONString.quoted(Self.timestamp()))"
    line += ",\"level\":\(JSONString.quoted(event.level.rawValue))"
    line += ",\"service\":\(JSONString.quoted(service))"
    line += ",\"logger\":\(JSONString.quoted(label))"
    line += ",\"msg\":\(JSONString.quoted(event.message.description))"
    for key in merged.keys.sorted() where !["ts", "level", "service", "logger", "msg"].contains(key) {
      if let value = merged[key] { line += ",\(JSONString.quoted(key)):\(Self.json(value))" }
    }
    if event.level >= .error { line += ",\"source\":\(JSONString.quoted("\(event.file):\(event.line)"))" }
    line += "}\n"
    stream.write(line)
  }

  static func json(_ value: Logger.Metadata.Value) -> String {
    switch value {
    case .string(let string): JSONString.quoted(string)
    case .stringConvertible(let convertible): JSONString.quoted(convertible.description)
    case .array(let values): "[" + values.map(json).joined(separator: ",") + "]"
    case .dictionary(let dictionary):
      "{"
        + dictionary.sorted { $0.key < $1.key }.map { "\(JSONString.quoted($0.key)):\(json($0.value))" }
        .joined(separator: ",") + "}"
    }
  }

  static func timestamp() -> String {
    Date.now.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
  }
}

/// Where log lines go; a class so that tests can capture them.
public final class TextOutputStreamSink: Sendable {
  private let writeLine: @Sendable (String) -> Void

  public init(_ writeLine: @escaping @Sendable (String) -> Void) {
    self.writeLine = writeLine
  }

  public func write(_ line: String) { writeLine(line) }

  public static let standardError = TextOutputStreamSink { line in
    FileHandle.standardError.write(Data(line.utf8))
  }
}

public enum MartLogging {
  /// Installs the process-wide log handler once, before anything logs.
  public static func bootstrap(process: String, configuration: ProcessConfiguration) {
    LoggingSystem.bootstrap(
      { label, provider in
        switch configuration.logFormat {
        case .json:
          var handler = JSONLogHandler(label: label, service: process, level: configuration.logLevel)
          handler.metadataProvider = provider
          return handler
        case .text:
          var handler = StreamLogHandler.standardError(label: label, metadataProvider: provider)
          handler.logLevel = configuration.logLevel
          handler[metadataKey: "service"] = .string(process)
          return handler
        }
      }, metadataProvider: RequestContext.metadataProvider)
  }
}
