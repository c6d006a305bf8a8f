internal import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization

/// A member of a Kafka consumer group, subscribed to some topics, whose records are an
/// `AsyncSequence`.
///
/// - Back-pressure: librdkafka is polled only while someone awaits `next()`. The poll runs on the
///   consumer's own thread; `next()` suspends on a continuation and never blocks a Swift
///   concurrency thread. (librdkafka still prefetches a bounded amount per partition,
///   `queued.max.messages.kbytes`.) Because rebalances are served by the poll too, a member that
///   stops asking for records for longer than `max.poll.interval.ms` (default 5 minutes) is
///   considered stuck and leaves the group.
/// - At-least-once: nothing is committed automatically (`enable.auto.commit=false`,
///   `enable.auto.offset.store=false`). `commit(_:)` records that a record was handled; records
///   delivered but not committed are delivered again, to this or another member, after a
///   rebalance or a restart. Handlers must therefore be idempotent.
/// - Rebalances: when partitions are revoked, what was committed through `commit(_:)` is
///   committed (again) before they are given up; librdkafka's cooperative protocol is followed
///   when the assignment strategy is `cooperative-sticky`. Assignments are logged.
/// - Errors: librdkafka's transient errors (`_TRANSPORT`, `_ALL_BROKERS_DOWN`, `_PARTITION_EOF`,
///   an unknown topic, …) are logged and polling goes on, since librdkafka recovers from them by
///   itself. A fatal error (`rd_kafka_fatal_error`) ends the sequence by throwing it.
///
/// `auto.offset.reset` defaults to `earliest`: a new group starts at the beginning of each
/// partition rather than missing what was produced before it joined.
///
/// Call `close()` to leave the group cleanly; a consumer dropped without it closes in the
/// background.
public final class KafkaConsumer: Sendable, AsyncSequence {
  public typealias Element = KafkaRecord

  private let core: ConsumerCore

  /// The consumer group.
  public let groupID: String
  /// The subscribed topics.
  public let topics: [String]

  /// The client's name as librdkafka reports it (`<client.id>#consumer-<n>`).
  public var name: String { core.name }

  /// Creates the consumer, subscribes it and starts its thread. The group is joined as soon as
  /// records are asked for (the join happens inside librdkafka's poll).
  /// - Throws: `KafkaConfigurationError` for a property librdkafka rejects; `KafkaError` when
  ///   there are no topics or the subscription is refused.
  /// - Parameter waitForCommits: when true (the default) `commit(_:)` returns once the broker
  ///   has the offset; when false it returns once the offset is stored, and librdkafka sends it
  ///   in the background (a lost commit means redelivery, never loss: for idempotent handlers,
  ///   which can then go at the broker's speed instead of one commit round trip per record).
  public init(
    configuration: KafkaConfiguration, groupID: String, topics: [String], waitForCommits: Bool = true,
    logger: Logger = Logger(label: "kafka.consumer")
  ) throws {
    core = try ConsumerCore(
      configuration: configuration, groupID: groupID, topics: topics, waitForCommits: waitForCommits, logger: logger)
    self.groupID = groupID
    self.topics = topics
    DedicatedThread.start(name: "kafka-consumer") { [core] in core.run() }
  }

  deinit {
    core.beginClose(waiter: nil)
  }

  /// The partitions currently assigned to this member, sorted (as the last rebalance left them).
  public var assignment: [KafkaTopicPartition] { core.assignment }

  /// The next record, waiting as long as there is none.
  ///
  /// - Returns: nil once the consumer is closed (or after a fatal error was thrown).
  /// - Throws: `KafkaError` with `isFatal` when librdkafka raised a fatal error;
  ///   `CancellationError` when the calling task is cancelled while waiting.
  public func next() async throws -> KafkaRecord? {
    try await core.next()
  }

