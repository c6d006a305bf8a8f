import Foundation
import Logging
import MartCore
import MartDatabase
import MartProto
import PostgresNIO
import SwiftProtobuf

extension Migration {
  public static let eventTablesName = "event_tables"

  /// The `outbox` and `inbox` tables, the same in every service's database; each service lists
  /// this migration after its own first one.
  public static func eventTables(version: Int) -> Migration {
    Migration(version: version, name: eventTablesName, embedded: PackageResources.event_tables_sql)
  }
}

/// Writes a service's domain events into its `outbox` table, in the caller's transaction, so that
/// an event exists exactly when the state change it describes was committed. The relay publishes
/// it afterwards.
public struct Outbox: Sendable {
  /// The PostgreSQL channel the relay listens on; `NOTIFY` is delivered at commit.
  public static let channel = "mart_outbox"

  public let service: MartService

  public init(service: MartService) {
    self.service = service
  }

  /// Appends `event` to the outbox on `connection`, which must be inside a transaction.
  ///
  /// Fills the event's metadata: a new event id, the time, this service as producer, and the
  /// current request's id and trace context (an `outbox append` span's). Returns the event id.
  @discardableResult
  public func append<Event: DomainEvent>(
    _ event: Event, aggregateType: String, aggregateID: String, causationID: String? = nil,
    on connection: PostgresConnection, logger: Logger
  ) async throws -> UUID {
    let eventType = Event.protoMessageName
    // The event carries this span's trace: the relay's publish and every consumer continue it.
    return try await MartTracing.withSpan("outbox append \(eventType)") { _ in
      guard let topic = EventTopic.of(eventType: eventType) else {
        throw EnvelopeError("\(eventType) belongs to no event topic")
      }
      let id = UUID()
      var event = event
      event.metadata.eventID = id.uuidString.lowercased()
      event.metadata.occurTime = Google_Protobuf_Timestamp(date: Date())
      event.metadata.producer = service.rawValue
      if let requestID = RequestContext.requestID { event.metadata.correlationID = requestID }
      if let causationID { event.metadata.causationID = causationID }
      if let traceparent = RequestContext.traceparent { event.metadata.traceparent = traceparent }
      let payload: [UInt8] = try event.serializedBytes()
      let headers =
        event.metadata.traceparent.isEmpty ? "{}" : Self.jsonObject(["traceparent": event.metadata.traceparent])

      try await connection.query(
        """
        INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, payload, headers)
        VALUES (\(id), \(topic.name), \(aggregateType), \(aggregateID), \(eventType), \(ByteBuffer(bytes: payload)),
                \(headers)::jsonb)
        """, logger: logger)
      try await connection.query("SELECT pg_notify(\(Self.channel), '')", logger: logger)
      return id
    }
  }

  static func jsonObject(_ fields: [String: String]) -> String {
    "{"
      + fields.sorted { $0.key < $1.key }.map { "\(JSONString.quoted($0.key)):\(JSONString.quoted($0.value))" }
      .joined(separator: ",") + "}"
  }
}
