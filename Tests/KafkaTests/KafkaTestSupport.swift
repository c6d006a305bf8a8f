import Foundation
import Kafka
import Logging
import MartTestSupport
import Synchronization

/// The test bed's broker (`KAFKA_BROKERS`, set by scripts/testbed.sh) and helpers around it.
/// Every test uses topics and groups of its own, so tests run in parallel against one broker.
enum Broker {
  struct NotConfigured: Error, CustomStringConvertible {
    var description: String {
      "KAFKA_BROKERS is not set: run the tests with `make test`, or start a broker with "
        + "`scripts/testbed.sh start --dir /tmp/kafka-dev` and `source /tmp/kafka-dev/env` first"
    }
  }

  static func configuration(_ clientID: String, properties: [String: String] = [:]) throws -> KafkaConfiguration {
    guard let brokers = ProcessInfo.processInfo.environment["KAFKA_BROKERS"], !brokers.isEmpty else {
      throw NotConfigured()
    }
    return KafkaConfiguration(bootstrapServers: brokers, clientID: clientID, properties: properties)
  }

  /// Settings that make group joins take seconds rather than tens of seconds, and fetches
  /// return promptly on Tansu (see /work/shared/NOTES.md).
  static let consumerProperties = [
    "session.timeout.ms": "6000", "heartbeat.interval.ms": "500", "fetch.wait.max.ms": "20",
  ]

  static func unique(_ label: String) -> String {
    "kafka-test-\(label)-\(UUID().uuidString.prefix(8).lowercased())"
  }

  static let logger: Logger = {
    var logger = Logger(label: "kafka.test")
    logger.logLevel = .warning
    return logger
  }()

  static func createTopic(_ name: String, partitions: Int32 = 1) async throws {
    try await KafkaAdmin.ensureTopics(
      [KafkaTopicSpec(name: name, partitions: partitions)], configuration: configuration("admin"), logger: logger)
  }

  static func producer(_ properties: [String: String] = [:]) throws -> KafkaProducer {
    try KafkaProducer(configuration: configuration("test-producer", properties: properties), logger: logger)
  }

  static func consumer(group: String, topics: [String]) throws -> KafkaConsumer {
    try KafkaConsumer(
      configuration: configuration("test-consumer", properties: consumerProperties), groupID: group, topics: topics,
      logger: logger)
  }
}

/// What a reading task has received so far.
final class RecordSink: Sendable {
  private let state = Mutex<(records: [KafkaRecord], errors: [String], finished: Bool)>(([], [], false))

  var records: [KafkaRecord] { state.withLock { $0.records } }
  var count: Int { state.withLock { $0.records.count } }
  var errors: [String] { state.withLock { $0.errors } }
  /// Whether the reading task saw the sequence end.
  var finished: Bool { state.withLock { $0.finished } }
  var values: [String] { records.map { String(decoding: $0.value, as: UTF8.self) } }

  func append(_ record: KafkaRecord) {
    state.withLock { $0.records.append(record) }
  }

  func note(_ error: any Error) {
    state.withLock { $0.errors.append("\(error)") }
  }

  func finish() {
    state.withLock { $0.finished = true }
  }
}

/// Reads `consumer` until it is closed, optionally committing each record before noting it.
/// Waits are bounded by the tests' `eventually` attempts, not by this task.
@discardableResult
func startReading(_ consumer: KafkaConsumer, into sink: RecordSink, commit: Bool) -> Task<Void, Never> {
  Task {
    do {
      for try await record in consumer {
        if commit {
          do {
            try await consumer.commit(record)
          } catch {
            sink.note(error)
          }
        }
        sink.append(record)
      }
    } catch {
      sink.note(error)
    }
    sink.finish()
  }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