  /// Records that `record` has been handled: stores and synchronously commits the offset after
  /// it for its partition, so everything up to and including it counts as consumed by the group.
  ///
  /// The commit is synchronous against the group coordinator: about a millisecond normally,
  /// several seconds before failing with `_WAIT_COORD` when the coordinator is unreachable.
  ///
  /// - Throws: `KafkaError` when the commit failed. The record is then delivered again later
  ///   (at-least-once), so callers normally log this rather than stop consuming. Notably
  ///   `_STATE` when its partition is no longer assigned to this member (a rebalance gave it
  ///   to another member, which resumes from the group's last committed offset), `_WAIT_COORD`
  ///   or a broker error while the group is unreachable or rebalancing, and `_DESTROY` once the
  ///   consumer is closing.
  public func commit(_ record: KafkaRecord) async throws {
    try await core.commit(KafkaTopicPartition(topic: record.topic, partition: record.partition), offset: record.offset)
  }

  /// Like `commit(_:)`, for a record known by its coordinates: the record at `offset` in
  /// `partition` has been handled (so `offset + 1` is committed).
  public func commit(recordAt offset: Int64, in partition: KafkaTopicPartition) async throws {
    try await core.commit(partition, offset: offset)
  }

  /// Commits what `commit(_:)` stored, leaves the group (`rd_kafka_consumer_close`), destroys
  /// the client and stops its thread. Pending and later `next()` calls return nil. Calling it
  /// again just waits for the first call to finish.
  public func close() async {
    await withCheckedContinuation { continuation in
      core.beginClose(waiter: continuation)
    }
  }

  public func makeAsyncIterator() -> AsyncIterator {
    AsyncIterator(consumer: self)
  }

  /// Iterates by calling the consumer's `next()`; it keeps the consumer alive.
  public struct AsyncIterator: AsyncIteratorProtocol {
    let consumer: KafkaConsumer

    public func next() async throws -> KafkaRecord? {
      try await consumer.next()
    }
  }
}

/// What the consumer's thread and the calling tasks share, under one lock.
struct ConsumerState {
  enum Phase { case running, closing, closed }
  var phase = Phase.running
  /// `next()` calls waiting for a record, oldest first.
  var waiters: [(id: UInt64, continuation: CheckedContinuation<KafkaRecord?, any Error>)] = []
  var lastWaiterID: UInt64 = 0
  /// Records polled for a `next()` that was cancelled meanwhile; the next `next()` gets them.
  var ready = FIFO<KafkaRecord>()
  var commits: [(partition: KafkaTopicPartition, offset: Int64, continuation: CheckedContinuation<Void, any Error>)] =
    []
  var closeWaiters: [CheckedContinuation<Void, Never>] = []
  /// A fatal error not yet thrown to a `next()`.
  var failure: KafkaError?
  /// Whether the sequence ended with a fatal error (later `next()` calls return nil).
  var failed = false
  var assignment: Set<KafkaTopicPartition> = []
  /// Since when this member, while polling, has held no partition (nil while it holds some).
  var unassignedSince: ContinuousClock.Instant?
  /// How many times this stretch the member has left and rejoined its group.
  var rejoins = 0
}

/// The consumer's callback target: its state, and the rebalance and error callbacks (which run
/// on the consumer's thread, inside `rd_kafka_consumer_poll` or `rd_kafka_consumer_close`).
final class ConsumerShared: RdKafkaCallbackTarget {
  /// Set once the client exists, to add its name to the metadata.
  private let currentLogger: Mutex<Logger>
  let state = Mutex(ConsumerState())
  /// Wakes the consumer's thread when there is work: a `next()`, a commit, a close.
  let wakeup = DispatchSemaphore(value: 0)

  init(logger: Logger) {
    currentLogger = Mutex(logger)
  }

  var logger: Logger { currentLogger.withLock { $0 } }

  func setClientName(_ name: String) {
    currentLogger.withLock { $0[metadataKey: "kafka.client"] = .string(name) }
  }

