internal import CRdKafka
import Foundation
import Logging
import Synchronization

/// An idempotent Kafka producer whose sends complete with the broker's delivery report.
///
/// - Idempotence (`enable.idempotence=true`, `acks=all`) is always on: librdkafka's retries
///   then never duplicate or reorder records of one partition, so records with the same key
///   arrive in the order they were sent.
/// - `send` returns once the broker acknowledged the record (or librdkafka gave up on it, e.g.
///   after `message.timeout.ms`), not when it was merely queued.
/// - A dedicated thread calls `rd_kafka_poll` to serve delivery reports; nothing librdkafka does
///   blocks a Swift concurrency thread or an event loop.
/// - When librdkafka's local queue is full (`queue.buffering.max.messages`/`.kbytes`), records
///   wait in a FIFO backlog that the polling thread feeds into librdkafka as deliveries make
///   room. The backlog keeps order: a later record never overtakes one waiting for room.
///
/// Call `shutdown()` before dropping the producer to wait for outstanding deliveries; a producer
/// that is dropped without it shuts down in the background (flushing for up to 5 seconds).
public final class KafkaProducer: Sendable {
  private let core: ProducerCore

  /// The client's name as librdkafka reports it (`<client.id>#producer-<n>`).
  public var name: String { core.name }

  /// Creates the producer and starts its polling thread. Nothing is sent to the brokers until
  /// the first record; an unreachable cluster shows up as failing deliveries, not here.
  /// - Throws: `KafkaConfigurationError` for a property librdkafka rejects.
  public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "kafka.producer")) throws {
    core = try ProducerCore(configuration: configuration, logger: logger)
    DedicatedThread.start(name: "kafka-producer") { [core] in core.pollLoop() }
  }

  deinit {
    core.beginShutdown(flushTimeout: .seconds(5), waiter: nil)
  }

  /// Sends one record and waits for the broker's acknowledgement.
  ///
  /// Once the record is handed to librdkafka it is sent whatever happens to the calling task:
  /// cancelling the task does not withdraw it, and this method still waits for the outcome.
  /// - Returns: where the record was written.
  /// - Throws: `KafkaError` when the record was not delivered: librdkafka's delivery error (for
  ///   example `_MSG_TIMED_OUT` while the brokers are unreachable), an immediate rejection (an
  ///   unknown partition, a record larger than `message.max.bytes`), or `_DESTROY` after
  ///   `shutdown()`.
  public func send(_ message: KafkaOutgoingMessage) async throws -> KafkaDeliveryReport {
    try await withCheckedThrowingContinuation { continuation in
      core.enqueue([message]) { _ in
        { result in continuation.resume(with: result.mapError { $0 as any Error }) }
      }
    }
  }

  /// Sends records in the given order and waits for all their acknowledgements.
  ///
  /// The records are handed to librdkafka (or to the backlog) in order before anything is
  /// awaited, so records with the same key, and records for the same explicit partition, are
  /// written in this order. Use this rather than concurrent `send` calls when order matters:
  /// tasks do not start in a guaranteed order.
  /// - Returns: one result per record, in order.
  public func send(_ messages: [KafkaOutgoingMessage]) async -> [Result<KafkaDeliveryReport, KafkaError>] {
    guard !messages.isEmpty else { return [] }
    return await withCheckedContinuation { continuation in
      let batch = DeliveryBatch(count: messages.count, continuation: continuation)
      core.enqueue(messages) { index in
        { result in batch.set(index, result) }
      }
    }
  }

  /// The fatal error librdkafka raised on this producer (`rd_kafka_fatal_error`), or nil. An
  /// idempotent producer with one (fenced, or its sequence lost) delivers nothing more: every
  /// later send fails, so the owner must replace it with a new producer.
  public var fatalError: KafkaError? { core.fatalError }

  /// Makes librdkafka raise a fabricated fatal error with `code` (`rd_kafka_test_fatal_error`),
  /// for tests of what follows one: the real ones cannot be provoked at will.
  public func raiseFatalErrorForTesting(_ code: KafkaError.Code, reason: String) {
    core.raiseFatalErrorForTesting(code, reason: reason)
  }

  /// How many records have been sent (or are waiting for queue space) and are not yet
  /// acknowledged or failed: the sends currently waiting. Useful as a gauge.
  public var pendingDeliveries: Int { core.pendingDeliveries }

  /// Waits until every record sent so far is acknowledged or failed.
  /// - Throws: `KafkaError` `_TIMED_OUT` if some are still outstanding after `timeout`,
  ///   `_DESTROY` after `shutdown()`.
  public func flush(timeout: Duration) async throws {
    try await core.flush(timeout: timeout)
  }

  /// Flushes for up to `flushTimeout`, fails whatever is still outstanding (`_PURGE_QUEUE`,
  /// `_PURGE_INFLIGHT`), stops the polling thread and destroys the librdkafka handle. Every
  /// pending `send` has returned or thrown by the time this returns; later sends throw
  /// `_DESTROY`. Calling it again just waits for the first call to finish.
  public func shutdown(flushTimeout: Duration = .seconds(10)) async {
    await withCheckedContinuation { continuation in
      core.beginShutdown(flushTimeout: flushTimeout, waiter: continuation)
    }
  }
}

