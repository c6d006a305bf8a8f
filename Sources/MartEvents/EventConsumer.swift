import Foundation
import Logging
import MartCore
import MartDatabase
import Metrics
import PostgresNIO
import ServiceLifecycle
import SwiftProtobuf
import Tracing

/// A received event, decoded, as a handler sees it.
public struct ReceivedEvent<Event: DomainEvent>: Sendable {
  public var event: Event
  public var envelope: EventEnvelope
}

/// The handlers of one consumer, by event type. An event of a known type that has no handler here
/// is acknowledged and skipped: consumers listen to whole topics but care about some events.
public struct EventHandlers: Sendable {
  typealias Handler = @Sendable (any DomainEvent, EventEnvelope, PostgresConnection) async throws -> Void
  var handlers: [String: Handler] = [:]

  public init() {}

  /// Handles `Event`s inside the transaction that records them in the inbox: the handler's
  /// changes and the inbox row commit together, so a redelivered event has no second effect.
  public mutating func on<Event: DomainEvent>(
    _ type: Event.Type,
    _ handle: @escaping @Sendable (ReceivedEvent<Event>, PostgresConnection) async throws -> Void
  ) {
    handlers[Event.protoMessageName] = { event, envelope, connection in
      guard let event = event as? Event else { return }
      try await handle(ReceivedEvent(event: event, envelope: envelope), connection)
    }
  }
}

/// A named consumer of some topics: its name is the consumer group and the inbox key.
public struct EventConsumerDefinition: Sendable {
  public var name: String
  public var topics: [EventTopic]
  public var handlers: EventHandlers

  public init(name: String, topics: [EventTopic], handlers: EventHandlers) {
    self.name = name
    self.topics = topics
    self.handlers = handlers
  }
}

/// What a handler throws for an event it can never apply (it lacks a valid id, say): the
/// consumer dead-letters it at once instead of retrying, where an operator can look at it.
public struct InvalidEvent: Error, CustomStringConvertible {
  public var description: String

  public init(_ description: String) {
    self.description = description
  }
}

/// Headers a dead-lettered record carries besides its original ones.
public enum DeadLetterHeader {
  public static let error = "mart_dlq_error"
  public static let attempts = "mart_dlq_attempts"
  public static let consumer = "mart_dlq_consumer"
  public static let originalTopic = "mart_dlq_original_topic"
  public static let originalPartition = "mart_dlq_original_partition"
  public static let originalOffset = "mart_dlq_original_offset"
  public static let time = "mart_dlq_time"

  static let all: Set<String> = [error, attempts, consumer, originalTopic, originalPartition, originalOffset, time]
}

/// Runs one consumer: takes records from the transport, applies each at most once through the
/// inbox, retries a failing handler with backoff, and sends what cannot be handled to
/// `<topic>.dlq` so that a poison event never blocks its partition. Offsets are committed only
/// after a record is handled or dead-lettered.
public struct EventConsumer: Service {
  public let definition: EventConsumerDefinition
  public let service: MartService
  let database: PostgresClient
  let transport: any EventTransport
  let retry: MartCore.RetryPolicy
  let logger: Logger

  public init(
    definition: EventConsumerDefinition, service: MartService, database: PostgresClient,
    transport: any EventTransport, retry: MartCore.RetryPolicy = MartCore.RetryPolicy(), logger: Logger
  ) {
    self.definition = definition
    self.service = service
    self.database = database
    self.transport = transport
    self.retry = retry
    var logger = logger
    logger[metadataKey: "consumer"] = .string(definition.name)
    self.logger = logger
  }

  /// The consumer group, also the inbox's consumer name: `<service>.<name>`.
  public var group: String { "\(service.rawValue).\(definition.name)" }

  public func run() async throws {
    // Every topic's dead-letter count exists from the start, at zero: an alert on its increase
    // sees a series rather than nothing until the first dead letter.
    for topic in definition.topics {
      _ = Counter(label: "mart_events_dead_lettered_total", dimensions: [("consumer", group), ("topic", topic.name)])
    }
    let subscription = try await transport.subscribe(group: group, topics: definition.topics.map(\.name))
    do {
      try await cancelWhenGracefulShutdown { try await consume(subscription) }
    } catch is CancellationError {
      // Shutting down: what was not committed is delivered again, and the inbox dedups it.
    }
    await subscription.close()
  }