  func clientError(_ error: KafkaError, client: String) {
    guard error.isFatal else {
      logger.warning("librdkafka error: \(error)", metadata: ["kafka.client": .string(client)])
      return
    }
    logger.error("librdkafka fatal error: \(error)", metadata: ["kafka.client": .string(client)])
    state.withLock { state in
      if !state.failed && state.failure == nil { state.failure = error }
    }
  }

  func rebalance(
    _ handle: OpaquePointer, _ event: rd_kafka_resp_err_t,
    _ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
  ) {
    let partitions = list.map(topicPartitions) ?? []
    let cooperative = rd_kafka_rebalance_protocol(handle).map { String(cString: $0) } == "COOPERATIVE"
    let described: Logger.MetadataValue = .array(partitions.sorted().map { .string($0.description) })
    switch event {
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
      logger.info("partitions assigned", metadata: ["kafka.partitions": described])
      if cooperative {
        if let error = rd_kafka_incremental_assign(handle, list) {
          logger.error("incremental assign failed: \(KafkaError.consuming(error))")
        }
      } else {
        let error = rd_kafka_assign(handle, list)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("assign failed: \(KafkaError(error))") }
      }
      state.withLock { state in
        if !cooperative { state.assignment.removeAll() }
        state.assignment.formUnion(partitions)
      }
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
      if rd_kafka_assignment_lost(handle) != 0 {
        // The group moved on without us (e.g. a missed session): a commit would be refused.
        logger.warning("partitions lost", metadata: ["kafka.partitions": described])
      } else {
        logger.info("partitions revoked", metadata: ["kafka.partitions": described])
        commitStoredOffsets(handle, reason: "revoke")
      }
      if cooperative {
        if let error = rd_kafka_incremental_unassign(handle, list) {
          logger.error("incremental unassign failed: \(KafkaError.consuming(error))")
        }
      } else {
        rd_kafka_assign(handle, nil)
      }
      let revoked = Set(partitions)
      state.withLock { state in
        if cooperative { state.assignment.subtract(revoked) } else { state.assignment.removeAll() }
        // Records polled but not yet taken belong to the partitions' next owner now.
        state.ready = state.ready.filter {
          !revoked.contains(KafkaTopicPartition(topic: $0.topic, partition: $0.partition))
        }
      }
    default:
      logger.error("rebalance failed: \(KafkaError(event))")
      rd_kafka_assign(handle, nil)
      state.withLock { $0.assignment.removeAll() }
    }
  }

  /// Commits the offsets stored by `commit(_:)` (synchronously). Nothing stored is not an error.
  func commitStoredOffsets(_ handle: OpaquePointer, reason: String) {
    let error = rd_kafka_commit(handle, nil, 0)
    if error != RD_KAFKA_RESP_ERR_NO_ERROR && error != RD_KAFKA_RESP_ERR__NO_OFFSET {
      logger.warning("committing stored offsets (\(reason)) failed: \(KafkaError(error))")
    }
  }
}

/// The consumer's handle and its thread.
final class ConsumerCore: Sendable {
  let handle: RdKafkaHandle
  /// The consumer queue, served by `rd_kafka_consumer_poll`; yielding it wakes the thread.
  private let consumerQueue: RdKafkaQueue
  let name: String
  private let shared: ConsumerShared
  private let context: Mutex<Unmanaged<AnyObject>?>
  private var logger: Logger { shared.logger }

  /// Whether `commit` waits for the broker's answer (rd_kafka_commit's `async` flag, inverted).
  private let waitForCommits: Bool
  /// What it subscribed to, to subscribe again when it rejoins its group.
  private let topics: [String]

