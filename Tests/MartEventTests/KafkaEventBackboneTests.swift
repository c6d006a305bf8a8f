import Foundation
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import PostgresNIO
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The event backbone against the real broker (Tansu) and real PostgreSQL. Each test has topics
/// and groups of its own (a topic prefix), so the tests can share one broker.
@Suite struct KafkaEventBackboneTests {
  static let fastRetry = MartCore.RetryPolicy(
    maximumAttempts: 3, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100))

  func consumer(
    _ name: String, on transport: any EventTransport, database: PostgresClient, label: String = "",
    poison: Set<String> = [], invalid: Set<String> = []
  ) -> EventConsumer {
    EventConsumer(
      definition: EventConsumerDefinition(
        name: name, topics: [.orders],
        handlers: EventFixtures.recordingHandlers(poison: poison, invalid: invalid, label: label)),
      service: .inventory, database: database, transport: transport, retry: Self.fastRetry, logger: TestBed.logger)
  }

  @Test func publishConsumeRoundTripCarriesEveryHeader() async throws {
    let transport = try TestBed.kafkaTransport(prefix: TestBed.uniquePrefix("roundtrip"))
    try await ScratchDatabase.with("kafka_roundtrip") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try await RequestContext.$traceparent.withValue(traceparent) {
          try await EventFixtures.append([EventFixtures.orderPlaced(order: "order-42", number: 1)], to: client)
        }
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        let reader = try await transport.subscribe(group: "reader", topics: [EventTopic.orders.name])
        try await withServices([transport, relay]) {
          let record = try #require(try await reader.next())
          let problems = try EventFixtures.cloudEventsProblems(
            record, aggregateID: "order-42", traceparent: traceparent)
          #expect(problems.isEmpty, "\(problems)")
          try await reader.commit(record)
        }
        await reader.close()
        #expect(try await EventFixtures.unpublishedCount(client) == 0)
      }
    }
  }

  /// A producer that librdkafka declares unusable (here: fenced, as Tansu did after a stall in
  /// the chaos run) is replaced, and the outbox still drains through the relay's retry. Before,
  /// every later publish failed for ever.
  @Test func aFencedProducerIsReplacedAndTheOutboxStillDrains() async throws {
    let transport = try TestBed.kafkaTransport(prefix: TestBed.uniquePrefix("fenced"))
    try await ScratchDatabase.with("kafka_fenced") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        let reader = try await transport.subscribe(group: "reader", topics: [EventTopic.orders.name])
        try await withServices([transport, relay]) {
          try await EventFixtures.append([EventFixtures.orderPlaced(order: "order-1", number: 1)], to: client)
          try #require(await eventually { try await EventFixtures.unpublishedCount(client) == 0 })
          let fenced = transport.producer
          fenced.raiseFatalErrorForTesting(.producerFenced, reason: "fenced by a newer producer")
          #expect(fenced.fatalError?.code == .producerFenced)
          try await EventFixtures.append([EventFixtures.orderPlaced(order: "order-2", number: 2)], to: client)
          try #require(await eventually { try await EventFixtures.unpublishedCount(client) == 0 })
          #expect(transport.producer !== fenced)
          #expect(transport.producer.fatalError == nil)
          // Both reached the broker.
          var seen: Set<[UInt8]> = []
          while seen.count < 2, let record = try await reader.next() { seen.insert(record.key ?? []) }
          #expect(seen == [Array("order-1".utf8), Array("order-2".utf8)])
        }
        await reader.close()
      }
    }
  }

  @Test func eventsWrittenWhileTheBrokerIsDownAreDeliveredOnceInOrder() async throws {
    let port = try freePort()
    let brokers = "127.0.0.1:\(port)"
    let prefix = TestBed.uniquePrefix("down")
    try await ScratchDatabase.with("kafka_down") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        // Nothing listens on the port yet: the relay cannot publish.
        // Slow reconnects and quiet connect errors: librdkafka otherwise logs a refused connection
        // many times a second, and that flood of output has been seen to stall the test run.
        let transport = try TestBed.kafkaTransport(
          prefix: prefix, brokers: brokers,
          properties: [
            "message.timeout.ms": "3000"
          ])
        // The relay's failed attempts, counted from its log: wait for one, not for time.
        let failedAttempts = Mutex(0)
        let sink = TextOutputStreamSink { line in
          if line.contains("outbox relay cannot publish") { failedAttempts.withLock { $0 += 1 } }
        }
        let relayLogger = Logger(label: "mart.test") {
          JSONLogHandler(label: $0, service: "order", level: .warning, stream: sink)
        }
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: relayLogger)
        let events = (0..<30).map { EventFixtures.orderPlaced(order: "agg-\($0 % 3)", number: $0) }
        try await withServices([transport, relay]) {
          try await EventFixtures.append(events, to: client)
          #expect(await eventually(attempts: 600) { failedAttempts.withLock { $0 } >= 1 })
          #expect(try await EventFixtures.unpublishedCount(client) == 30)

          // The broker comes up: everything kept in the outbox goes out.
          let broker = try TansuBroker.start(port: port)
          defer { broker.stop() }
          #expect(await eventually(attempts: 600) { try await EventFixtures.unpublishedCount(client) == 0 })

          let consumer = consumer("after-outage", on: transport, database: client)
          try await withServices([consumer]) {
            #expect(await eventually(attempts: 600) { try await EventFixtures.effects(client).count >= 30 })
          }
        }
        let effects = try await EventFixtures.effects(client)
        #expect(effects.count == 30)
        #expect(Set(effects.map(\.eventID)).count == 30)
        for aggregate in 0..<3 {
          let numbers = effects.filter { $0.aggregateID == "agg-\(aggregate)" }.compactMap { Int($0.orderNumber) }
          #expect(numbers == numbers.sorted() && numbers.count == 10)
        }
      }
    }
  }

  @Test func aConsumerKilledMidBatchLeavesEachEffectSingle() async throws {
    let prefix = TestBed.uniquePrefix("kill")
    let transport = try TestBed.kafkaTransport(prefix: prefix)
    try await ScratchDatabase.with("kafka_kill") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let count = 300
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        try await withServices([transport, relay]) {
          try await EventFixtures.append(
            (0..<count).map { EventFixtures.orderPlaced(order: "o\($0 % 7)", number: $0) }, to: client)
          #expect(await eventually(attempts: 600) { try await EventFixtures.unpublishedCount(client) == 0 })
        }

        let config = database.configuration
        let environment = [
          "MART_PROBE_DATABASE_URL": "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)",
          "MART_KAFKA_TOPIC_PREFIX": prefix, "MART_PROBE_DELAY_MS": "10", "MART_LOG_LEVEL": "error",
        ]
        let first = try ChildProcess.probe(environment: environment)
        #expect(await eventually(attempts: 1200) { try await EventFixtures.effects(client).count >= 40 })
        first.signal(SIGKILL)
        _ = await first.waitForExit()
        let appliedBeforeKill = try await EventFixtures.effects(client).count
        #expect(appliedBeforeKill < count, "the probe finished before it could be killed")

        let second = try ChildProcess.probe(environment: environment)
        #expect(await eventually(attempts: 1200) { try await EventFixtures.effects(client).count >= count })
        // One end marker per order, so on every partition the events used: a duplicate the second
        // probe was redelivered comes before its partition's marker, so once every marker is
        // applied every duplicate has been seen. Waiting on the markers, not on time.
        let aggregates = 7
        let markers = (0..<aggregates).map { EventFixtures.orderPlaced(order: "o\($0)", number: count + $0) }
        let markerTransport = try TestBed.kafkaTransport(prefix: prefix)
        let markerRelay = OutboxRelay(
          service: .order, database: client, transport: markerTransport, logger: TestBed.logger)
        try await withServices([markerTransport, markerRelay]) {
          try await EventFixtures.append(markers, to: client)
          #expect(
            await eventually(attempts: 1200) {
              try await EventFixtures.effects(client).count >= count + aggregates
            })
        }
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0, "\(second.standardError.suffix(1500))")

        let effects = try await EventFixtures.effects(client)
        #expect(effects.count == count + aggregates)
        #expect(Set(effects.map(\.eventID)).count == count + aggregates)
      }
    }
  }

  @Test func aPoisonEventIsDeadLetteredTheRestFlowsAndRedriveReturnsIt() async throws {
    let prefix = TestBed.uniquePrefix("poison")
    let transport = try TestBed.kafkaTransport(prefix: prefix)
    try await ScratchDatabase.with("kafka_poison") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        try await EventFixtures.append(
          (1...5).map { EventFixtures.orderPlaced(order: "same-order", number: $0) }, to: client)
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        let poisoned = consumer("poisoned", on: transport, database: client, poison: ["3"], invalid: ["4"])
        try await withServices([transport, relay, poisoned]) {
          // 3 fails every time and 4 is invalid; 5, after them on the same partition, is still handled.
          #expect(await eventually(attempts: 600) { try await EventFixtures.effects(client).count == 3 })
        }
        #expect(try await EventFixtures.effects(client).map(\.orderNumber) == ["1", "2", "5"])

        let dlq = try await transport.subscribe(group: "dlq-reader", topics: [EventTopic.orders.deadLetterName])
        let dead = try #require(try await dlq.next())
        #expect(try Mart_Order_V1_OrderPlaced(serializedBytes: dead.value).orderNumber == "3")
        #expect(dead.header(DeadLetterHeader.attempts) == "3")
        // An invalid event is not retried: dead-lettered after its one attempt.
        let invalid = try #require(try await dlq.next())
        #expect(try Mart_Order_V1_OrderPlaced(serializedBytes: invalid.value).orderNumber == "4")
        #expect(invalid.header(DeadLetterHeader.attempts) == "1")
        #expect(dead.header(DeadLetterHeader.originalTopic) == EventTopic.orders.name)
        #expect(dead.header(DeadLetterHeader.originalOffset) != nil)
        #expect(dead.header(DeadLetterHeader.error)?.contains("always fails") == true)
        await dlq.close()

        // Redrive with the command an operator would use; a healthy consumer then applies it.
        let redrive = try ChildProcess.mart(
          ["events", "redrive", EventTopic.orders.deadLetterName, "--wait", "8s"],
          environment: ["MART_KAFKA_TOPIC_PREFIX": prefix, "MART_LOG_LEVEL": "error"])
        #expect(await redrive.waitForExit() == 0, "\(redrive.standardError.suffix(1500))")
        #expect(redrive.standardOutput.contains("redrove 2 event(s)"))
        let healthy = consumer("healed", on: transport, database: client, label: "healed")
        try await withServices([healthy]) {
          #expect(
            await eventually(attempts: 600) {
              try await EventFixtures.effects(client).filter { $0.consumer == "healed" }.count == 5
            })
        }
        #expect(try await EventFixtures.effects(client).filter { $0.consumer == "healed" }.count == 5)
      }
    }
  }

  @Test func twoConsumersShareTheTopicAndOneTakesOverWhenTheOtherLeaves() async throws {
    let prefix = TestBed.uniquePrefix("group")
    try await ScratchDatabase.with("kafka_group") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let publisher = try TestBed.kafkaTransport(prefix: prefix)
        // Create the topic with 4 partitions before anyone subscribes.
        try await publisher.prepareTopics([EventTopic.orders.name, EventTopic.orders.deadLetterName])
        let relay = OutboxRelay(service: .order, database: client, transport: publisher, logger: TestBed.logger)
        // Separate transports: two members of one consumer group, as two processes would be.
        let first = consumer("shared", on: try TestBed.kafkaTransport(prefix: prefix), database: client, label: "a")
        let second = consumer("shared", on: try TestBed.kafkaTransport(prefix: prefix), database: client, label: "b")
        let batch1 = (0..<200).map { EventFixtures.orderPlaced(order: "key-\($0)", number: $0) }
        let batch2 = (200..<300).map { EventFixtures.orderPlaced(order: "key-\($0)", number: $0) }

        try await withServices([publisher, relay, second]) {
          try await withServices([first]) {
            try await EventFixtures.append(batch1, to: client)
            #expect(await eventually(attempts: 900) { try await EventFixtures.effects(client).count >= 200 })
          }
          // `first` has left the group; everything from now on is `second`'s.
          try await EventFixtures.append(batch2, to: client)
          #expect(await eventually(attempts: 900) { try await EventFixtures.effects(client).count >= 300 })
        }
        let effects = try await EventFixtures.effects(client)
        #expect(effects.count == 300)
        #expect(Set(effects.map(\.eventID)).count == 300)
        let firstShare = effects.prefix(200).filter { $0.consumer == "a" }.count
        #expect(firstShare > 0 && firstShare < 200, "both members should have had partitions (a: \(firstShare))")
        #expect(effects.suffix(100).allSatisfy { $0.consumer == "b" })
      }
    }
  }
}

extension ChildProcess {
  /// The EventProbe consumer process (built beside `mart`).
  static func probe(environment: [String: String]) throws -> ChildProcess {
    var merged = ProcessInfo.processInfo.environment
    merged.merge(environment) { _, new in new }
    return try ChildProcess(
      martBinary().deletingLastPathComponent().appendingPathComponent("EventProbe"), [], environment: merged)
  }
}

/// A Tansu broker of the test's own, on a given port (to bring a broker up mid-test).
final class TansuBroker: Sendable {
  let process: ChildProcess

  private init(process: ChildProcess) {
    self.process = process
  }

  static func start(port: Int) throws -> TansuBroker {
    guard let binary = ProcessInfo.processInfo.environment["MART_TANSU_BIN"], !binary.isEmpty else {
      throw TestBed.NotConfigured(variable: "MART_TANSU_BIN")
    }
    let url = "tcp://127.0.0.1:\(port)"
    return TansuBroker(
      process: try ChildProcess(
        URL(fileURLWithPath: binary),
        ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        environment: ProcessInfo.processInfo.environment))
  }

  func stop() {
    process.signal(SIGKILL)
  }
}
