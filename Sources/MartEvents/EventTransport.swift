/// A record to put on a topic.
public struct OutgoingRecord: Sendable, Equatable {
  public var topic: String
  public var key: [UInt8]?
  public var value: [UInt8]
  public var headers: [EventHeader]

  public init(topic: String, key: [UInt8]?, value: [UInt8], headers: [EventHeader]) {
    self.topic = topic
    self.key = key
    self.value = value
    self.headers = headers
  }

  public init(_ envelope: EventEnvelope) {
    self.init(topic: envelope.topic, key: envelope.key, value: envelope.payload, headers: envelope.headers)
  }
}

/// A record taken from a topic, with its coordinates.
public struct ReceivedRecord: Sendable, Equatable {
  public var topic: String
  public var partition: Int32
  public var offset: Int64
  public var key: [UInt8]?
  public var value: [UInt8]
  public var headers: [EventHeader]
  /// How many records of the partition follow this one, when the transport knows.
  public var lag: Int64?

  public init(
    topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8], headers: [EventHeader],
    lag: Int64? = nil
  ) {
    self.lag = lag
    self.topic = topic
    self.partition = partition
    self.offset = offset
    self.key = key
    self.value = value
    self.headers = headers
  }

  public func header(_ name: String) -> String? { headers.last(where: { $0.name == name })?.text }
}

/// How events travel between services: Kafka in production, in-process for one machine.
/// The outbox relay and the consumers are written against this, so both behave the same.
public protocol EventTransport: Sendable {
  /// Makes sure these topics exist (Kafka creates missing ones; in-process needs none).
  func prepareTopics(_ names: [String]) async throws

  /// Publishes records and waits for each to be acknowledged. Returns one result per record, in
  /// order. Records with the same key are delivered in the order given; if one fails, later
  /// records with the same key fail too rather than overtake it.
  func publish(_ records: [OutgoingRecord]) async -> [Result<Void, any Error>]

  /// Joins the consumer group `group` on `topics`.
  func subscribe(group: String, topics: [String]) async throws -> any EventSubscription
}

/// A consumer-group member. Records whose offsets are not committed are delivered again to the
/// group (after a crash or a rebalance), so handlers must be idempotent: the inbox makes them so.
public protocol EventSubscription: Sendable {
  /// The next record; nil once the subscription is closed. Waits while there is none.
  func next() async throws -> ReceivedRecord?
  /// Records that `record` (and everything before it on its partition) is handled.
  func commit(_ record: ReceivedRecord) async throws
  /// Leaves the group; records delivered but not committed go to another member.
  func close() async
}