  init(
    configuration: KafkaConfiguration, groupID: String, topics: [String], waitForCommits: Bool, logger: Logger
  ) throws {
    self.waitForCommits = waitForCommits
    self.topics = topics
    guard !topics.isEmpty else { throw KafkaError(code: .invalidArgument, message: "no topics to subscribe to") }
    let conf = try configuration.makeConf(
      defaults: [("auto.offset.reset", "earliest"), ("log_level", String(syslogLevel(for: logger.logLevel)))],
      required: [("group.id", groupID), ("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")])
    rd_kafka_conf_set_rebalance_cb(conf, rebalanceCallback)
    var logger = logger
    logger[metadataKey: "kafka.group"] = .string(groupID)
    let shared = ConsumerShared(logger: logger)
    let (handle, context) = try RdKafkaClient.make(RD_KAFKA_CONSUMER, conf: conf, target: shared)
    // Serve everything (rebalances, errors, logs' events) from rd_kafka_consumer_poll.
    rd_kafka_poll_set_consumer(handle.pointer)
    // On failure from here on the handle is destroyed on the calling thread; it has not joined
    // a group yet, so that is quick.
    func abandon(_ error: KafkaError) -> KafkaError {
      rd_kafka_destroy(handle.pointer)
      context.release()
      return error
    }
    guard let list = rd_kafka_topic_partition_list_new(Int32(clamping: topics.count)) else {
      throw abandon(KafkaError(code: .invalidArgument, message: "rd_kafka_topic_partition_list_new failed"))
    }
    for topic in topics { rd_kafka_topic_partition_list_add(list, topic, RD_KAFKA_PARTITION_UA) }
    let error = rd_kafka_subscribe(handle.pointer, list)
    rd_kafka_topic_partition_list_destroy(list)
    guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
      throw abandon(
        KafkaError(error, "subscribing to \(topics.joined(separator: ", ")): \(KafkaError.Code(error).explanation)"))
    }
    guard let consumerQueue = rd_kafka_queue_get_consumer(handle.pointer) else {
      throw abandon(KafkaError(code: .invalidArgument, message: "rd_kafka_queue_get_consumer failed"))
    }
    self.handle = handle
    self.consumerQueue = RdKafkaQueue(pointer: consumerQueue)
    self.shared = shared
    self.context = Mutex(context)
    name = RdKafkaClient.name(of: handle.pointer)
    shared.setClientName(name)
    shared.logger.debug("consumer subscribed", metadata: ["kafka.topics": .string(topics.joined(separator: ","))])
  }

  var assignment: [KafkaTopicPartition] {
    shared.state.withLock { $0.assignment.sorted() }
  }

  func next() async throws -> KafkaRecord? {
    let id = shared.state.withLock { state in
      state.lastWaiterID += 1
      return state.lastWaiterID
    }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<KafkaRecord?, any Error>) in
        let immediate: Result<KafkaRecord?, any Error>? = shared.state.withLock { state in
          guard case .running = state.phase, !state.failed else { return .success(nil) }
          if let record = state.ready.first {
            state.ready.removeFirst()
            return .success(record)
          }
          // Checked under the lock that the cancellation handler takes too: either it finds
          // this waiter, or this sees the cancellation.
          if Task.isCancelled { return .failure(CancellationError()) }
          state.waiters.append((id, continuation))
          shared.wakeup.signal()
          return nil
        }
        if let immediate { continuation.resume(with: immediate) }
      }
    } onCancel: {
      let waiter = shared.state.withLock { state in
        state.waiters.firstIndex(where: { $0.id == id }).map { state.waiters.remove(at: $0) }
      }
      waiter?.continuation.resume(throwing: CancellationError())
    }
  }

  func commit(_ partition: KafkaTopicPartition, offset: Int64) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      let accepted = shared.state.withLock { state in
        guard case .running = state.phase else { return false }
        state.commits.append((partition, offset, continuation))
        wake(state)
        return true
      }
      if !accepted { continuation.resume(throwing: KafkaError.destroyed("the consumer is closed")) }
    }
  }

  func beginClose(waiter: CheckedContinuation<Void, Never>?) {
    let (closed, waiters) = shared.state.withLock { state in
      switch state.phase {
      case .running:
        wake(state)
        state.phase = .closing
        if let waiter { state.closeWaiters.append(waiter) }
        defer { state.waiters.removeAll() }
        return (false, state.waiters)
      case .closing:
        if let waiter { state.closeWaiters.append(waiter) }
        return (false, [])
      case .closed:
        return (true, [])
      }
    }
    for waiter in waiters { waiter.continuation.resume(returning: nil) }
    if closed { waiter?.resume() }
  }

  /// Wakes the thread, also out of a poll in progress. Called under the lock, and yields only
  /// while running: the queue is destroyed after the phase has left `.running`.
  private func wake(_ state: ConsumerState) {
    shared.wakeup.signal()
    if case .running = state.phase { rd_kafka_queue_yield(consumerQueue.pointer) }
  }

  // MARK: The consumer's thread

  private enum Work {
    case idle
    case poll
    case commit([(partition: KafkaTopicPartition, offset: Int64, continuation: CheckedContinuation<Void, any Error>)])
    case fail(KafkaError, [CheckedContinuation<KafkaRecord?, any Error>])
    case close
  }

  /// The thread's body: polls while `next()` calls wait, runs commits, and finally the close.
  func run() {
    while true {
      let work = shared.state.withLock { state -> Work in
        if !state.commits.isEmpty {
          defer { state.commits.removeAll() }
          return .commit(state.commits)
        }
        if case .closing = state.phase { return .close }
        // A fatal error waits for someone to throw it to.
        if let failure = state.failure, !state.waiters.isEmpty {
          state.failure = nil
          state.failed = true
          defer { state.waiters.removeAll() }
          return .fail(failure, state.waiters.map(\.continuation))
        }
        return state.waiters.isEmpty || state.failed || state.failure != nil ? .idle : .poll
      }
      switch work {
      case .idle:
        shared.wakeup.wait()
      case .poll:
        poll()
      case .commit(let commits):
        for commit in commits {
          do {
            try commitOffset(after: commit.offset, of: commit.partition)
            commit.continuation.resume()
          } catch {
            commit.continuation.resume(throwing: error)
          }
        }
      case .fail(let error, let waiters):
        // The first waiter learns why the sequence ended; the others see its end.
        for (index, waiter) in waiters.enumerated() {
          if index == 0 { waiter.resume(throwing: error) } else { waiter.resume(returning: nil) }
        }
      case .close:
        finishClose()
        return
      }
    }
  }

  /// How long a polling member may hold no partition before it rejoins its group (doubled at
  /// each further rejoin of the same stretch, up to ten minutes).
  static let unassignedRejoinAfter = Duration.seconds(60)

  /// Leaves and rejoins the group when this member has polled for `unassignedRejoinAfter`
  /// without holding a partition, and says so. A group with no more members than partitions is
  /// then stuck (seen with Tansu 0.6.0 when the group's leader died, in the chaos runs): records
  /// wait, and before this only a restart of the process, a new member, unstuck it. Rejoining is
  /// the same without the restart. The wait doubles at each rejoin of a stretch, so that a member
  /// of a group with more members than partitions, rightly idle, rebalances its group rarely.
  private func rejoinIfLongUnassigned() {
    let now = ContinuousClock.now
    let unassignedFor = shared.state.withLock { state -> Duration? in
      guard state.assignment.isEmpty else {
        state.unassignedSince = nil
        state.rejoins = 0
        return nil
      }
      guard let since = state.unassignedSince else {
        state.unassignedSince = now
        return nil
      }
      let wait = min(Self.unassignedRejoinAfter * (1 << min(state.rejoins, 4)), .seconds(600))
      guard now - since >= wait else { return nil }
      state.rejoins += 1
      state.unassignedSince = now
      return wait
    }
    guard let unassignedFor else { return }
    logger.warning(
      "this consumer has held no partition for \(unassignedFor.components.seconds) s: unless its group has more members than partitions, the group is stuck; leaving and rejoining it"
    )
    let left = rd_kafka_unsubscribe(handle.pointer)
    if left != RD_KAFKA_RESP_ERR_NO_ERROR { logger.warning("leaving the group failed: \(KafkaError(left))") }
    guard let list = rd_kafka_topic_partition_list_new(Int32(clamping: topics.count)) else { return }
    defer { rd_kafka_topic_partition_list_destroy(list) }
    for topic in topics { rd_kafka_topic_partition_list_add(list, topic, RD_KAFKA_PARTITION_UA) }
    let joined = rd_kafka_subscribe(handle.pointer, list)
    if joined != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("rejoining the group failed: \(KafkaError(joined))") }
  }

  /// One `rd_kafka_consumer_poll`. Every polled message is destroyed here, after its bytes were
  /// copied into a `KafkaRecord`.
  private func poll() {
    rejoinIfLongUnassigned()
    guard let message = rd_kafka_consumer_poll(handle.pointer, 100) else { return }
    defer { rd_kafka_message_destroy(message) }
    let error = message.pointee.err
    switch error {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
      var record = makeRecord(message)
      // Cached from the last fetch response: no broker round trip.
      var low: Int64 = -1
      var high: Int64 = -1
      if rd_kafka_get_watermark_offsets(handle.pointer, record.topic, record.partition, &low, &high)
        == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0
      {
        record.highWatermark = high
      }
      let waiter = shared.state.withLock { state in
        guard !state.waiters.isEmpty else {
          state.ready.append(record)
          return nil as CheckedContinuation<KafkaRecord?, any Error>?
        }
        return state.waiters.removeFirst().continuation
      }
      waiter?.resume(returning: record)
    case RD_KAFKA_RESP_ERR__FATAL:
      let failure = KafkaError.fatalError(of: handle.pointer)
      logger.error("librdkafka fatal error: \(failure)")
      shared.state.withLock { state in
        if !state.failed && state.failure == nil { state.failure = failure }
      }
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
      logger.debug("end of partition", metadata: ["kafka.partition": "\(message.pointee.partition)"])
    default:
      let text = rd_kafka_message_errstr(message).map { String(cString: $0) } ?? KafkaError.Code(error).explanation
      let topic = message.pointee.rkt.flatMap { rd_kafka_topic_name($0) }.map { String(cString: $0) }
      logger.warning(
        "consumer error: \(KafkaError(error, text))",
        metadata: ["kafka.topic": .string(topic ?? ""), "kafka.partition": "\(message.pointee.partition)"])
    }
  }

  /// Stores `offset + 1` for the partition and commits it synchronously.
  private func commitOffset(after offset: Int64, of partition: KafkaTopicPartition) throws {
    guard let list = rd_kafka_topic_partition_list_new(1) else {
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_topic_partition_list_new failed")
    }
    defer { rd_kafka_topic_partition_list_destroy(list) }
    guard let element = rd_kafka_topic_partition_list_add(list, partition.topic, partition.partition) else {
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_topic_partition_list_add failed")
    }
    element.pointee.offset = offset + 1
    // Stored offsets are what the revoke callback and close commit again; librdkafka refuses
    // to store offsets of partitions not assigned to us (_STATE).
    let stored = rd_kafka_offsets_store(handle.pointer, list)
    let storeError = element.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR ? element.pointee.err : stored
    guard storeError == RD_KAFKA_RESP_ERR_NO_ERROR else {
      throw KafkaError(
        storeError,
        "cannot commit \(partition) offset \(offset + 1): the partition is not assigned to this consumer "
          + "(\(KafkaError.Code(storeError).explanation)); its current owner resumes from the group's committed offset")
    }
    let committed = rd_kafka_commit(handle.pointer, list, waitForCommits ? 0 : 1)
    guard committed == RD_KAFKA_RESP_ERR_NO_ERROR else {
      throw KafkaError(
        committed, "committing \(partition) offset \(offset + 1): \(KafkaError.Code(committed).explanation)")
    }
  }

  private func finishClose() {
    // librdkafka requires the consumer queue's references gone before rd_kafka_consumer_close.
    rd_kafka_queue_destroy(consumerQueue.pointer)
    shared.commitStoredOffsets(handle.pointer, reason: "close")
    // Leaves the group; the revoke callback runs in here.
    let error = rd_kafka_consumer_close(handle.pointer)
    if error != RD_KAFKA_RESP_ERR_NO_ERROR { logger.warning("closing the consumer: \(KafkaError(error))") }
    rd_kafka_destroy(handle.pointer)
    let (closeWaiters, waiters, commits) = shared.state.withLock { state in
      state.phase = .closed
      state.assignment.removeAll()
      _ = state.ready.removeAll()
      defer {
        state.closeWaiters.removeAll()
        state.waiters.removeAll()
        state.commits.removeAll()
      }
      return (state.closeWaiters, state.waiters, state.commits)
    }
    context.withLock { context in
      context?.release()
      context = nil
    }
    logger.debug("consumer closed")
    for waiter in waiters { waiter.continuation.resume(returning: nil) }
    for commit in commits { commit.continuation.resume(throwing: KafkaError.destroyed("the consumer is closed")) }
    for waiter in closeWaiters { waiter.resume() }
  }
}

