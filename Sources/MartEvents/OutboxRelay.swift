import Foundation
import Logging
import MartCore
import MartDatabase
import Metrics
import PostgresNIO
import ServiceLifecycle
import Tracing

/// Publishes a service's outbox in order and marks what the transport acknowledged.
///
/// - Wakes on `LISTEN mart_outbox` (every `Outbox.append` notifies at commit), with a slow timed
///   look as a safety net for a lost listener connection.
/// - Each batch runs in one transaction under `pg_try_advisory_xact_lock`, so of two processes of
///   the same service only one publishes at a time: no row twice, none out of order.
/// - Rows are read in `id` order; the transport keeps per-key order and fails later records of a
///   key after a failed one, so a retry never lets a later event of an aggregate overtake it.
/// - While the broker is down, batches fail and are retried with capped exponential backoff.
/// - Published rows older than `retention` are deleted now and then.
public struct OutboxRelay: Service {
  static let advisoryLockKey: Int64 = 0x4d41_5254_4f55_5442  // "MARTOUTB"

  public struct Options: Sendable {
    public var batchSize = 256
    public var fallbackPollInterval: Duration = .seconds(2)
    public var retention: Duration = .seconds(7 * 24 * 3600)
    public var pruneInterval: Duration = .seconds(600)
    public var maximumBackoff: Duration = .seconds(10)
    public init() {}
  }

  public let service: MartService
  let database: PostgresClient
  let transport: any EventTransport
  let options: Options
  let logger: Logger
  let wakeup = Wakeup()

  public init(
    service: MartService, database: PostgresClient, transport: any EventTransport, options: Options = Options(),
    logger: Logger
  ) {
    self.service = service
    self.database = database
    self.transport = transport
    self.options = options
    self.logger = logger
  }

  public func run() async throws {
    await cancelWhenGracefulShutdown {
      await withDiscardingTaskGroup { group in
        group.addTask { await listen() }
        group.addTask { await relay() }
        group.addTask { await measureBacklog() }
      }
    }
  }

  private func listen() async {
    await Wakeup.listen(
      on: Outbox.channel, database: database, wakeup: wakeup, maximumBackoff: options.maximumBackoff, logger: logger)
  }

  private func relay() async {
    var failures = 0
    var lastPrune = ContinuousClock.now
    while !Task.isCancelled {
      do {
        let outcome = try await publishBatch()
        logger.trace("outbox batch", metadata: ["outcome": "\(outcome)"])
        failures = 0
        if case .published(let count) = outcome, count == options.batchSize { continue }
        if ContinuousClock.now - lastPrune > options.pruneInterval {
          try await prune()
          lastPrune = .now
        }
        await wakeup.wait(upTo: options.fallbackPollInterval)
      } catch {
        if Task.isCancelled { return }
        failures += 1
        let delay = backoff(after: failures)
        logger.warning(
          "outbox relay cannot publish; retrying",
          metadata: ["error": "\(error)", "attempt": "\(failures)", "retry_in": "\(delay)"])
        try? await Task.sleep(for: delay)
      }
    }
  }

  enum BatchOutcome: Equatable {
    /// Another process holds the relay lock.
    case busy
    case published(Int)
  }

  struct PartialFailure: Error, CustomStringConvertible {
    var published: Int
    var failed: Int
    var firstError: String
    var description: String { "\(failed) event(s) not published (\(published) were): \(firstError)" }
  }

