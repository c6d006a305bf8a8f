import Logging
import MartCore
import ServiceLifecycle

public enum EventTransports {
  /// The process's event transport: Kafka when `KAFKA_BROKERS` is set, in-process otherwise;
  /// with the lifecycle services that keep it running (list them before the services using it,
  /// so that it stops after them).
  public static func make(
    _ configuration: ProcessConfiguration, clientID: String, logger: Logger
  ) throws -> (transport: any EventTransport, services: [any Service]) {
    guard let brokers = configuration.kafkaBrokers else {
      logger.info("no KAFKA_BROKERS: events are delivered in-process")
      return (InProcessEventTransport(), [])
    }
    let kafka = try KafkaEventTransport(
      brokers: brokers, clientID: clientID, partitions: configuration.kafkaPartitions,
      topicPrefix: configuration.kafkaTopicPrefix, properties: configuration.kafkaProperties, logger: logger)
    return (kafka, [kafka])
  }
}
