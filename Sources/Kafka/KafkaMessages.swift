import Foundation

/// A record header: a name and optional bytes. Kafka distinguishes a header without a value
/// (`nil`) from one with an empty value, and allows the same name more than once; order is kept.
public struct KafkaHeader: Sendable, Hashable {
  public var name: String
  public var value: [UInt8]?

  public init(name: String, value: [UInt8]?) {
    self.name = name
    self.value = value
  }

  /// A header whose value is the UTF-8 encoding of `text`.
  public init(name: String, text: String) {
    self.init(name: name, value: Array(text.utf8))
  }
}

/// A record to produce.
public struct KafkaOutgoingMessage: Sendable, Hashable {
  public var topic: String
  /// The record key; records with the same key go to the same partition (librdkafka's default
  /// partitioner), which is what keeps them in order. `nil` means no key.
  public var key: [UInt8]?
  /// The payload. An empty array is sent as an empty value, not as a null (tombstone) value.
  public var value: [UInt8]
  public var headers: [KafkaHeader]
  /// An explicit partition, or `nil` to let the partitioner choose from the key.
  public var partition: Int32?

  public init(
    topic: String, key: [UInt8]? = nil, value: [UInt8], headers: [KafkaHeader] = [], partition: Int32? = nil
  ) {
    self.topic = topic
    self.key = key
    self.value = value
    self.headers = headers
    self.partition = partition
  }
}

/// The broker's acknowledgement of a produced record.
public struct KafkaDeliveryReport: Sendable, Hashable {
  public var topic: String
  public var partition: Int32
  public var offset: Int64
  /// The record's timestamp as librdkafka reports it (create time unless the topic says otherwise).
  public var timestamp: Date?

  public init(topic: String, partition: Int32, offset: Int64, timestamp: Date?) {
    self.topic = topic
    self.partition = partition
    self.offset = offset
    self.timestamp = timestamp
  }
}

/// A consumed record with its coordinates. Its bytes are copies: nothing here points into
/// librdkafka's memory.
public struct KafkaRecord: Sendable, Hashable {
  public var topic: String
  public var partition: Int32
  public var offset: Int64
  public var key: [UInt8]?
  /// The payload; a null (tombstone) value arrives as an empty array.
  public var value: [UInt8]
  public var headers: [KafkaHeader]
  public var timestamp: Date?
  /// The partition's high watermark (the offset the next record will get) as last seen by this
  /// consumer when the record was polled, if known: `highWatermark - offset - 1` is the lag.
  public var highWatermark: Int64?

  public init(
    topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8], headers: [KafkaHeader],
    timestamp: Date?, highWatermark: Int64? = nil
  ) {
    self.highWatermark = highWatermark
    self.topic = topic
    self.partition = partition
    self.offset = offset
    self.key = key
    self.value = value
    self.headers = headers
    self.timestamp = timestamp
  }

  /// The value of the last header called `name`, if any.
  public func header(_ name: String) -> [UInt8]? {
    headers.last(where: { $0.name == name })?.value
  }
}

/// A topic and one of its partitions.
public struct KafkaTopicPartition: Sendable, Hashable, Comparable, CustomStringConvertible {
  public var topic: String
  public var partition: Int32

  public init(topic: String, partition: Int32) {
    self.topic = topic
    self.partition = partition
  }

  public var description: String { "\(topic)[\(partition)]" }

  public static func < (lhs: KafkaTopicPartition, rhs: KafkaTopicPartition) -> Bool {
    (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition)
  }
}

/// A topic to create: name, partition count, replication factor and topic-level configuration
/// (e.g. `retention.ms`, `cleanup.policy`).
public struct KafkaTopicSpec: Sendable, Hashable {
  public var name: String
  public var partitions: Int32
  public var replicationFactor: Int16
  public var config: [String: String]

  public init(name: String, partitions: Int32 = 1, replicationFactor: Int16 = 1, config: [String: String] = [:]) {
    self.name = name
    self.partitions = partitions
    self.replicationFactor = replicationFactor
    self.config = config
  }
}

/// What the cluster's metadata says about a topic.
public struct KafkaTopicMetadata: Sendable, Hashable {
  public var name: String
  public var partitions: Int32

  public init(name: String, partitions: Int32) {
    self.name = name
    self.partitions = partitions
  }
}
