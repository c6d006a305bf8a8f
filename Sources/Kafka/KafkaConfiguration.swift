internal import CRdKafka
import Logging

/// How to reach a Kafka cluster, plus any librdkafka properties
/// (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md).
///
/// Each client builds its librdkafka configuration in layers: `bootstrap.servers` and `client.id`
/// from here, then the client's defaults (for example the consumer's `auto.offset.reset`), then
/// `properties` (which therefore override those defaults), and finally the few settings a client's
/// guarantees depend on (the producer's idempotence, the consumer's manual commits), which cannot
/// be overridden.
public struct KafkaConfiguration: Sendable, Hashable {
  /// Comma-separated `host:port` list, e.g. `"127.0.0.1:9092,10.0.0.2:9092"`.
  public var bootstrapServers: String
  /// Sent to the brokers and used in log metadata; it need not be unique.
  public var clientID: String
  /// Extra librdkafka properties, e.g. `["message.timeout.ms": "30000"]`.
  public var properties: [String: String]

  public init(bootstrapServers: String, clientID: String = "swift-kafka", properties: [String: String] = [:]) {
    self.bootstrapServers = bootstrapServers
    self.clientID = clientID
    self.properties = properties
  }

  /// This configuration for a producer: without the properties librdkafka reads only in a
  /// consumer (CONFIGURATION.md marks them `C`). One set of properties serves a process's
  /// producer and consumers (`MART_KAFKA_PROPERTIES`), and librdkafka warns (CONFWARN) about
  /// every consumer property a producer is given.
  public var forProducer: KafkaConfiguration {
    var configuration = self
    configuration.properties = properties.filter { !Self.consumerOnlyProperties.contains($0.key) }
    return configuration
  }

  /// Properties only a consumer reads (librdkafka 2.x CONFIGURATION.md, column C/P = C).
  static let consumerOnlyProperties: Set<String> = [
    "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
    "heartbeat.interval.ms", "group.protocol.type", "group.protocol", "group.remote.assignor",
    "coordinator.query.interval.ms", "max.poll.interval.ms", "enable.auto.commit", "auto.commit.interval.ms",
    "enable.auto.offset.store", "queued.min.messages", "queued.max.messages.kbytes", "fetch.wait.max.ms",
    "fetch.queue.backoff.ms", "fetch.message.max.bytes", "max.partition.fetch.bytes", "fetch.max.bytes",
    "fetch.min.bytes", "fetch.error.backoff.ms", "offset.store.method", "isolation.level",
    "enable.partition.eof", "check.crcs", "auto.offset.reset", "consume.callback.max.messages",
  ]

  /// Checks every property against librdkafka without connecting anywhere.
  /// - Throws: `KafkaConfigurationError` naming the first property librdkafka rejects.
  public func validate() throws {
    let conf = try makeConf(defaults: [], required: [])
    rd_kafka_conf_destroy(conf)
  }

  /// Builds an `rd_kafka_conf_t` in the layers described above. The caller owns the result.
  func makeConf(defaults: [(String, String)], required: [(String, String)]) throws -> OpaquePointer {
    guard let conf = rd_kafka_conf_new() else {
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_conf_new failed")
    }
    do {
      try Self.set(conf, "bootstrap.servers", bootstrapServers)
      try Self.set(conf, "client.id", clientID)
      for (name, value) in defaults { try Self.set(conf, name, value) }
      for (name, value) in properties.sorted(by: { $0.key < $1.key }) { try Self.set(conf, name, value) }
      for (name, value) in required { try Self.set(conf, name, value) }
      return conf
    } catch {
      rd_kafka_conf_destroy(conf)
      throw error
    }
  }

  private static func set(_ conf: OpaquePointer, _ name: String, _ value: String) throws {
    var reason = [CChar](repeating: 0, count: 512)
    let result = rd_kafka_conf_set(conf, name, value, &reason, reason.count)
    guard result == RD_KAFKA_CONF_OK else {
      throw KafkaConfigurationError(property: name, reason: cString(reason))
    }
  }
}

/// librdkafka's `log_level` (syslog levels) for a logger, so that librdkafka does not format
/// lines that the logger would drop anyway.
func syslogLevel(for level: Logger.Level) -> Int {
  switch level {
  case .trace, .debug: 7
  case .info: 6
  case .notice: 5
  case .warning: 4
  case .error: 3
  case .critical: 2
  }
}

/// The logger level of a librdkafka (syslog) level.
func loggerLevel(forSyslog level: Int32) -> Logger.Level {
  switch level {
  case ...2: .critical
  case 3: .error
  case 4: .warning
  case 5: .notice
  case 6: .info
  default: .debug
  }
}

/// The text in a NUL-terminated C buffer (the error-string buffers librdkafka fills).
func cString(_ buffer: [CChar]) -> String {
  String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