/// The delivery outcome of one record.
typealias DeliveryCompletion = @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void

/// Collects the results of a batch and resumes its waiter when the last one arrives.
private final class DeliveryBatch: Sendable {
  private let state: Mutex<(results: [Result<KafkaDeliveryReport, KafkaError>?], remaining: Int)>
  private let continuation: CheckedContinuation<[Result<KafkaDeliveryReport, KafkaError>], Never>

  init(count: Int, continuation: CheckedContinuation<[Result<KafkaDeliveryReport, KafkaError>], Never>) {
    state = Mutex((Array(repeating: nil, count: count), count))
    self.continuation = continuation
  }

  func set(_ index: Int, _ result: Result<KafkaDeliveryReport, KafkaError>) {
    let finished: [Result<KafkaDeliveryReport, KafkaError>?]? = state.withLock { state in
      guard state.results.indices.contains(index), state.results[index] == nil else { return nil }
      state.results[index] = result
      state.remaining -= 1
      return state.remaining == 0 ? state.results : nil
    }
    guard let finished else { return }
    continuation.resume(
      returning: finished.map { $0 ?? .failure(KafkaError.destroyed("no delivery report")) })
  }
}

/// The records librdkafka has accepted and not yet reported on, by id.
///
/// The per-message opaque given to librdkafka is this id (as a pointer-sized integer), not a
/// retained object: a delivery report resolves its id at most once, a report for an unknown id
/// is ignored, and whatever librdkafka never reports (it reports every record before
/// `rd_kafka_destroy`, but this does not depend on it) is failed at shutdown. So no sender can
/// hang and nothing can be released twice. This object is also the client's callback target.
final class DeliveryRegistry: RdKafkaCallbackTarget {
  let logger: Logger
  private let pending = Mutex<(nextID: UInt, completions: [UInt: DeliveryCompletion])>((1, [:]))

  init(logger: Logger) {
    self.logger = logger
  }

  func register(_ completions: [DeliveryCompletion]) -> [UInt] {
    pending.withLock { pending in
      completions.map { completion in
        let id = pending.nextID
        pending.nextID &+= 1
        if pending.nextID == 0 { pending.nextID = 1 }
        pending.completions[id] = completion
        return id
      }
    }
  }

  func complete(_ id: UInt, with result: Result<KafkaDeliveryReport, KafkaError>) {
    let completion = pending.withLock { $0.completions.removeValue(forKey: id) }
    completion?(result)
  }

  var count: Int { pending.withLock { $0.completions.count } }

  func fail(_ failures: [(id: UInt, error: KafkaError)]) {
    for failure in failures { complete(failure.id, with: .failure(failure.error)) }
  }

