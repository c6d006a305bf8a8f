import Kafka
import Logging
import ServiceLifecycle
import Synchronization

/// Events over Kafka: one idempotent producer per process (acks=all, per-key order kept across
/// retries) and one consumer-group member per subscription, committing only what was handled.
///
/// A producer that librdkafka declares unusable (a fatal error: fenced by the broker, or its
/// sequence lost) fails every later send, so it is replaced by a new one as soon as a publish
/// sees it; the relay's retry then sends the same outbox records through the new producer.
///
/// As a Service it creates the mart's topics and their dead-letter topics at start-up (retrying
/// while the broker is unreachable) and flushes the producer on shutdown; list it before the
/// services that publish, so that it stops after them.
public final class KafkaEventTransport: EventTransport, Service {
  public let configuration: KafkaConfiguration
  /// Put before every topic name on the broker, so that several environments (or tests) can
  /// share one cluster; the rest of the mart never sees it.
  public let topicPrefix: String
  /// The producer in use; replaced after a fatal error (`replaceProducer`).
  private let currentProducer: Mutex<KafkaProducer>
  private let producerConfiguration: KafkaConfiguration
  let partitions: Int
  let logger: Logger

  public init(
    brokers: String, clientID: String, partitions: Int = 6, topicPrefix: String = "",
    properties: [String: String] = [:], logger: Logger
  ) throws {
    self.topicPrefix = topicPrefix
    configuration = KafkaConfiguration(bootstrapServers: brokers, clientID: clientID, properties: properties)
    var producerConfiguration = configuration.forProducer
    // Batch a little: the relay sends a batch at once and awaits it, so this costs no latency.
    producerConfiguration.properties["linger.ms"] = properties["linger.ms"] ?? "2"
    // Fail a send after 10 s so that the relay reports and retries instead of waiting minutes.
    producerConfiguration.properties["message.timeout.ms"] = properties["message.timeout.ms"] ?? "10000"
    self.producerConfiguration = producerConfiguration
    currentProducer = Mutex(try KafkaProducer(configuration: producerConfiguration, logger: logger))
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

  /// The producer that sends now.
  public var producer: KafkaProducer { currentProducer.withLock { $0 } }

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
    let producer = self.producer
    let results = await producer.send(messages)
    if results.contains(where: { if case .failure = $0 { true } else { false } }), let fatal = producer.fatalError {
      replaceProducer(producer, after: fatal)
    }
    return results.map { result in result.map { _ in () }.mapError { $0 as any Error } }
  }

  /// Puts a new producer in the place of `failed`, unless another publish already did. Before
  /// this, a fenced producer (seen with Tansu after the broker stalled) failed every send for
  /// ever while the process reported itself healthy, and only a restart drained its outbox.
  private func replaceProducer(_ failed: KafkaProducer, after error: KafkaError) {
    let replaced = currentProducer.withLock { current -> Bool in
      guard current === failed else { return false }
      do {
        current = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        return true
      } catch {
        // The configuration built the first producer, so this is not expected; the next failed
        // publish tries again.
        logger.error("cannot create a new Kafka producer", metadata: ["error": "\(error)"])
        return false
      }
    }
    guard replaced else { return }
    logger.error(
      "the Kafka producer hit a fatal error; replaced it with a new one, and unsent events will be sent again",
      metadata: ["error": "\(error)", "kafka.client": "\(failed.name)"])
    // Its records have failed already (a fatal error fails everything it holds).
    Task { await failed.shutdown(flushTimeout: .zero) }
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
