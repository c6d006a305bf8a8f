import Foundation

/// A header of a transported event (Kafka record header): a name and optional bytes.
public struct EventHeader: Sendable, Hashable {
  public var name: String
  public var value: [UInt8]?

  public init(_ name: String, _ value: [UInt8]?) {
    self.name = name
    self.value = value
  }

  public init(_ name: String, _ text: String) {
    self.init(name, Array(text.utf8))
  }

  public var text: String? { value.map { String(decoding: $0, as: UTF8.self) } }
}

/// An event as it travels: the CloudEvents 1.0 Kafka protocol binding in binary mode.
///
/// The record key is the aggregate's id (events of one aggregate stay in order on one partition),
/// the value is the protobuf payload, and the attributes travel as `ce_*` headers:
/// `ce_specversion`, `ce_id`, `ce_source`, `ce_type` (the full protobuf message name), `ce_time`,
/// `ce_subject`, plus `content-type: application/protobuf`. The trace, when there is one, is the
/// CloudEvents Distributed Tracing extension's `traceparent` attribute (`ce_traceparent`), and
/// also a plain `traceparent` header, which OpenTelemetry's Kafka instrumentations read; a
/// consumer reads the first, else the second.
public struct EventEnvelope: Sendable, Equatable {
  public static let contentType = "application/protobuf"

  public var id: UUID
  /// The full protobuf message name, e.g. `mart.order.v1.OrderPlaced`.
  public var type: String
  /// The producing service as a URI reference, e.g. `/mart/order`.
  public var source: String
  /// The aggregate's id; also the record key.
  public var subject: String
  public var time: Date
  public var topic: String
  public var payload: [UInt8]
  public var traceparent: String?

  public init(
    id: UUID, type: String, source: String, subject: String, time: Date, topic: String, payload: [UInt8],
    traceparent: String? = nil
  ) {
    self.id = id
    self.type = type
    self.source = source
    self.subject = subject
    self.time = time
    self.topic = topic
    self.payload = payload
    self.traceparent = traceparent
  }

  public var key: [UInt8] { Array(subject.utf8) }

  public var headers: [EventHeader] {
    var headers = [
      EventHeader("ce_specversion", "1.0"),
      EventHeader("ce_id", id.uuidString.lowercased()),
      EventHeader("ce_source", source),
      EventHeader("ce_type", type),
      EventHeader("ce_time", Self.formatTime(time)),
      EventHeader("ce_subject", subject),
      EventHeader("content-type", Self.contentType),
    ]
    if let traceparent {
      headers.append(EventHeader("ce_traceparent", traceparent))
      headers.append(EventHeader("traceparent", traceparent))
    }
    return headers
  }

  /// Reads the envelope of a received record; throws when a required attribute is missing or malformed.
  public init(topic: String, key: [UInt8]?, value: [UInt8], headers: [EventHeader]) throws {
    func header(_ name: String) -> String? { headers.last(where: { $0.name == name })?.text }
    func required(_ name: String) throws -> String {
      guard let value = header(name), !value.isEmpty else { throw EnvelopeError("missing header \(name)") }
      return value
    }
    guard try required("ce_specversion") == "1.0" else {
      throw EnvelopeError("unsupported ce_specversion \(header("ce_specversion") ?? "")")
    }
    guard let id = UUID(uuidString: try required("ce_id")) else {
      throw EnvelopeError("ce_id is not a UUID")
    }
    guard let time = Self.parseTime(try required("ce_time")) else {
      throw EnvelopeError("ce_time is not an RFC 3339 time")
    }
    if let contentType = header("content-type"), contentType != Self.contentType {
      throw EnvelopeError("unsupported content-type \(contentType)")
    }
    self.init(
      id: id, type: try required("ce_type"), source: try required("ce_source"),
      subject: header("ce_subject") ?? key.map { String(decoding: $0, as: UTF8.self) } ?? "",
      time: time, topic: topic, payload: value, traceparent: header("ce_traceparent") ?? header("traceparent"))
  }

  static func formatTime(_ date: Date) -> String {
    date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
  }

  static func parseTime(_ text: String) -> Date? {
    (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text))
      ?? (try? Date.ISO8601FormatStyle().parse(text))
  }
}

/// A received record whose envelope is unreadable.
public struct EnvelopeError: Error, CustomStringConvertible, Equatable {
  public var description: String
  public init(_ description: String) { self.description = description }
}