  func failAll(with error: KafkaError) {
    let completions = pending.withLock { pending in
      defer { pending.completions.removeAll() }
      return Array(pending.completions.values)
    }
    for completion in completions { completion(.failure(error)) }
  }
}

/// The producer's handle, backlog and polling thread.
final class ProducerCore: Sendable {
  let handle: RdKafkaHandle
  /// The main queue, served by `rd_kafka_poll`; yielding it wakes the polling thread.
  private let mainQueue: RdKafkaQueue
  let name: String
  let logger: Logger
  private let registry: DeliveryRegistry
  /// librdkafka's reference to `registry`, released once `rd_kafka_destroy` has returned.
  private let context: Mutex<Unmanaged<AnyObject>?>
  private let state = Mutex(State())

  private struct State {
    enum Phase { case running, shuttingDown, finished }
    var phase = Phase.running
    /// Records that found librdkafka's queue full, oldest first. While it is not empty every new
    /// record joins it, so that none overtakes another.
    var backlog = FIFO<(id: UInt, message: KafkaOutgoingMessage)>()
    var flushes: [(deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Void, any Error>)] = []
    var shutdownWaiters: [CheckedContinuation<Void, Never>] = []
    var shutdownFlushTimeout = Duration.zero
  }

  init(configuration: KafkaConfiguration, logger: Logger) throws {
    let conf = try configuration.makeConf(
      defaults: [("log_level", String(syslogLevel(for: logger.logLevel)))],
      required: [("enable.idempotence", "true"), ("acks", "all")])
    rd_kafka_conf_set_dr_msg_cb(conf, deliveryReportCallback)
    let registry = DeliveryRegistry(logger: logger)
    let (handle, context) = try RdKafkaClient.make(RD_KAFKA_PRODUCER, conf: conf, target: registry)
    guard let mainQueue = rd_kafka_queue_get_main(handle.pointer) else {
      rd_kafka_destroy(handle.pointer)
      context.release()
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_queue_get_main failed")
    }
    self.handle = handle
    self.mainQueue = RdKafkaQueue(pointer: mainQueue)
    self.registry = registry
    self.context = Mutex(context)
    name = RdKafkaClient.name(of: handle.pointer)
    var logger = logger
    logger[metadataKey: "kafka.client"] = .string(name)
    self.logger = logger
  }

  /// Hands records to librdkafka in order, or to the backlog when its queue is full.
  /// `completion(i)` is told the outcome of `messages[i]`, exactly once.
  func enqueue(_ messages: [KafkaOutgoingMessage], completion: (Int) -> DeliveryCompletion) {
    let ids = registry.register(messages.indices.map(completion))
    var failures: [(id: UInt, error: KafkaError)] = []
    let accepted = state.withLock { state in
      guard case .running = state.phase else { return false }
      var wait = false
      for (id, message) in zip(ids, messages) {
        guard state.backlog.isEmpty else {
          state.backlog.append((id, message))
          continue
        }
        switch produce(message, id: id) {
        case .enqueued: break
        case .queueFull:
          state.backlog.append((id, message))
          wait = true
        case .failed(let error): failures.append((id, error))
        }
      }
      // Have the polling thread retry the backlog right away rather than after its poll.
      if wait { wakePollingThread() }
      return true
    }
    if !accepted {
      failures = ids.map { ($0, KafkaError.destroyed("the producer is shut down")) }
    }
    registry.fail(failures)
  }

  var pendingDeliveries: Int { registry.count }

  var fatalError: KafkaError? {
    // The handle is destroyed once shut down; a producer shut down has no error to report.
    state.withLock { state in
      guard case .running = state.phase else { return nil }
      return KafkaError.raisedFatalError(of: handle.pointer)
    }
  }

  func raiseFatalErrorForTesting(_ code: KafkaError.Code, reason: String) {
    state.withLock { state in
      guard case .running = state.phase else { return }
      _ = rd_kafka_test_fatal_error(handle.pointer, rd_kafka_resp_err_t(rawValue: code.rawValue), reason)
    }
  }

