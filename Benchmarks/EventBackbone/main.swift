import Foundation
import Kafka
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import PostgresNIO
import ServiceLifecycle
import Synchronization

// Events per second and commit-to-handled latency through the whole backbone:
// writers commit state + event (outbox) → relay → Kafka → consumer (inbox + effect).
// Beside it, the raw librdkafka produce rate to the same broker (one of the two ceilings; the
// other, pgbench's insert commits per second, is measured by scripts/bench.sh).
//
// Environment: MART_TEST_DATABASE_URL, KAFKA_BROKERS, MART_KAFKA_PROPERTIES (from the test bed),
// BENCH_EVENTS (default 20000), BENCH_WRITERS (default 8), BENCH_PG_CEILING (commits/s, optional),
// BENCH_SECONDS (length of the paced run at half the flat-out rate, default 10).

let env = EnvironmentReader()
let logger: Logger = {
  var logger = Logger(label: "bench")
  logger.logLevel = .error
  return logger
}()
let events = try env.positiveInteger("BENCH_EVENTS", default: 20_000)
let writers = try env.positiveInteger("BENCH_WRITERS", default: 8)
let pacedSeconds = try env.positiveInteger("BENCH_SECONDS", default: 10)
let pgCeiling = Double(env.string("BENCH_PG_CEILING", default: "0")) ?? 0

func report(_ line: String) {
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

// MARK: ceiling: raw produce rate

func rawProduceRate() async throws -> Double {
  let configuration = KafkaConfiguration(
    bootstrapServers: try TestBed.kafkaBrokers(), clientID: "bench-raw",
    properties: try TestBed.kafkaProperties().merging(["linger.ms": "2"]) { _, new in new })
  let producer = try KafkaProducer(configuration: configuration, logger: logger)
  let topic = "bench.raw.\(UUID().uuidString.prefix(8))"
  let payload = [UInt8](repeating: 7, count: 200)
  let batch = 1000
  let start = ContinuousClock.now
  for offset in stride(from: 0, to: events, by: batch) {
    let messages = (offset..<min(offset + batch, events)).map {
      KafkaOutgoingMessage(topic: topic, key: Array("key-\($0 % 64)".utf8), value: payload)
    }
    for result in await producer.send(messages) { _ = try result.get() }
  }
  let elapsed = ContinuousClock.now - start
  await producer.shutdown()
  return Double(events) / elapsed.seconds
}

// MARK: the pipeline

/// Commit times and handled times by event, for latency.
final class Timings: Sendable {
  private let state = Mutex<(committed: [String: ContinuousClock.Instant], latencies: [Duration])>(([:], []))

  func committed(_ orderNumber: String) {
    let now = ContinuousClock.now
    state.withLock { $0.committed[orderNumber] = now }
  }

  func handled(_ orderNumber: String) {
    let now = ContinuousClock.now
    state.withLock { state in
      if let committed = state.committed.removeValue(forKey: orderNumber) {
        state.latencies.append(now - committed)
      }
    }
  }

  var handledCount: Int { state.withLock { $0.latencies.count } }
  var latencies: [Duration] { state.withLock { $0.latencies } }
}

struct PipelineResult {
  /// Commits per second of the writers alone (state + outbox row in one transaction).
  var writesPerSecond: Double
  var eventsPerSecond: Double
  var p50: Duration
  var p99: Duration
  var max: Duration
}

extension Duration {
  var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
  var milliseconds: String { String(format: "%.1f ms", seconds * 1000) }
}

/// Runs `total` events through the pipeline; `rate` paces the writers (events/s), nil = flat out.
func pipeline(total: Int, rate: Double?) async throws -> PipelineResult {
  try await ScratchDatabase.with("bench") { database in
    var configuration = database.configuration
    configuration.maximumConnections = writers + 8
    return try await withPostgresClient(configuration) { client in
      try await EventFixtures.migrate(client)
      let prefix = TestBed.uniquePrefix("bench")
      let transport = try TestBed.kafkaTransport(prefix: prefix)
      try await transport.prepareTopics([EventTopic.orders.name, EventTopic.orders.deadLetterName])
      let timings = Timings()
      var handlers = EventHandlers()
      handlers.on(Mart_Order_V1_OrderPlaced.self) { received, connection in
        try await connection.query(
          "INSERT INTO effects (event_id, aggregate_id, order_number) VALUES (\(received.envelope.id), \(received.event.orderID), \(received.event.orderNumber))",
          logger: logger)
        timings.handled(received.event.orderNumber)
      }
      let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: logger)
      let consumer = EventConsumer(
        definition: EventConsumerDefinition(name: "bench", topics: [.orders], handlers: handlers),
        service: .inventory, database: client, transport: transport, logger: logger)
      let outbox = Outbox(service: .order)

      var result: PipelineResult?
      try await withServices([transport, relay, consumer]) {
        // Warm up: the consumer joins its group before the clock starts.
        try await write(0, outbox: outbox, client: client, timings: timings)
        while timings.handledCount < 1 { try await Task.sleep(for: .milliseconds(20)) }

        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
          for writer in 0..<writers {
            group.addTask {
              var index = writer + 1
              var sent = 0
              while index <= total {
                if let rate {
                  // Each writer's share of the rate, on a fixed schedule (open loop).
                  let due = start + .seconds(Double(sent) * Double(writers) / rate)
                  if due > .now { try await Task.sleep(until: due, clock: .continuous) }
                }
                try await write(index, outbox: outbox, client: client, timings: timings)
                index += writers
                sent += 1
              }
            }
          }
          try await group.waitForAll()
        }
        let writing = ContinuousClock.now - start
        while timings.handledCount < total + 1 { try await Task.sleep(for: .milliseconds(5)) }
        let elapsed = ContinuousClock.now - start
        let latencies = timings.latencies.dropFirst().sorted()
        func percentile(_ p: Double) -> Duration { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        result = PipelineResult(
          writesPerSecond: Double(total) / writing.seconds, eventsPerSecond: Double(total) / elapsed.seconds, p50: percentile(0.50), p99: percentile(0.99),
          max: latencies.last ?? .zero)
      }
      guard let result else { throw EnvelopeError("no result") }
      return result
    }
  }
}