  /// Takes records and hands each to the lane of its partition. Lanes run concurrently, each in
  /// order: order per aggregate is order per partition, and partitions are independent, so a
  /// consumer uses as many database connections as it has busy partitions. At most
  /// `maximumInFlight` records are taken and not yet handled (back-pressure on the transport).
  func consume(_ subscription: any EventSubscription) async throws {
    let inFlight = AsyncLimiter(limit: maximumInFlight)
    try await withThrowingTaskGroup(of: Void.self) { lanes in
      var laneInputs: [String: LaneQueue] = [:]
      defer { for input in laneInputs.values { input.finish() } }
      while let record = try await subscription.next() {
        if let lag = record.lag {
          Gauge(
            label: "mart_events_consumer_lag",
            dimensions: [("consumer", group), ("topic", record.topic), ("partition", "\(record.partition)")]
          ).record(lag)
        }
        try await inFlight.acquire()
        let lane = "\(record.topic)/\(record.partition)"
        if laneInputs[lane] == nil {
          let queue = LaneQueue()
          laneInputs[lane] = queue
          lanes.addTask {
            while true {
              let batch = try await queue.takeBatch(upTo: maximumBatch)
              guard let last = batch.last else { return }
              try await handleBatch(batch)
              await commit(last, on: subscription)
              for _ in batch { inFlight.release() }
            }
          }
        }
        laneInputs[lane]?.append(record)
      }
      for input in laneInputs.values { input.finish() }
      try await lanes.waitForAll()
    }
  }

  /// How many records may be taken from the transport but not yet handled.
  var maximumInFlight: Int { 256 }
  /// How many consecutive records of a partition may share one transaction.
  var maximumBatch: Int { 64 }

  private func commit(_ record: ReceivedRecord, on subscription: any EventSubscription) async {
    do {
      try await subscription.commit(record)
    } catch {
      // The record is delivered again (to this member or, after a rebalance, another) and the
      // inbox makes that harmless; stopping the consumer would help nobody.
      logger.warning(
        "offset commit failed; the record will be redelivered",
        metadata: ["topic": "\(record.topic)", "offset": "\(record.offset)", "error": "\(error)"])
    }
  }

  /// Applies one record; returns normally once it is handled, skipped or dead-lettered.
  func handle(_ record: ReceivedRecord) async throws {
    let (envelope, event, handler): (EventEnvelope, any DomainEvent, EventHandlers.Handler)
    switch decode(record) {
    case .deadLetter(let reason):
      return try await deadLetter(record, error: reason, attempts: 0)
    case .skip:
      consumedCounter(record.topic).increment()
      return
    case .apply(let decodedEnvelope, let decodedEvent, let decodedHandler):
      (envelope, event, handler) = (decodedEnvelope, decodedEvent, decodedHandler)
    }
    let consumed = consumedCounter(record.topic)

    var attempt = 0
    while true {
      attempt += 1
      do {
        try Task.checkCancellation()
        let applied = try await consumeSpan(envelope) { _ in
          try await database.transaction(logger: logger) { connection -> Bool in
            let rows = try await connection.query(
              "INSERT INTO inbox (consumer, event_id) VALUES (\(group), \(envelope.id)) ON CONFLICT DO NOTHING RETURNING 1",
              logger: logger)
            var inserted = false
            for try await _ in rows { inserted = true }
            guard inserted else { return false }
            try await handler(event, envelope, connection)
            return true
          }
        }
        consumed.increment()
        if !applied {
          Counter(label: "mart_events_duplicates_total", dimensions: [("consumer", group)]).increment()
          logger.debug("duplicate event skipped", metadata: ["event_id": "\(envelope.id)"])
        }
        return
      } catch {
        if error is CancellationError || Task.isCancelled { throw CancellationError() }
        let reason = APIStatus.redactedDescription(of: error)
        if error.isDatabaseUnavailable {
          // Not the event's fault: wait for the database without spending an attempt.
          attempt -= 1
          logger.warning("database unavailable while handling an event; waiting", metadata: ["error": "\(reason)"])
          try await Task.sleep(for: retry.maximumBackoff)
          continue
        }
        // An event its handler calls invalid will not become valid by waiting: dead-lettered at once.
        guard attempt < retry.maximumAttempts, !(error.unwrappingTransactionError is InvalidEvent) else {
          return try await deadLetter(record, error: reason, attempts: attempt)
        }
        Counter(label: "mart_events_retried_total", dimensions: [("consumer", group)]).increment()
        let delay = retry.backoff(afterAttempt: attempt)
        logger.warning(
          "event handler failed; retrying",
          metadata: [
            "event_id": "\(envelope.id)", "event_type": "\(envelope.type)", "attempt": "\(attempt)",
            "error": "\(reason)", "retry_in": "\(delay)",
          ])
        try await Task.sleep(for: delay)
      }
    }
  }