  func flush(timeout: Duration) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      let accepted = state.withLock { state in
        guard case .running = state.phase else { return false }
        state.flushes.append((ContinuousClock.now + timeout, continuation))
        wakePollingThread()
        return true
      }
      if !accepted { continuation.resume(throwing: KafkaError.destroyed("the producer is shut down")) }
    }
  }

  func beginShutdown(flushTimeout: Duration, waiter: CheckedContinuation<Void, Never>?) {
    let finished = state.withLock { state in
      switch state.phase {
      case .running:
        state.phase = .shuttingDown
        state.shutdownFlushTimeout = flushTimeout
        if let waiter { state.shutdownWaiters.append(waiter) }
        wakePollingThread()
        return false
      case .shuttingDown:
        if let waiter { state.shutdownWaiters.append(waiter) }
        return false
      case .finished:
        return true
      }
    }
    if finished { waiter?.resume() }
  }

  /// Interrupts the polling thread's `rd_kafka_poll`. Called under the lock while the phase is
  /// `.running`: the queue and the handle are destroyed only after the phase has changed.
  private func wakePollingThread() {
    rd_kafka_queue_yield(mainQueue.pointer)
  }

  // MARK: The polling thread

  private enum Step {
    case poll(timeoutMilliseconds: Int32)
    case flush(deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Void, any Error>)
    case shutdown(flushTimeout: Duration)
  }

  /// The polling thread's body: serves delivery reports, feeds the backlog to librdkafka, runs
  /// flushes, and finally the shutdown. Returns after `rd_kafka_destroy`.
  func pollLoop() {
    while true {
      var failures: [(id: UInt, error: KafkaError)] = []
      let step = state.withLock { state -> Step in
        failures = drainBacklog(&state)
        if !state.flushes.isEmpty {
          let flush = state.flushes.removeFirst()
          return .flush(deadline: flush.deadline, continuation: flush.continuation)
        }
        if case .shuttingDown = state.phase { return .shutdown(flushTimeout: state.shutdownFlushTimeout) }
        // With a backlog, poll briefly: deliveries free queue space and the backlog should move on.
        return .poll(timeoutMilliseconds: state.backlog.isEmpty ? 100 : 10)
      }
      registry.fail(failures)
      switch step {
      case .poll(let timeout):
        rd_kafka_poll(handle.pointer, timeout)
      case .flush(let deadline, let continuation):
        if let error = flush(until: deadline) {
          continuation.resume(throwing: error)
        } else {
          continuation.resume()
        }
      case .shutdown(let flushTimeout):
        finishShutdown(flushTimeout: flushTimeout)
        return
      }
    }
  }

  /// Moves backlog records into librdkafka until its queue is full again. Runs under the lock.
  private func drainBacklog(_ state: inout State) -> [(id: UInt, error: KafkaError)] {
    var failures: [(id: UInt, error: KafkaError)] = []
    while let (id, message) = state.backlog.first {
      switch produce(message, id: id) {
      case .enqueued: break
      case .queueFull: return failures
      case .failed(let error): failures.append((id, error))
      }
      state.backlog.removeFirst()
    }
    return failures
  }

  /// Serves delivery reports until everything sent (backlog included) is reported or `deadline`
  /// passes. Runs on the polling thread.
  private func flush(until deadline: ContinuousClock.Instant) -> KafkaError? {
    while true {
      var failures: [(id: UInt, error: KafkaError)] = []
      let waiting = state.withLock { state in
        failures = drainBacklog(&state)
        return state.backlog.count
      }
      registry.fail(failures)
      let outstanding = Int(rd_kafka_outq_len(handle.pointer))
      if waiting == 0 && outstanding == 0 { return nil }
      let remaining = deadline - ContinuousClock.now
      if remaining <= .zero {
        return KafkaError(
          code: .timedOut,
          message: "flush timed out: \(outstanding) record(s) in librdkafka, \(waiting) waiting for queue space")
      }
      rd_kafka_flush(handle.pointer, waiting == 0 ? remaining.milliseconds : min(10, remaining.milliseconds))
    }
  }

  private func finishShutdown(flushTimeout: Duration) {
    if let error = flush(until: ContinuousClock.now + flushTimeout) {
      logger.warning(
        "producer shutting down before every record was delivered; purging", metadata: ["error": "\(error)"])
    }
    let abandoned = state.withLock { $0.backlog.removeAll() }
    registry.fail(
      abandoned.map { ($0.id, KafkaError(code: .purgedFromQueue, message: "the producer shut down before sending it")) }
    )
    // Fail what librdkafka still holds, then serve those delivery reports (bounded: purged
    // reports are immediate) so that every sender hears about its record.
    rd_kafka_purge(handle.pointer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT)
    for _ in 0..<100 where rd_kafka_outq_len(handle.pointer) > 0 {
      rd_kafka_poll(handle.pointer, 50)
    }
    // A queue reference still held would keep rd_kafka_destroy waiting.
    rd_kafka_queue_destroy(mainQueue.pointer)
    rd_kafka_destroy(handle.pointer)
    let (waiters, flushes) = state.withLock { state in
      state.phase = .finished
      defer {
        state.shutdownWaiters.removeAll()
        state.flushes.removeAll()
      }
      return (state.shutdownWaiters, state.flushes)
    }
    registry.failAll(with: KafkaError.destroyed("the producer was shut down before the record was acknowledged"))
    context.withLock { context in
      context?.release()
      context = nil
    }
    logger.debug("producer shut down")
    for flush in flushes { flush.continuation.resume(throwing: KafkaError.destroyed("the producer is shut down")) }
    for waiter in waiters { waiter.resume() }
  }

  // MARK: Producing one record

  private enum ProduceOutcome {
    case enqueued
    case queueFull
    case failed(KafkaError)
  }

  /// One `rd_kafka_produceva` call. Key, value and headers are copied by librdkafka
  /// (`RD_KAFKA_MSG_F_COPY`, `rd_kafka_header_add`), so nothing needs to outlive the call.
  private func produce(_ message: KafkaOutgoingMessage, id: UInt) -> ProduceOutcome {
    var headers: OpaquePointer? = nil
    if !message.headers.isEmpty {
      headers = makeHeaders(message.headers)
      if headers == nil { return .failed(KafkaError(code: .invalidArgument, message: "rd_kafka_headers_new failed")) }
    }
    let error = message.topic.withCString { topic in
      withBytes(message.key) { key, keyCount in
        withBytes(message.value) { value, valueCount in
          withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 7) { buffer -> OpaquePointer? in
            var count = 0
            func add(_ type: rd_kafka_vtype_t, _ fill: (inout rd_kafka_vu_t) -> Void) {
              var item = rd_kafka_vu_t()
              item.vtype = type
              fill(&item)
              buffer.initializeElement(at: count, to: item)
              count += 1
            }
            add(RD_KAFKA_VTYPE_TOPIC) { $0.u.cstr = topic }
            add(RD_KAFKA_VTYPE_VALUE) {
              $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: value)
              $0.u.mem.size = valueCount
            }
            if let key {
              add(RD_KAFKA_VTYPE_KEY) {
                $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: key)
                $0.u.mem.size = keyCount
              }
            }
            if let partition = message.partition { add(RD_KAFKA_VTYPE_PARTITION) { $0.u.i32 = partition } }
            if let headers { add(RD_KAFKA_VTYPE_HEADERS) { $0.u.headers = headers } }
            add(RD_KAFKA_VTYPE_MSGFLAGS) { $0.u.i = RD_KAFKA_MSG_F_COPY }
            add(RD_KAFKA_VTYPE_OPAQUE) { $0.u.ptr = UnsafeMutableRawPointer(bitPattern: id) }
            defer { buffer.baseAddress?.deinitialize(count: count) }
            return rd_kafka_produceva(handle.pointer, buffer.baseAddress, count)
          }
        }
      }
    }
    guard let error else { return .enqueued }
    // librdkafka takes the headers only when the call succeeds.
    if let headers { rd_kafka_headers_destroy(headers) }
    let kafkaError = KafkaError.consuming(error)
    return kafkaError.code == .queueFull ? .queueFull : .failed(kafkaError)
  }

  private func makeHeaders(_ headers: [KafkaHeader]) -> OpaquePointer? {
    guard let list = rd_kafka_headers_new(headers.count) else { return nil }
    for header in headers {
      header.name.withCString { name in
        withBytes(header.value) { value, count in
          // A nil pointer makes a header without a value; a non-nil one (even for zero bytes)
          // makes a header with a (possibly empty) value.
          _ = rd_kafka_header_add(list, name, header.name.utf8.count, value, count)
        }
      }
    }
    return list
  }
}

