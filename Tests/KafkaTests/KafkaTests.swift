import Foundation
import Kafka
import Logging
import MartTestSupport
import Testing

/// Against the test bed's real broker (Tansu, librdkafka 2.16 at run time).
@Suite struct KafkaTests {
  @Test func producedRecordArrivesIntactWithEveryHeader() async throws {
    let topic = Broker.unique("roundtrip")
    try await Broker.createTopic(topic)
    let headers = [
      KafkaHeader(name: "ce_type", text: "mart.order.v1.OrderPlaced"),
      KafkaHeader(name: "no-value", value: nil),
      KafkaHeader(name: "empty", value: []),
      KafkaHeader(name: "binary", value: [0, 1, 2, 255]),
      KafkaHeader(name: "ce_type", text: "repeated names keep their order"),
    ]
    let sent = KafkaOutgoingMessage(topic: topic, key: bytes("order-1"), value: [0, 42, 255, 7], headers: headers)

    let producer = try Broker.producer()
    let report = try await producer.send(sent)
    await producer.shutdown()
    #expect(report.topic == topic)
    #expect(report.partition == 0)
    #expect(report.offset == 0)

    let consumer = try Broker.consumer(group: Broker.unique("roundtrip"), topics: [topic])
    let sink = RecordSink()
    startReading(consumer, into: sink, commit: true)
    #expect(await eventually { sink.count >= 1 }, "no record arrived")
    await consumer.close()
    #expect(await eventually { sink.finished }, "the sequence did not end after close()")

    let record = try #require(sink.records.first)
    #expect(sink.errors.isEmpty)
    #expect(record.topic == topic)
    #expect(record.partition == report.partition)
    #expect(record.offset == report.offset)
    #expect(record.key == sent.key)
    #expect(record.value == sent.value)
    #expect(record.headers == headers)
    #expect(record.header("ce_type") == bytes("repeated names keep their order"))
    #expect(record.timestamp != nil)
  }

  @Test func recordsWithOneKeyArriveInOrderEvenWhenTheQueueIsFull() async throws {
    let topic = Broker.unique("order")
    try await Broker.createTopic(topic, partitions: 3)
    // A tiny local queue makes most records wait in the producer's backlog.
    let producer = try Broker.producer(["queue.buffering.max.messages": "7"])
    let messages = (0..<200).map { KafkaOutgoingMessage(topic: topic, key: bytes("same-key"), value: bytes("\($0)")) }
    let results = await producer.send(messages)
    await producer.shutdown()
    let reports = try results.map { try $0.get() }
    #expect(Set(reports.map(\.partition)).count == 1)
    #expect(reports.map(\.offset) == reports.map(\.offset).sorted())

    let consumer = try Broker.consumer(group: Broker.unique("order"), topics: [topic])
    let sink = RecordSink()
    startReading(consumer, into: sink, commit: false)
    #expect(await eventually { sink.count >= 200 }, "received \(sink.count) of 200")
    await consumer.close()
    #expect(sink.values == (0..<200).map { "\($0)" })
    #expect(sink.records.map(\.offset) == reports.map(\.offset))
  }

  @Test func aNewMemberResumesAfterTheLastCommittedRecord() async throws {
    let topic = Broker.unique("commit")
    let group = Broker.unique("commit")
    try await Broker.createTopic(topic)
    let producer = try Broker.producer()
    for result in await producer.send(
      (1...10).map { KafkaOutgoingMessage(topic: topic, value: bytes("message \($0)")) })
    {
      _ = try result.get()
    }
    await producer.shutdown()

    let first = try Broker.consumer(group: group, topics: [topic])
    let firstSink = RecordSink()
    startReading(first, into: firstSink, commit: false)
    #expect(await eventually { firstSink.count >= 10 }, "received \(firstSink.count) of 10")
    for (index, record) in firstSink.records.prefix(5).enumerated() {
      if index.isMultiple(of: 2) {
        try await first.commit(record)
      } else {
        try await first.commit(
          recordAt: record.offset, in: KafkaTopicPartition(topic: record.topic, partition: record.partition))
      }
    }
    await first.close()
    #expect(firstSink.values == (1...10).map { "message \($0)" })

    let second = try Broker.consumer(group: group, topics: [topic])
    let secondSink = RecordSink()
    startReading(second, into: secondSink, commit: true)
    #expect(await eventually { secondSink.count >= 5 }, "received \(secondSink.count) of 5")
    await second.close()
    #expect(secondSink.values == (6...10).map { "message \($0)" })
    #expect(secondSink.records.first?.offset == 5)
    #expect(firstSink.errors.isEmpty && secondSink.errors.isEmpty)
  }