  enum Decoded {
    /// Unreadable, unknown or undecodable: straight to the dead-letter topic.
    case deadLetter(String)
    /// A known event this consumer has no handler for.
    case skip
    case apply(EventEnvelope, any DomainEvent, EventHandlers.Handler)
  }

  func decode(_ record: ReceivedRecord) -> Decoded {
    let envelope: EventEnvelope
    do {
      envelope = try EventEnvelope(topic: record.topic, key: record.key, value: record.value, headers: record.headers)
    } catch {
      return .deadLetter("unreadable envelope: \(error)")
    }
    guard let type = DomainEvents.byName[envelope.type] else {
      return .deadLetter("unknown event type \(envelope.type)")
    }
    let event: any DomainEvent
    do {
      event = try type.init(
        serializedBytes: envelope.payload, extensions: nil, partial: false, options: BinaryDecodingOptions())
    } catch {
      return .deadLetter("undecodable \(envelope.type) payload: \(error)")
    }
    guard let handler = definition.handlers.handlers[envelope.type] else { return .skip }
    return .apply(envelope, event, handler)
  }

  /// Runs the handling of one event in a consumer span that continues the publisher's trace
  /// (the record's `traceparent`): one trace from the request that caused the event through
  /// every consumer of it.
  func consumeSpan<Result>(
    _ envelope: EventEnvelope, _ operation: (any Span) async throws -> Result
  ) async throws -> Result {
    try await MartTracing.withSpan("consume \(envelope.type)", ofKind: .consumer, continuing: envelope.traceparent) {
      span in
      span.attributes["messaging.system"] = "kafka"
      span.attributes["messaging.destination.name"] = envelope.topic
      span.attributes["messaging.consumer.group.name"] = group
      span.attributes["messaging.message.id"] = envelope.id.uuidString.lowercased()
      return try await operation(span)
    }
  }

  func consumedCounter(_ topic: String) -> Counter {
    Counter(label: "mart_events_consumed_total", dimensions: [("consumer", group), ("topic", topic)])
  }

  /// Applies consecutive records of one partition in one transaction: one commit (and fsync) for
  /// the batch instead of one per event. If anything in it fails, or a record needs more than a
  /// handler (dead letter, skip), the batch is rolled back and its records go one at a time
  /// through `handle`, with its retries and dead letters.
  /// The batch's transaction has no span of its own (it belongs to no one trace); each event's
  /// handling in it has its consumer span.
  func handleBatch(_ batch: [ReceivedRecord]) async throws {
    var work: [(topic: String, envelope: EventEnvelope, event: any DomainEvent, handler: EventHandlers.Handler)] = []
    for record in batch {
      guard batch.count > 1, case .apply(let envelope, let event, let handler) = decode(record) else {
        for record in batch { try await handle(record) }
        return
      }
      work.append((record.topic, envelope, event, handler))
    }
    do {
      let duplicates = try await database.withTransaction(logger: logger) { connection -> Int in
        var duplicates = 0
        for item in work {
          let rows = try await connection.query(
            "INSERT INTO inbox (consumer, event_id) VALUES (\(group), \(item.envelope.id)) ON CONFLICT DO NOTHING RETURNING 1",
            logger: logger)
          var inserted = false
          for try await _ in rows { inserted = true }
          guard inserted else {
            duplicates += 1
            continue
          }
          try await consumeSpan(item.envelope) { _ in
            try await item.handler(item.event, item.envelope, connection)
          }
        }
        return duplicates
      }
      for item in work { consumedCounter(item.topic).increment() }
      if duplicates > 0 {
        Counter(label: "mart_events_duplicates_total", dimensions: [("consumer", group)]).increment(by: duplicates)
      }
    } catch {
      if error is CancellationError || Task.isCancelled { throw CancellationError() }
      for record in batch { try await handle(record) }
    }
  }