  /// Publishes the oldest unpublished rows; throws when any of them failed.
  func publishBatch() async throws -> BatchOutcome {
    let started = ContinuousClock.now
    let result: (BatchOutcome, PartialFailure?) = try await database.withTransaction(logger: logger) { connection in
      let lock = try await connection.query(
        "SELECT pg_try_advisory_xact_lock(\(Self.advisoryLockKey))", logger: logger)
      var locked = false
      for try await value in lock.decode(Bool.self) { locked = value }
      guard locked else { return (.busy, nil) }

      let rows = try await connection.query(
        """
        SELECT id, event_id, topic, aggregate_id, event_type, payload, headers ->> 'traceparent', created_at
        FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT \(options.batchSize)
        """, logger: logger)
      var ids: [Int64] = []
      var envelopes: [EventEnvelope] = []
      for try await (id, eventID, topic, aggregateID, eventType, payload, traceparent, createdAt) in rows.decode(
        (Int64, UUID, String, String, String, ByteBuffer, String?, Date).self)
      {
        ids.append(id)
        envelopes.append(
          EventEnvelope(
            id: eventID, type: eventType, source: "/mart/\(service.rawValue)", subject: aggregateID, time: createdAt,
            topic: topic, payload: Array(buffer: payload), traceparent: traceparent))
      }
      guard !envelopes.isEmpty else { return (.published(0), nil) }

      // A publish span per event, continuing the trace its append stored; the record carries
      // the publish span's, so that each consumer's span is its child.
      var spans: [any Span] = []
      for index in envelopes.indices {
        let (span, traceparent) = MartTracing.startSpan(
          "publish \(envelopes[index].type)", ofKind: .producer, continuing: envelopes[index].traceparent)
        span.attributes["messaging.system"] = "kafka"
        span.attributes["messaging.destination.name"] = envelopes[index].topic
        span.attributes["messaging.message.id"] = envelopes[index].id.uuidString.lowercased()
        envelopes[index].traceparent = traceparent
        spans.append(span)
      }
      let results = await transport.publish(envelopes.map(OutgoingRecord.init))
      var published: [Int64] = []
      var firstError: String?
      for (index, result) in results.enumerated() {
        switch result {
        case .success:
          published.append(ids[index])
          Counter(label: "mart_events_published_total", dimensions: [("topic", envelopes[index].topic)]).increment()
        case .failure(let error):
          firstError = firstError ?? "\(error)"
          spans[index].recordError(error)
          spans[index].setStatus(SpanStatus(code: .error, message: "not published"))
        }
        spans[index].end()
      }
      if !published.isEmpty {
        try await connection.query(
          "UPDATE outbox SET published_at = now() WHERE id = ANY(\(published))", logger: logger)
      }
      let failure = firstError.map {
        PartialFailure(published: published.count, failed: results.count - published.count, firstError: $0)
      }
      return (.published(published.count), failure)
    }
    Timer(label: "mart_outbox_batch_duration_seconds").recordInterval(since: started)
    if let failure = result.1 { throw failure }
    return result.0
  }

  private func prune() async throws {
    let seconds = Double(options.retention.components.seconds)
    try await database.query(
      "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => \(seconds))", logger: logger)
    try await database.query(
      "DELETE FROM inbox WHERE received_at < now() - make_interval(secs => \(seconds * 2))", logger: logger)
  }

  /// Reports the backlog: unpublished rows and the age of the oldest.
  private func measureBacklog() async {
    let backlog = Gauge(label: "mart_outbox_backlog", dimensions: [("service", service.rawValue)])
    let oldest = Gauge(label: "mart_outbox_oldest_age_seconds", dimensions: [("service", service.rawValue)])
    while !Task.isCancelled {
      do {
        let rows = try await database.query(
          """
          SELECT count(*)::bigint, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
          FROM outbox WHERE published_at IS NULL
          """, logger: logger)
        for try await (count, age) in rows.decode((Int64, Double).self) {
          backlog.record(count)
          oldest.record(age)
        }
      } catch {
        // The database supervisor reports an unavailable database; nothing to add here.
      }
      try? await Task.sleep(for: .seconds(5))
    }
  }

  func backoff(after failures: Int) -> Duration {
    min(.milliseconds(100) * (1 << min(failures - 1, 16)), options.maximumBackoff)
  }
}

extension Timer {
  /// Records the time since `start` (the services' RPC and batch timings).
  public func recordInterval(since start: ContinuousClock.Instant) {
    let elapsed = ContinuousClock.now - start
    recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
  }
}
