internal import CRdKafka

/// An error reported by librdkafka or by this module, carrying librdkafka's error code.
///
/// The codes are librdkafka's `rd_kafka_resp_err_t` values: negative codes are the client's own
/// (`_MSG_TIMED_OUT`, `_QUEUE_FULL`, `_DESTROY`, …), positive ones are the broker's
/// (`TOPIC_ALREADY_EXISTS`, `UNKNOWN_TOPIC_OR_PART`, …). Errors this module raises by itself reuse
/// the librdkafka code that means the same thing (a send after shutdown is `_DESTROY`, like
/// librdkafka's own "handle destroyed"), so callers need to know one set of codes.
public struct KafkaError: Error, Sendable, Hashable, CustomStringConvertible {
  /// librdkafka's error code.
  public var code: Code
  /// librdkafka's human-readable explanation (or ours), for logs.
  public var message: String
  /// True when librdkafka considers the client unusable (`rd_kafka_fatal_error`): an idempotent
  /// producer that lost its guarantees, a fenced consumer. Such a client must be recreated.
  public var isFatal: Bool

  public init(code: Code, message: String, isFatal: Bool = false) {
    self.code = code
    self.message = message
    self.isFatal = isFatal
  }

  public var description: String {
    "\(code.name) (\(code.rawValue))\(isFatal ? ", fatal" : ""): \(message)"
  }

  /// A librdkafka error code (`rd_kafka_resp_err_t`).
  public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32

    public init(rawValue: Int32) {
      self.rawValue = rawValue
    }

    init(_ error: rd_kafka_resp_err_t) {
      rawValue = error.rawValue
    }

    /// librdkafka's symbolic name without the `RD_KAFKA_RESP_ERR_` prefix, e.g. `_MSG_TIMED_OUT`.
    public var name: String {
      rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: rawValue)).map { String(cString: $0) } ?? "ERR_\(rawValue)"
    }

    /// librdkafka's description of the code, e.g. "Local: Message timed out".
    public var explanation: String {
      rd_kafka_err2str(rd_kafka_resp_err_t(rawValue: rawValue)).map { String(cString: $0) } ?? "error \(rawValue)"
    }

    public var description: String { name }

    /// `_MSG_TIMED_OUT`: the message was not acknowledged within `message.timeout.ms`.
    public static let messageTimedOut = Code(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
    /// `_QUEUE_FULL`: the producer's local queue is full (handled internally by waiting).
    public static let queueFull = Code(RD_KAFKA_RESP_ERR__QUEUE_FULL)
    /// `_DESTROY`: the client was shut down or closed.
    public static let destroyed = Code(RD_KAFKA_RESP_ERR__DESTROY)
    /// `_PURGE_QUEUE`: the producer shut down before the message was sent.
    public static let purgedFromQueue = Code(RD_KAFKA_RESP_ERR__PURGE_QUEUE)
    /// `_PURGE_INFLIGHT`: the producer shut down while the message was in flight; it may or
    /// may not have been written.
    public static let purgedInFlight = Code(RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
    /// `_TIMED_OUT`: a flush or an administrative request did not finish in time.
    public static let timedOut = Code(RD_KAFKA_RESP_ERR__TIMED_OUT)
    /// `_STATE`: the operation is not valid now, e.g. committing a partition no longer assigned.
    public static let state = Code(RD_KAFKA_RESP_ERR__STATE)
    /// `_INVALID_ARG`: an invalid configuration value or argument.
    public static let invalidArgument = Code(RD_KAFKA_RESP_ERR__INVALID_ARG)
    /// `_FATAL`: the client raised a fatal error.
    public static let fatal = Code(RD_KAFKA_RESP_ERR__FATAL)
    /// `PRODUCER_FENCED`: the broker has given the producer's id to a newer producer.
    public static let producerFenced = Code(RD_KAFKA_RESP_ERR_PRODUCER_FENCED)
    /// `_UNKNOWN_TOPIC`: the topic is not known to the cluster.
    public static let unknownTopic = Code(RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC)
    /// `UNKNOWN_TOPIC_OR_PART`: the broker does not host this topic or partition.
    public static let unknownTopicOrPartition = Code(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    /// `TOPIC_ALREADY_EXISTS`: a topic to create exists already.
    public static let topicAlreadyExists = Code(RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
  }
}

extension KafkaError {
  /// An error for a librdkafka code, with librdkafka's own explanation unless one is given.
  init(_ error: rd_kafka_resp_err_t, _ message: String? = nil) {
    let code = Code(error)
    self.init(code: code, message: message ?? code.explanation)
  }

  /// Takes over an `rd_kafka_error_t` (destroying it) and returns it as a `KafkaError`.
  static func consuming(_ error: OpaquePointer) -> KafkaError {
    defer { rd_kafka_error_destroy(error) }
    let message = rd_kafka_error_string(error).map { String(cString: $0) }
    return KafkaError(
      code: Code(rd_kafka_error_code(error)), message: message ?? "", isFatal: rd_kafka_error_is_fatal(error) != 0)
  }

  /// The client's fatal error, with the underlying code librdkafka reports through
  /// `rd_kafka_fatal_error` (the `_FATAL` code itself only says that there is one).
  static func fatalError(of handle: OpaquePointer) -> KafkaError {
    raisedFatalError(of: handle) ?? KafkaError(code: .fatal, message: "fatal error", isFatal: true)
  }

  /// The client's fatal error, or nil if it has raised none.
  static func raisedFatalError(of handle: OpaquePointer) -> KafkaError? {
    var buffer = [CChar](repeating: 0, count: 512)
    let underlying = rd_kafka_fatal_error(handle, &buffer, buffer.count)
    guard underlying != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
    let message = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return KafkaError(code: Code(underlying), message: message, isFatal: true)
  }

  static func destroyed(_ what: String) -> KafkaError {
    KafkaError(code: .destroyed, message: what)
  }
}

/// A librdkafka configuration property was rejected (`rd_kafka_conf_set`): unknown name or
/// invalid value. The value itself is not repeated, since properties may hold secrets.
public struct KafkaConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The property's name, e.g. `message.timeout.ms`.
  public var property: String
  /// librdkafka's explanation.
  public var reason: String

  public init(property: String, reason: String) {
    self.property = property
    self.reason = reason
  }

  public var description: String { "librdkafka property \(property): \(reason)" }
}
