import Foundation
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import PostgresNIO
import ServiceLifecycle
import Testing

/// Outbox → relay → transport → consumer → inbox, with the in-process transport and real
/// PostgreSQL. The same suite runs over Kafka in KafkaEventTransportTests.
@Suite struct EventPipelineTests {
  static let fastRetry = MartCore.RetryPolicy(
    maximumAttempts: 3, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(50))

  @Test func everyEventIsAppliedOnceInOrderPerAggregate() async throws {
    try await ScratchDatabase.with("pipeline") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        // Two aggregates, interleaved.
        let events = (1...40).map { EventFixtures.orderPlaced(order: $0 % 2 == 0 ? "even" : "odd", number: $0) }
        try await EventFixtures.append(events, to: client)

        let consumer = EventConsumer(
          definition: EventConsumerDefinition(
            name: "recorder", topics: [.orders], handlers: EventFixtures.recordingHandlers()),
          service: .inventory, database: client, transport: transport, retry: Self.fastRetry,
          logger: TestBed.logger)
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        try await withServices([relay, consumer]) {
          #expect(await eventually { try await EventFixtures.effects(client).count == 40 })
          // Written while running, too: the relay wakes on NOTIFY.
          try await EventFixtures.append([EventFixtures.orderPlaced(order: "odd", number: 41)], to: client)
          #expect(await eventually { try await EventFixtures.effects(client).count == 41 })
        }
        let effects = try await EventFixtures.effects(client)
        #expect(Set(effects.map(\.eventID)).count == 41)
        for aggregate in ["even", "odd"] {
          let numbers = effects.filter { $0.aggregateID == aggregate }.compactMap { Int($0.orderNumber) }
          #expect(numbers == numbers.sorted())
        }
        #expect(try await EventFixtures.unpublishedCount(client) == 0)
      }
    }
  }

  @Test func aRedeliveredEventHasNoSecondEffect() async throws {
    try await ScratchDatabase.with("redelivery") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        let consumer = EventConsumer(
          definition: EventConsumerDefinition(
            name: "recorder", topics: [.orders], handlers: EventFixtures.recordingHandlers()),
          service: .inventory, database: client, transport: transport, retry: Self.fastRetry,
          logger: TestBed.logger)
        let envelope = EventEnvelope(
          id: UUID(), type: Mart_Order_V1_OrderPlaced.protoMessageName, source: "/mart/order", subject: "o-1",
          time: Date(), topic: EventTopic.orders.name,
          payload: try EventFixtures.orderPlaced(order: "o-1", number: 1).serializedBytes())
        // The same event three times, as a broker may redeliver it.
        _ = await transport.publish(Array(repeating: OutgoingRecord(envelope), count: 3))
        // A later event proves the duplicates were consumed, not merely pending.
        var next = envelope
        next.id = UUID()
        try await withServices([consumer]) {
          #expect(await eventually { try await EventFixtures.effects(client).count == 1 })
          _ = await transport.publish([OutgoingRecord(next)])
          #expect(await eventually { try await EventFixtures.effects(client).count == 2 })
        }
        #expect(try await EventFixtures.effects(client).map(\.eventID) == [envelope.id, next.id])
      }
    }
  }

  @Test func poisonEventsAreDeadLetteredAndTheRestFlows() async throws {
    try await ScratchDatabase.with("poison") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        let consumer = EventConsumer(
          definition: EventConsumerDefinition(
            name: "recorder", topics: [.orders], handlers: EventFixtures.recordingHandlers(poison: ["2"])),
          service: .inventory, database: client, transport: transport, retry: Self.fastRetry,
          logger: TestBed.logger)
        let dlq = try await transport.subscribe(group: "test.dlq-reader", topics: [EventTopic.orders.deadLetterName])

        let good = EventEnvelope(
          id: UUID(), type: Mart_Order_V1_OrderPlaced.protoMessageName, source: "/mart/order", subject: "o",
          time: Date(), topic: EventTopic.orders.name,
          payload: try EventFixtures.orderPlaced(order: "o", number: 1).serializedBytes())
        var failing = good
        failing.id = UUID()
        failing.payload = try EventFixtures.orderPlaced(order: "o", number: 2).serializedBytes()
        var unknownType = good
        unknownType.id = UUID()
        unknownType.type = "mart.order.v1.OrderTeleported"
        var garbage = OutgoingRecord(good)
        garbage.value = [0xFF, 0xFF, 0xFF]
        garbage.headers = garbage.headers.map { $0.name == "ce_id" ? EventHeader("ce_id", UUID().uuidString) : $0 }
        let noHeaders = OutgoingRecord(topic: EventTopic.orders.name, key: nil, value: [1, 2, 3], headers: [])
        var last = good
        last.id = UUID()
        last.payload = try EventFixtures.orderPlaced(order: "o", number: 3).serializedBytes()

        _ = await transport.publish([
          OutgoingRecord(good), OutgoingRecord(failing), OutgoingRecord(unknownType), garbage, noHeaders,
          OutgoingRecord(last),
        ])
        try await withServices([consumer]) {
          #expect(await eventually { try await EventFixtures.effects(client).count == 2 })
        }
        #expect(try await EventFixtures.effects(client).map(\.orderNumber) == ["1", "3"])

        var deadLetters: [ReceivedRecord] = []
        for _ in 0..<4 {
          guard let record = try await dlq.next() else { break }
          deadLetters.append(record)
        }
        #expect(deadLetters.count == 4)
        let handlerFailure = try #require(deadLetters.first)
        #expect(handlerFailure.value == failing.payload)
        #expect(handlerFailure.header(DeadLetterHeader.attempts) == "3")
        #expect(handlerFailure.header(DeadLetterHeader.error)?.contains("always fails") == true)
        #expect(handlerFailure.header(DeadLetterHeader.originalTopic) == EventTopic.orders.name)
        #expect(handlerFailure.header(DeadLetterHeader.originalOffset) == "1")
        #expect(handlerFailure.header(DeadLetterHeader.consumer) == "inventory.recorder")
        #expect(handlerFailure.header("ce_id") == failing.id.uuidString.lowercased())
        #expect(deadLetters[1].header(DeadLetterHeader.error)?.contains("unknown event type") == true)
        #expect(deadLetters[1].header(DeadLetterHeader.attempts) == "0")
        #expect(deadLetters[2].header(DeadLetterHeader.error)?.contains("undecodable") == true)
        #expect(deadLetters[3].header(DeadLetterHeader.error)?.contains("unreadable envelope") == true)

        // Redrive: the event goes back to its topic without the dead-letter headers.
        let redriven = try #require(DeadLetterRedrive.redriven(handlerFailure))
        #expect(redriven.topic == EventTopic.orders.name)
        #expect(redriven.headers == OutgoingRecord(failing).headers)
        await dlq.close()
      }
    }
  }

  @Test func twoRelaysOfOneServicePublishEachRowOnceInOrder() async throws {
    try await ScratchDatabase.with("relays") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        let reader = try await transport.subscribe(group: "test.reader", topics: [EventTopic.orders.name])
        let relays: [any Service] = (0..<2).map { _ in
          OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        }
        try await withServices(relays) {
          try await withThrowingTaskGroup(of: Void.self) { writers in
            for writer in 0..<4 {
              writers.addTask {
                try await EventFixtures.append(
                  (0..<50).map { EventFixtures.orderPlaced(order: "w\(writer)", number: $0) }, to: client)
              }
            }
            try await writers.waitForAll()
          }
          #expect(await eventually { try await EventFixtures.unpublishedCount(client) == 0 })
        }
        var received: [Mart_Order_V1_OrderPlaced] = []
        for _ in 0..<200 {
          guard let record = try await reader.next() else { break }
          received.append(try Mart_Order_V1_OrderPlaced(serializedBytes: record.value))
        }
        #expect(Set(received.map(\.metadata.eventID)).count == 200)
        for writer in 0..<4 {
          let numbers = received.filter { $0.orderID == "w\(writer)" }.compactMap { Int($0.orderNumber) }
          #expect(numbers == Array(0..<50))
        }
        await reader.close()
      }
    }
  }

  @Test func theEnvelopeCarriesEveryCloudEventsAttribute() async throws {
    try await ScratchDatabase.with("envelope") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        let reader = try await transport.subscribe(group: "test.reader", topics: [EventTopic.orders.name])
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try await RequestContext.$requestID.withValue("req-7") {
          try await RequestContext.$traceparent.withValue(traceparent) {
            try await EventFixtures.append([EventFixtures.orderPlaced(order: "o-9", number: 9)], to: client)
          }
        }
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        try await withServices([relay]) {
          #expect(await eventually { try await EventFixtures.unpublishedCount(client) == 0 })
        }
        let record = try #require(try await reader.next())
        let problems = try EventFixtures.cloudEventsProblems(record, aggregateID: "o-9", traceparent: traceparent)
        #expect(problems.isEmpty, "\(problems)")
        let event = try Mart_Order_V1_OrderPlaced(serializedBytes: record.value)
        #expect(event.metadata.correlationID == "req-7")
        #expect(event.metadata.producer == "order")
        await reader.close()
      }
    }
  }
}
