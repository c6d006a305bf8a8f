import Kafka
import Logging
import ServiceLifecycle

/// Events over Kafka: one idempotent producer per process (acks=all, per-key order kept across
/// retries) and one consumer-group member per subscription, committing only what was handled.
///
/// As a Service it creates the mart's topics and their dead-letter topics at start-up (retrying
/// while the broker is unreachable) and flushes the producer on shutdown; list it before the
/// services that publish, so that it stops after them.
public final class KafkaEventTransport: EventTransport, Service {
  public let configuration: KafkaConfiguration
  /// Put before every topic name on the broker, so that several environments (or tests) can
  /// share one cluster; the rest of the mart never sees it.
  public let topicPrefix: String
  let producer: KafkaProducer
  let partitions: Int
  let logger: Logger

  public init(
    brokers: String, clientID: String, partitions: Int = 6, topicPrefix: String = "",
    properties: [String: String] = [:], logger: Logger
  ) throws {
    self.topicPrefix = topicPrefix
    configuration = KafkaConfiguration(bootstrapServers: brokers, clientID: clientID, properties: properties)
    var producerConfiguration = configuration
    // Batch a little: the relay sends a batch at once and awaits it, so this costs no latency.
    producerConfiguration.properties["linger.ms"] = properties["linger.ms"] ?? "2"
    // Fail a send after 10 s so that the relay reports and retries instead of waiting minutes.
    producerConfiguration.properties["message.timeout.ms"] = properties["message.timeout.ms"] ?? "10000"
    producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
    self.partitions = partitions
    self.logger = logger
  }

  public func run() async throws {
    var failures = 0
    while !Task.isShuttingDownGracefully, !Task.isCancelled {
      do {
        try await prepareTopics(EventTopic.allNames)
        break
      } catch {
        failures += 1
        logger.warning(
          "cannot create the event topics yet; retrying", metadata: ["error": "\(error)", "attempt": "\(failures)"])
        let delay = Duration.seconds(min(failures, 10))
        try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
      }
    }
    try? await gracefulShutdown()
    await shutdown()
  }

  /// Flushes what is in flight and closes the producer (for one-off commands that do not run it).
  public func shutdown() async {
    await producer.shutdown()
  }

  public func prepareTopics(_ names: [String]) async throws {
    try await KafkaAdmin.ensureTopics(
      names.map { KafkaTopicSpec(name: topicPrefix + $0, partitions: Int32(partitions)) }, configuration: configuration,
      logger: logger)
  }

  public func publish(_ records: [OutgoingRecord]) async -> [Result<Void, any Error>] {
    let messages = records.map { record in
      KafkaOutgoingMessage(
        topic: topicPrefix + record.topic, key: record.key, value: record.value,
        headers: record.headers.map { KafkaHeader(name: $0.name, value: $0.value) })
    }
    return await producer.send(messages).map { result in result.map { _ in () }.mapError { $0 as any Error } }
  }

  public func subscribe(group: String, topics: [String]) async throws -> any EventSubscription {
    // A consumer that subscribes to a topic before it exists learns of it only at its next
    // metadata refresh (librdkafka: every 5 minutes by default), so make sure it exists first.
    try await prepareTopics(topics)
    return Subscription(
      consumer: try KafkaConsumer(
        configuration: configuration, groupID: topicPrefix + group, topics: topics.map { topicPrefix + $0 },
        // Handlers are idempotent (the inbox), so a commit need not hold up the next record.
        waitForCommits: false, logger: logger),
      topicPrefix: topicPrefix)
  }

  private final class Subscription: EventSubscription {
    let consumer: KafkaConsumer
    let topicPrefix: String

    init(consumer: KafkaConsumer, topicPrefix: String) {
      self.consumer = consumer
      self.topicPrefix = topicPrefix
    }

    func next() async throws -> ReceivedRecord? {
      guard let record = try await consumer.next() else { return nil }
      return ReceivedRecord(
        topic: String(record.topic.dropFirst(topicPrefix.count)), partition: record.partition, offset: record.offset,
        key: record.key, value: record.value, headers: record.headers.map { EventHeader($0.name, $0.value) },
        lag: record.highWatermark.map { max(0, $0 - record.offset - 1) })
    }

    func commit(_ record: ReceivedRecord) async throws {
      try await consumer.commit(
        recordAt: record.offset, in: KafkaTopicPartition(topic: topicPrefix + record.topic, partition: record.partition)
      )
    }

    func close() async {
      await consumer.close()
    }
  }
}