/// One byte of storage, so that an empty (but non-nil) byte array still has a non-null address:
/// librdkafka tells an empty value from a null one by the pointer.
private nonisolated(unsafe) let emptyBytes = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)

/// Calls `body` with the address and count of `bytes`: nil for nil, non-nil for empty arrays.
private func withBytes<Result>(_ bytes: [UInt8]?, _ body: (UnsafeRawPointer?, Int) -> Result) -> Result {
  guard let bytes else { return body(nil, 0) }
  return bytes.withUnsafeBytes { buffer in
    body(buffer.baseAddress ?? UnsafeRawPointer(emptyBytes), buffer.count)
  }
}

/// Serves librdkafka's delivery reports (on the polling thread, inside `rd_kafka_poll`).
private let deliveryReportCallback:
  @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = {
    handle, message, opaque in
    guard let message, let opaque,
      let registry = Unmanaged<AnyObject>.fromOpaque(opaque).takeUnretainedValue() as? DeliveryRegistry
    else { return }
    let id = UInt(bitPattern: message.pointee._private)
    guard id != 0 else { return }
    let error = message.pointee.err
    if error == RD_KAFKA_RESP_ERR_NO_ERROR {
      let topic = message.pointee.rkt.flatMap { rd_kafka_topic_name($0) }.map { String(cString: $0) } ?? ""
      let report = KafkaDeliveryReport(
        topic: topic, partition: message.pointee.partition, offset: message.pointee.offset,
        timestamp: timestamp(of: message))
      registry.complete(id, with: .success(report))
    } else if error == RD_KAFKA_RESP_ERR__FATAL, let handle {
      // The idempotent producer lost its guarantees; the cause is the client's fatal error.
      registry.complete(id, with: .failure(KafkaError.fatalError(of: handle)))
    } else {
      var text = KafkaError.Code(error).explanation
      switch rd_kafka_message_status(message) {
      case RD_KAFKA_MSG_STATUS_NOT_PERSISTED: text += " (not written)"
      case RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED: text += " (possibly written)"
      default: break
      }
      registry.complete(id, with: .failure(KafkaError(error, text)))
    }
  }

/// A message's timestamp, if librdkafka knows one.
func timestamp(of message: UnsafePointer<rd_kafka_message_t>) -> Date? {
  let milliseconds = rd_kafka_message_timestamp(message, nil)
  guard milliseconds >= 0 else { return nil }
  return Date(timeIntervalSince1970: Double(milliseconds) / 1000)
}

/// A first-in-first-out queue with amortised O(1) removal from the front.
struct FIFO<Element> {
  private var items: [Element] = []
  private var head = 0

  var isEmpty: Bool { head == items.count }
  var count: Int { items.count - head }
  var first: Element? { isEmpty ? nil : items[head] }

  mutating func append(_ element: Element) {
    items.append(element)
  }

  @discardableResult
  mutating func removeFirst() -> Element {
    let element = items[head]
    head += 1
    if head == items.count {
      items.removeAll()
      head = 0
    } else if head >= 1024 && head * 2 >= items.count {
      items.removeFirst(head)
      head = 0
    }
    return element
  }

  mutating func removeAll() -> [Element] {
    defer {
      items.removeAll()
      head = 0
    }
    return Array(items[head...])
  }
}