  /// Puts `record` on its topic's dead-letter topic with the reason and its coordinates, retrying
  /// until the transport takes it: moving on without it would lose the event.
  func deadLetter(_ record: ReceivedRecord, error: String, attempts: Int) async throws {
    logger.error(
      "event dead-lettered",
      metadata: [
        "topic": "\(record.topic)", "partition": "\(record.partition)", "offset": "\(record.offset)",
        "error": "\(error)", "attempts": "\(attempts)",
      ])
    var headers = record.headers.filter { !DeadLetterHeader.all.contains($0.name) }
    headers += [
      EventHeader(DeadLetterHeader.error, String(error.prefix(2000))),
      EventHeader(DeadLetterHeader.attempts, String(attempts)),
      EventHeader(DeadLetterHeader.consumer, group),
      EventHeader(DeadLetterHeader.originalTopic, record.topic),
      EventHeader(DeadLetterHeader.originalPartition, String(record.partition)),
      EventHeader(DeadLetterHeader.originalOffset, String(record.offset)),
      EventHeader(DeadLetterHeader.time, EventEnvelope.formatTime(Date())),
    ]
    let deadLetter = OutgoingRecord(
      topic: record.topic + ".dlq", key: record.key, value: record.value, headers: headers)
    var failures = 0
    while true {
      try Task.checkCancellation()
      if case .failure(let publishError) = await transport.publish([deadLetter]).first {
        failures += 1
        logger.warning("cannot dead-letter yet; retrying", metadata: ["error": "\(publishError)"])
        try await Task.sleep(for: retry.backoff(afterAttempt: failures))
        continue
      }
      Counter(label: "mart_events_dead_lettered_total", dimensions: [("consumer", group), ("topic", record.topic)])
        .increment()
      return
    }
  }
}

/// Puts dead-lettered events back on their topics, without the dead-letter headers.
public enum DeadLetterRedrive {
  /// The original topic of a dead-letter topic: `mart.orders.v1.dlq` → `mart.orders.v1`.
  public static func originalTopic(of deadLetterTopic: String) -> String? {
    deadLetterTopic.hasSuffix(".dlq") ? String(deadLetterTopic.dropLast(4)) : nil
  }

  /// Moves every record of `deadLetterTopic` back to its original topic, committing each one
  /// only after the broker acknowledged its copy; stops once nothing has arrived for `idle`.
  /// Returns how many records were put back. Safe to stop and run again: a record whose copy was
  /// published but not committed is put back twice, and the inbox makes that harmless.
  public static func run(
    deadLetterTopic: String, transport: any EventTransport, idle: Duration, logger: Logger
  ) async throws -> Int {
    let subscription = try await transport.subscribe(group: "mart.redrive", topics: [deadLetterTopic])
    var count = 0
    do {
      while let record = try await next(of: subscription, within: idle) {
        if let copy = redriven(record) {
          if case .failure(let error) = await transport.publish([copy]).first { throw error }
          count += 1
          logger.info(
            "redriven", metadata: ["topic": "\(copy.topic)", "ce_id": "\(record.header("ce_id") ?? "")"])
        } else {
          logger.warning("not a dead-lettered record; skipped", metadata: ["offset": "\(record.offset)"])
        }
        try await subscription.commit(record)
      }
    } catch {
      await subscription.close()
      throw error
    }
    await subscription.close()
    return count
  }

  /// The next record, or nil when none arrives within `limit`.
  private static func next(of subscription: any EventSubscription, within limit: Duration) async throws
    -> ReceivedRecord?
  {
    try await withThrowingTaskGroup(of: ReceivedRecord?.self) { group in
      group.addTask { try await subscription.next() }
      group.addTask {
        try await Task.sleep(for: limit)
        return nil
      }
      defer { group.cancelAll() }
      return try await group.next() ?? nil
    }
  }

  /// The record to publish again for a dead-lettered one.
  public static func redriven(_ record: ReceivedRecord) -> OutgoingRecord? {
    guard let topic = record.header(DeadLetterHeader.originalTopic) ?? originalTopic(of: record.topic) else {
      return nil
    }
    return OutgoingRecord(
      topic: topic, key: record.key, value: record.value,
      headers: record.headers.filter { !DeadLetterHeader.all.contains($0.name) })
  }
}
