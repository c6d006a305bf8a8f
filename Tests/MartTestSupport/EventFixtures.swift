import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO
import ServiceLifecycle

/// A scratch database with the event tables and an `effects` table that test handlers write to:
/// one row per applied event, so "applied exactly once, in order" can be read back.
public enum EventFixtures {
  public static let migrations = [
    Migration.eventTables(version: 1),
    Migration(
      version: 2, name: "effects",
      sql: """
        CREATE TABLE effects (
          seq bigserial PRIMARY KEY,
          event_id uuid NOT NULL,
          aggregate_id text NOT NULL,
          order_number text NOT NULL,
          consumer text NOT NULL DEFAULT ''
        );
        """),
  ]

  public static func migrate(_ client: PostgresClient) async throws {
    try await MigrationRunner(migrations: migrations, logger: TestBed.logger).migrate(client)
  }

  /// An OrderPlaced whose order number says which one it is.
  public static func orderPlaced(order: String, number: Int) -> Mart_Order_V1_OrderPlaced {
    .with {
      $0.orderID = order
      $0.orderNumber = "\(number)"
    }
  }

  /// Writes `events` through the outbox, one transaction each, as a service would.
  public static func append(
    _ events: [Mart_Order_V1_OrderPlaced], service: MartService = .order, to client: PostgresClient
  ) async throws {
    let outbox = Outbox(service: service)
    for event in events {
      _ = try await client.withTransaction(logger: TestBed.logger) { connection in
        try await outbox.append(
          event, aggregateType: "order", aggregateID: event.orderID, on: connection, logger: TestBed.logger)
      }
    }
  }

  /// A handler that records each OrderPlaced in `effects` with `label` (and fails for order
  /// numbers in `poison`), taking `delay` inside its transaction.
  public static func recordingHandlers(
    poison: Set<String> = [], invalid: Set<String> = [], label: String = "", delay: Duration = .zero
  ) -> EventHandlers {
    var handlers = EventHandlers()
    handlers.on(Mart_Order_V1_OrderPlaced.self) { received, connection in
      if poison.contains(received.event.orderNumber) {
        throw PoisonError(orderNumber: received.event.orderNumber)
      }
      if invalid.contains(received.event.orderNumber) {
        throw InvalidEvent("order \(received.event.orderNumber) can never be applied")
      }
      try await connection.query(
        """
        INSERT INTO effects (event_id, aggregate_id, order_number, consumer)
        VALUES (\(received.envelope.id), \(received.event.orderID), \(received.event.orderNumber), \(label))
        """, logger: TestBed.logger)
      if delay > .zero { try await Task.sleep(for: delay) }
    }
    return handlers
  }

  public struct PoisonError: Error, CustomStringConvertible {
    public var orderNumber: String
    public var description: String { "order \(orderNumber) always fails" }
  }

  public struct Effect: Sendable, Equatable {
    public var eventID: UUID
    public var aggregateID: String
    public var orderNumber: String
    public var consumer: String
  }

  /// Every effect in the order it was applied.
  public static func effects(_ client: PostgresClient) async throws -> [Effect] {
    let rows = try await client.query(
      "SELECT event_id, aggregate_id, order_number, consumer FROM effects ORDER BY seq", logger: TestBed.logger)
    var effects: [Effect] = []
    for try await (eventID, aggregateID, orderNumber, consumer) in rows.decode((UUID, String, String, String).self) {
      effects.append(Effect(eventID: eventID, aggregateID: aggregateID, orderNumber: orderNumber, consumer: consumer))
    }
    return effects
  }

