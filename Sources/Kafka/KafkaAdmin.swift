internal import CRdKafka
import Logging

/// Topic administration. Each call uses a short-lived client of its own and runs librdkafka's
/// blocking calls on a dedicated thread, off Swift concurrency's pool.
public enum KafkaAdmin {
  /// Creates the topics that do not exist yet (`rd_kafka_CreateTopics`). A topic that exists
  /// already counts as success, whatever its partition count or configuration: this makes sure
  /// topics exist, it does not reconcile them. Safe to call at every start-up, from several
  /// processes at once.
  /// - Throws: `KafkaError` for the first topic the cluster refused, or `_TIMED_OUT` when the
  ///   cluster did not answer within `timeout`.
  public static func ensureTopics(
    _ specs: [KafkaTopicSpec], configuration: KafkaConfiguration, timeout: Duration = .seconds(30),
    logger: Logger = Logger(label: "kafka.admin")
  ) async throws {
    guard !specs.isEmpty else { return }
    try await withAdminClient(configuration: configuration, logger: logger) { handle in
      try createTopics(specs, handle: handle, timeout: timeout, logger: logger)
    }
  }

  /// The topics the cluster's metadata lists (internal ones such as `__consumer_offsets`
  /// included), sorted by name.
  /// - Throws: `KafkaError`, e.g. `_TIMED_OUT` or `_TRANSPORT` when the cluster is unreachable.
  public static func listTopics(
    configuration: KafkaConfiguration, timeout: Duration = .seconds(30), logger: Logger = Logger(label: "kafka.admin")
  ) async throws -> [KafkaTopicMetadata] {
    try await withAdminClient(configuration: configuration, logger: logger) { handle in
      var metadata: UnsafePointer<rd_kafka_metadata>? = nil
      let error = rd_kafka_metadata(handle, 1, nil, &metadata, timeout.milliseconds)
      guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { throw KafkaError(error) }
      defer { rd_kafka_metadata_destroy(metadata) }
      let count = Int(max(0, metadata.pointee.topic_cnt))
      guard count > 0, let topics = metadata.pointee.topics else { return [] }
      return (0..<count).compactMap { index -> KafkaTopicMetadata? in
        let topic = topics[index]
        guard topic.err == RD_KAFKA_RESP_ERR_NO_ERROR, let name = topic.topic else { return nil }
        return KafkaTopicMetadata(name: String(cString: name), partitions: topic.partition_cnt)
      }.sorted { $0.name < $1.name }
    }
  }

  /// Runs `body` with a fresh client handle on a dedicated thread, destroying it afterwards.
  private static func withAdminClient<Result: Sendable>(
    configuration: KafkaConfiguration, logger: Logger, _ body: @escaping @Sendable (OpaquePointer) throws -> Result
  ) async throws -> Result {
    try await DedicatedThread.run(name: "kafka-admin") {
      let conf = try configuration.makeConf(
        defaults: [("log_level", String(syslogLevel(for: logger.logLevel)))], required: [])
      let (handle, context) = try RdKafkaClient.make(
        RD_KAFKA_PRODUCER, conf: conf, target: AdminCallbacks(logger: logger))
      defer {
        rd_kafka_destroy(handle.pointer)
        context.release()
      }
      return try body(handle.pointer)
    }
  }

  private static func createTopics(
    _ specs: [KafkaTopicSpec], handle: OpaquePointer, timeout: Duration, logger: Logger
  ) throws {
    var reason = [CChar](repeating: 0, count: 512)
    var newTopics: [OpaquePointer?] = []
    defer { rd_kafka_NewTopic_destroy_array(&newTopics, newTopics.count) }
    for spec in specs {
      guard
        let topic = rd_kafka_NewTopic_new(
          spec.name, spec.partitions, Int32(spec.replicationFactor), &reason, reason.count)
      else {
        throw KafkaError(code: .invalidArgument, message: "topic \(spec.name): \(cString(reason))")
      }
      newTopics.append(topic)
      for (name, value) in spec.config.sorted(by: { $0.key < $1.key }) {
        let error = rd_kafka_NewTopic_set_config(topic, name, value)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
          throw KafkaError(error, "topic \(spec.name), config \(name): \(KafkaError.Code(error).explanation)")
        }
      }
    }
    guard let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_CREATETOPICS) else {
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_AdminOptions_new failed")
    }
    defer { rd_kafka_AdminOptions_destroy(options) }
    let milliseconds = timeout.milliseconds
    _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds, &reason, reason.count)
    _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds, &reason, reason.count)
    guard let queue = rd_kafka_queue_new(handle) else {
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_queue_new failed")
    }
    defer { rd_kafka_queue_destroy(queue) }

    rd_kafka_CreateTopics(handle, &newTopics, newTopics.count, options, queue)
    // The request times out on its own after `timeout`; wait a little longer for its answer.
    guard let event = rd_kafka_queue_poll(queue, milliseconds &+ 5_000) else {
      throw KafkaError(code: .timedOut, message: "no answer to CreateTopics")
    }
    defer { rd_kafka_event_destroy(event) }
    let eventError = rd_kafka_event_error(event)
    guard eventError == RD_KAFKA_RESP_ERR_NO_ERROR else {
      let text = rd_kafka_event_error_string(event).map { String(cString: $0) }
      throw KafkaError(eventError, "CreateTopics: \(text ?? KafkaError.Code(eventError).explanation)")
    }
    guard let result = rd_kafka_event_CreateTopics_result(event) else {
      throw KafkaError(code: .invalidArgument, message: "CreateTopics: unexpected event type")
    }
    var count = 0
    guard let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return }
    var failure: KafkaError?
    for index in 0..<count {
      guard let topic = results[index] else { continue }
      let name = rd_kafka_topic_result_name(topic).map { String(cString: $0) } ?? "?"
      let error = rd_kafka_topic_result_error(topic)
      switch error {
      case RD_KAFKA_RESP_ERR_NO_ERROR:
        logger.info("created topic", metadata: ["kafka.topic": .string(name)])
      case RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS:
        logger.debug("topic exists already", metadata: ["kafka.topic": .string(name)])
      default:
        let text = rd_kafka_topic_result_error_string(topic).map { String(cString: $0) }
        let topicFailure = KafkaError(error, "creating topic \(name): \(text ?? KafkaError.Code(error).explanation)")
        logger.error("\(topicFailure)")
        failure = failure ?? topicFailure
      }
    }
    if let failure { throw failure }
  }
}

/// The admin client's callback target: just the logger.
private final class AdminCallbacks: RdKafkaCallbackTarget {
  let logger: Logger

  init(logger: Logger) {
    self.logger = logger
  }
}