/// One writer transaction: a row of state and its event, committed together.
func write(_ index: Int, outbox: Outbox, client: PostgresClient, timings: Timings) async throws {
  let event = EventFixtures.orderPlaced(order: "order-\(index % 500)", number: index)
  _ = try await client.withTransaction(logger: logger) { connection in
    try await outbox.append(
      event, aggregateType: "order", aggregateID: event.orderID, on: connection, logger: logger)
  }
  timings.committed(event.orderNumber)
}

let produce = try await rawProduceRate()
report(String(format: "raw librdkafka produce: %.0f msgs/s (%d × 200 B, batches of 1000)", produce, events))
if pgCeiling > 0 { report(String(format: "pgbench insert commits (%d clients): %.0f/s", writers, pgCeiling)) }

let flatOut = try await pipeline(total: events, rate: nil)
report(
  String(
    format: "pipeline flat out (%d writers): %.0f events/s handled (writers committed %.0f/s), p50 %@, p99 %@, max %@",
    writers, flatOut.eventsPerSecond, flatOut.writesPerSecond, flatOut.p50.milliseconds, flatOut.p99.milliseconds, flatOut.max.milliseconds))

let ceiling = pgCeiling > 0 ? min(pgCeiling, produce) : produce
report(
  String(
    format: "pipeline / lower ceiling: %.0f%% (aim: at least 50%%)", flatOut.eventsPerSecond / ceiling * 100))

// Latency is read at half the load the pipeline sustains flat out, paced (open loop).
let halfLoad = flatOut.eventsPerSecond / 2
let paced = try await pipeline(total: Int(halfLoad) * pacedSeconds, rate: halfLoad)
report(
  String(
    format: "pipeline at half its flat-out rate (%.0f events/s offered for %d s): %.0f events/s, p50 %@, p99 %@, max %@",
    halfLoad, pacedSeconds, paced.eventsPerSecond, paced.p50.milliseconds, paced.p99.milliseconds,
    paced.max.milliseconds))