  /// What is wrong with the CloudEvents binary-mode attributes of an OrderPlaced record the order
  /// service published; empty when everything is right.
  public static func cloudEventsProblems(
    _ record: ReceivedRecord, aggregateID: String, traceparent: String?
  ) throws -> [String] {
    let event = try Mart_Order_V1_OrderPlaced(serializedBytes: record.value)
    var problems: [String] = []
    func check(_ name: String, _ actual: String?, _ expected: String?) {
      if actual != expected { problems.append("\(name): \(actual ?? "nil") != \(expected ?? "nil")") }
    }
    check("topic", record.topic, "mart.orders.v1")
    check("key", record.key.map { String(decoding: $0, as: UTF8.self) }, aggregateID)
    check("ce_specversion", record.header("ce_specversion"), "1.0")
    check("ce_id", record.header("ce_id"), event.metadata.eventID)
    if UUID(uuidString: record.header("ce_id") ?? "") == nil { problems.append("ce_id is not a UUID") }
    check("ce_source", record.header("ce_source"), "/mart/order")
    check("ce_type", record.header("ce_type"), "mart.order.v1.OrderPlaced")
    check("ce_subject", record.header("ce_subject"), aggregateID)
    check("content-type", record.header("content-type"), "application/protobuf")
    check("ce_traceparent", record.header("ce_traceparent"), traceparent)
    check("traceparent", record.header("traceparent"), traceparent)
    let time = record.header("ce_time").flatMap {
      try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse($0)
    }
    if time.map({ abs($0.timeIntervalSinceNow) < 600 }) != true {
      problems.append("ce_time \(record.header("ce_time") ?? "nil") is not a recent RFC 3339 time")
    }
    return problems
  }

  /// The events in a service's outbox (of `type` only, a full name such as
  /// `mart.product.v1.ProductCreated`, if given), oldest first, with their payloads.
  public static func outboxEvents(_ client: PostgresClient, type: String? = nil) async throws -> [(
    type: String, payload: [UInt8]
  )] {
    let rows = try await client.query("SELECT event_type, payload FROM outbox ORDER BY id", logger: TestBed.logger)
    var events: [(type: String, payload: [UInt8])] = []
    for try await (eventType, payload) in rows.decode((String, ByteBuffer).self)
    where type.map({ $0 == eventType }) ?? true {
      events.append((eventType, Array(payload.readableBytesView)))
    }
    return events
  }

  public static func unpublishedCount(_ client: PostgresClient) async throws -> Int {
    let rows = try await client.query(
      "SELECT count(*)::int FROM outbox WHERE published_at IS NULL", logger: TestBed.logger)
    var count = 0
    for try await value in rows.decode(Int.self) { count = value }
    return count
  }
}

/// Runs `services` in a ServiceGroup while `body` runs, then shuts them down gracefully.
public func withServices(_ services: [any Service], _ body: () async throws -> Void) async throws {
  try await withServices(services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }, body)
}

/// `withServices` for services configured with their termination behaviours (`ServiceHost`'s).
public func withServices(
  _ services: [ServiceGroupConfiguration.ServiceConfiguration], _ body: () async throws -> Void
) async throws {
  let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: TestBed.logger))
  try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    do {
      try await body()
    } catch {
      await group.triggerGracefulShutdown()
      throw error
    }
    await group.triggerGracefulShutdown()
    try await tasks.waitForAll()
  }
}

extension TestBed {
  /// The test broker's address (`KAFKA_BROKERS`).
  public static func kafkaBrokers() throws -> String {
    guard let brokers = ProcessInfo.processInfo.environment["KAFKA_BROKERS"], !brokers.isEmpty else {
      throw NotConfigured(variable: "KAFKA_BROKERS")
    }
    return brokers
  }

  /// librdkafka settings for the test broker (`MART_KAFKA_PROPERTIES`, from the test bed).
  public static func kafkaProperties() throws -> [String: String] {
    try EnvironmentReader().keyValuePairs("MART_KAFKA_PROPERTIES")
  }

  /// A Kafka transport whose topics and groups carry `prefix`, so that tests sharing the
  /// broker never see each other's events.
  public static func kafkaTransport(
    prefix: String, brokers: String? = nil, properties extra: [String: String] = [:]
  ) throws -> KafkaEventTransport {
    try KafkaEventTransport(
      brokers: brokers ?? kafkaBrokers(), clientID: "test-\(prefix)", partitions: 4, topicPrefix: prefix,
      properties: try kafkaProperties().merging(extra) { _, new in new }, logger: logger)
  }

  /// A topic prefix of its own for one test.
  public static func uniquePrefix(_ label: String) -> String {
    "t\(UUID().uuidString.prefix(8).lowercased()).\(label)."
  }
}