/// Serves librdkafka's rebalance callback (on the consumer's thread).
private let rebalanceCallback:
  @convention(c) (
    OpaquePointer?, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?,
    UnsafeMutableRawPointer?
  ) -> Void = { handle, event, list, opaque in
    guard let handle, let opaque,
      let shared = Unmanaged<AnyObject>.fromOpaque(opaque).takeUnretainedValue() as? ConsumerShared
    else { return }
    shared.rebalance(handle, event, list)
  }

/// The topics and partitions of a librdkafka partition list.
func topicPartitions(_ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> [KafkaTopicPartition] {
  let count = Int(max(0, list.pointee.cnt))
  guard count > 0, let elements = list.pointee.elems else { return [] }
  return (0..<count).map { index in
    let element = elements[index]
    return KafkaTopicPartition(
      topic: element.topic.map { String(cString: $0) } ?? "", partition: element.partition)
  }
}

/// Copies a consumed message into a `KafkaRecord` (bytes, headers and all), so that the
/// message can be destroyed right after.
func makeRecord(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> KafkaRecord {
  let fields = message.pointee
  let topic = fields.rkt.flatMap { rd_kafka_topic_name($0) }.map { String(cString: $0) } ?? ""
  let key = fields.key.map { [UInt8](UnsafeRawBufferPointer(start: UnsafeRawPointer($0), count: fields.key_len)) }
  let value = fields.payload.map { [UInt8](UnsafeRawBufferPointer(start: UnsafeRawPointer($0), count: fields.len)) }
  var headers: [KafkaHeader] = []
  var list: OpaquePointer? = nil
  if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
    var index = 0
    while true {
      var name: UnsafePointer<CChar>? = nil
      var bytes: UnsafeRawPointer? = nil
      var count = 0
      guard rd_kafka_header_get_all(list, index, &name, &bytes, &count) == RD_KAFKA_RESP_ERR_NO_ERROR else { break }
      headers.append(
        KafkaHeader(
          name: name.map { String(cString: $0) } ?? "",
          value: bytes.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: count)) }))
      index += 1
    }
  }
  return KafkaRecord(
    topic: topic, partition: fields.partition, offset: fields.offset, key: key, value: value ?? [], headers: headers,
    timestamp: timestamp(of: message))
}

extension FIFO {
  func filter(_ isIncluded: (Element) -> Bool) -> FIFO {
    var result = FIFO()
    var copy = self
    while let element = copy.first {
      copy.removeFirst()
      if isIncluded(element) { result.append(element) }
    }
    return result
  }
}
