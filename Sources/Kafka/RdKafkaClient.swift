internal import CRdKafka
import Foundation
import Logging

/// An `rd_kafka_t` pointer. librdkafka handles are thread-safe, so the pointer may be shared
/// between threads; its lifetime is managed by the object that owns it (the producer's and the
/// consumer's core destroy it on their own thread, after which nobody uses it).
struct RdKafkaHandle: @unchecked Sendable {
  let pointer: OpaquePointer
}

/// An `rd_kafka_queue_t` reference, kept to wake the thread polling it (`rd_kafka_queue_yield`
/// is librdkafka's cross-thread wake-up; `rd_kafka_yield` only works from inside a callback).
/// Destroyed by its owner before the client handle.
struct RdKafkaQueue: @unchecked Sendable {
  let pointer: OpaquePointer
}

/// The object librdkafka's callbacks reach through the client's opaque pointer
/// (`rd_kafka_conf_set_opaque`): it owns the logger and hears about client-level errors.
protocol RdKafkaCallbackTarget: AnyObject, Sendable {
  var logger: Logger { get }
  /// An error librdkafka reported through `error_cb`. Most are transient (a broker went away)
  /// and librdkafka retries by itself; `error.isFatal` means the client is unusable.
  func clientError(_ error: KafkaError, client: String)
}

extension RdKafkaCallbackTarget {
  func clientError(_ error: KafkaError, client: String) {
    logger.log(
      level: error.isFatal ? .error : .warning, "librdkafka error: \(error)",
      metadata: ["kafka.client": .string(client)])
  }
}

enum RdKafkaClient {
  /// Creates a client handle from `conf` (taken over whatever happens), with librdkafka's log
  /// lines and errors routed to `target`. `target` stays retained until `release` is called,
  /// which the owner must do after `rd_kafka_destroy` returned: librdkafka's threads may call
  /// the callbacks until then.
  static func make(
    _ type: rd_kafka_type_t, conf: OpaquePointer, target: any RdKafkaCallbackTarget
  ) throws -> (handle: RdKafkaHandle, context: Unmanaged<AnyObject>) {
    let context = Unmanaged<AnyObject>.passRetained(target)
    rd_kafka_conf_set_opaque(conf, context.toOpaque())
    rd_kafka_conf_set_log_cb(conf, logCallback)
    rd_kafka_conf_set_error_cb(conf, errorCallback)
    var reason = [CChar](repeating: 0, count: 512)
    guard let pointer = rd_kafka_new(type, conf, &reason, reason.count) else {
      // On failure the configuration still belongs to us and no callback will run any more.
      rd_kafka_conf_destroy(conf)
      context.release()
      throw KafkaError(code: .invalidArgument, message: "rd_kafka_new: \(cString(reason))")
    }
    return (RdKafkaHandle(pointer: pointer), context)
  }

  /// The callback target of a client handle, if it has one of ours.
  static func target(of handle: OpaquePointer?) -> (any RdKafkaCallbackTarget)? {
    guard let handle, let opaque = rd_kafka_opaque(handle) else { return nil }
    return Unmanaged<AnyObject>.fromOpaque(opaque).takeUnretainedValue() as? any RdKafkaCallbackTarget
  }

  /// The client's name as librdkafka reports it, e.g. `orders#producer-1`.
  static func name(of handle: OpaquePointer?) -> String {
    guard let handle, let name = rd_kafka_name(handle) else { return "rdkafka" }
    return String(cString: name)
  }
}

/// Routes librdkafka's log lines (any librdkafka thread) into swift-log, with the client's name.
private let logCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Void =
  { handle, level, facility, line in
    guard let target = RdKafkaClient.target(of: handle) else { return }
    let level = loggerLevel(forSyslog: level)
    guard target.logger.logLevel <= level else { return }
    let text = line.map { String(cString: $0) } ?? ""
    let facility = facility.map { String(cString: $0) } ?? ""
    target.logger.log(
      level: level, "\(text)",
      metadata: ["kafka.client": .string(RdKafkaClient.name(of: handle)), "kafka.facility": .string(facility)])
  }

/// librdkafka's client-level errors (served by `rd_kafka_poll`/`rd_kafka_consumer_poll`).
private let errorCallback:
  @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void =
    { handle, code, reason, _ in
      guard let target = RdKafkaClient.target(of: handle) else { return }
      let code = KafkaError.Code(rawValue: code)
      let error: KafkaError
      if code == .fatal, let handle {
        error = KafkaError.fatalError(of: handle)
      } else {
        error = KafkaError(code: code, message: reason.map { String(cString: $0) } ?? code.explanation)
      }
      target.clientError(error, client: RdKafkaClient.name(of: handle))
    }

/// Threads of our own for librdkafka's blocking calls, which must never run on Swift
/// concurrency's cooperative pool (a blocked pool thread stalls unrelated tasks) nor on NIO's
/// event loops.
enum DedicatedThread {
  /// Starts a thread running `body`.
  static func start(name: String, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread(block: body)
    thread.name = name
    thread.start()
  }

  /// Runs a blocking `body` on a new thread and waits for it without blocking the caller.
  /// Meant for rare calls (administration, flushes); hot paths have their own long-lived thread.
  static func run<Result: Sendable>(
    name: String, _ body: @escaping @Sendable () throws -> Result
  ) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
      start(name: name) {
        continuation.resume(with: Swift.Result { try body() })
      }
    }
  }
}

extension Duration {
  /// Whole milliseconds for librdkafka's `int timeout_ms` parameters, clamped to `0...Int32.max`.
  var milliseconds: Int32 {
    let (seconds, attoseconds) = components
    let total = seconds.multipliedReportingOverflow(by: 1000)
    if total.overflow { return seconds < 0 ? 0 : Int32.max }
    let milliseconds = total.partialValue + attoseconds / 1_000_000_000_000_000
    return Int32(clamping: max(0, milliseconds))
  }
}