  @Test func membersShareThePartitionsAndTheSurvivorTakesOver() async throws {
    let topic = Broker.unique("group")
    let group = Broker.unique("group")
    try await Broker.createTopic(topic, partitions: 4)
    let producer = try Broker.producer()
    func produce(_ label: String) async throws -> Set<String> {
      let messages = (0..<40).map {
        KafkaOutgoingMessage(topic: topic, value: bytes("\(label)-\($0)"), partition: Int32($0 % 4))
      }
      for result in await producer.send(messages) { _ = try result.get() }
      return Set(messages.map { String(decoding: $0.value, as: UTF8.self) })
    }

    let one = try Broker.consumer(group: group, topics: [topic])
    let two = try Broker.consumer(group: group, topics: [topic])
    let oneSink = RecordSink()
    let twoSink = RecordSink()
    startReading(one, into: oneSink, commit: true)
    startReading(two, into: twoSink, commit: true)
    let shared = await eventually {
      !one.assignment.isEmpty && !two.assignment.isEmpty && one.assignment.count + two.assignment.count == 4
    }
    #expect(shared, "assignments: \(one.assignment) and \(two.assignment)")
    #expect(Set(one.assignment).isDisjoint(with: two.assignment))

    let before = try await produce("before")
    #expect(await eventually { Set(oneSink.values + twoSink.values).isSuperset(of: before) })
    #expect(oneSink.count > 0 && twoSink.count > 0, "one got \(oneSink.count), two got \(twoSink.count)")

    await one.close()
    let after = try await produce("after")
    let tookOver = await eventually { Set(twoSink.values).isSuperset(of: after) }
    #expect(tookOver, "the survivor got \(after.intersection(twoSink.values).count) of \(after.count)")
    #expect(two.assignment.count == 4)
    await two.close()
    await producer.shutdown()
  }

  @Test func sendingToAnUnreachableBrokerFailsWithAKafkaError() async throws {
    var quiet = Logger(label: "kafka.test.unreachable")
    quiet.logLevel = .critical
    let configuration = KafkaConfiguration(
      bootstrapServers: "127.0.0.1:1", clientID: "unreachable", properties: ["message.timeout.ms": "2000"])
    let producer = try KafkaProducer(configuration: configuration, logger: quiet)
    let sending = Task { try await producer.send(KafkaOutgoingMessage(topic: "nowhere", value: bytes("lost"))) }
    #expect(await eventually { producer.pendingDeliveries == 1 })
    let flushError = await #expect(throws: KafkaError.self) { try await producer.flush(timeout: .milliseconds(200)) }
    #expect(flushError?.code == .timedOut)
    let error = await #expect(throws: KafkaError.self) { try await sending.value }
    #expect(error?.code == .messageTimedOut)
    await producer.shutdown()
    await #expect(throws: KafkaError.self) {
      try await producer.send(KafkaOutgoingMessage(topic: "nowhere", value: bytes("after shutdown")))
    }
  }

  @Test func cancellingAWaitingNextLeavesTheConsumerUsable() async throws {
    let topic = Broker.unique("cancel")
    try await Broker.createTopic(topic)
    let consumer = try Broker.consumer(group: Broker.unique("cancel"), topics: [topic])
    let waiting = Task { try await consumer.next() }
    #expect(await eventually { !consumer.assignment.isEmpty }, "never joined the group")
    waiting.cancel()
    await #expect(throws: CancellationError.self) { try await waiting.value }

    let producer = try Broker.producer()
    _ = try await producer.send(KafkaOutgoingMessage(topic: topic, value: bytes("after cancel")))
    await producer.shutdown()
    let sink = RecordSink()
    startReading(consumer, into: sink, commit: true)
    #expect(await eventually { sink.count >= 1 }, "no record after the cancellation")
    await consumer.close()
    #expect(await eventually { sink.finished })
    #expect(sink.values == ["after cancel"])
    #expect(try await consumer.next() == nil)
    await #expect(throws: KafkaError.self) { try await consumer.commit(#require(sink.records.first)) }
  }

  @Test func ensureTopicsCreatesMissingTopicsAndIsIdempotent() async throws {
    let name = Broker.unique("admin")
    let configuration = try Broker.configuration("admin-test")
    let spec = KafkaTopicSpec(name: name, partitions: 3, config: ["retention.ms": "3600000"])
    try await KafkaAdmin.ensureTopics([spec], configuration: configuration, logger: Broker.logger)
    try await KafkaAdmin.ensureTopics([spec], configuration: configuration, logger: Broker.logger)
    let topics = try await KafkaAdmin.listTopics(configuration: configuration, logger: Broker.logger)
    #expect(topics.first(where: { $0.name == name })?.partitions == 3)
  }

  /// One set of properties serves a process's producer and consumers: the producer is not
  /// given the consumer's (librdkafka would warn about each at every start).
  @Test func aProducerIsNotGivenConsumerProperties() throws {
    let shared = KafkaConfiguration(
      bootstrapServers: "127.0.0.1:1",
      properties: [
        "session.timeout.ms": "6000", "heartbeat.interval.ms": "500", "fetch.wait.max.ms": "20",
        "linger.ms": "5", "topic.metadata.refresh.interval.ms": "2000",
      ])
    #expect(shared.forProducer.properties == ["linger.ms": "5", "topic.metadata.refresh.interval.ms": "2000"])
    #expect(shared.forProducer.bootstrapServers == shared.bootstrapServers)
    _ = try KafkaProducer(configuration: shared.forProducer)
  }

  @Test func rejectedPropertiesAreNamed() throws {
    let configuration = KafkaConfiguration(bootstrapServers: "127.0.0.1:1", properties: ["no.such.property": "1"])
    let unknown = #expect(throws: KafkaConfigurationError.self) { try configuration.validate() }
    #expect(unknown?.property == "no.such.property")
    let invalid = #expect(throws: KafkaConfigurationError.self) {
      try KafkaProducer(
        configuration: KafkaConfiguration(bootstrapServers: "127.0.0.1:1", properties: ["acks": "sometimes"]))
    }
    #expect(invalid?.property == "acks")
  }
}
