import Foundation
import Logging

/// The six services of the mart. The raw value is the name used on the command line,
/// in environment variables (`MART_<NAME>_…`) and in logs.
public enum MartService: String, CaseIterable, Sendable, Codable {
  case user, product, inventory, order, payment, notification

  /// The gRPC port each service listens on unless `MART_<NAME>_PORT` says otherwise.
  public var defaultPort: Int {
    switch self {
    case .user: 8006
    case .product: 8005
    case .inventory: 8007
    case .order: 8008
    case .payment: 8002
    case .notification: 8009
    }
  }

  /// The fully qualified name of the service's gRPC API, as reported by `grpc.health.v1`.
  public var grpcServiceName: String {
    switch self {
    case .user: "mart.user.v1.UserService"
    case .product: "mart.product.v1.ProductService"
    case .inventory: "mart.inventory.v1.InventoryService"
    case .order: "mart.order.v1.OrderService"
    case .payment: "mart.payment.v1.PaymentService"
    case .notification: "mart.notification.v1.NotificationService"
    }
  }

  /// The service whose gRPC API has this fully qualified name; nil for any other (health).
  public init?(grpcServiceName name: String) {
    guard let service = Self.byGRPCServiceName[name] else { return nil }
    self = service
  }

  /// Looked up on every outgoing call (`ClientAuthInterceptor`), so built once.
  private static let byGRPCServiceName = Dictionary(uniqueKeysWithValues: allCases.map { ($0.grpcServiceName, $0) })

  /// The database each service owns (database per service).
  public var defaultDatabaseName: String { "mart_\(rawValue)" }

  /// The prefix of the service's own environment variables, e.g. `MART_ORDER`.
  public var environmentPrefix: String { "MART_\(rawValue.uppercased())" }
}

/// A configuration value that cannot be used. Start-up stops with exit code 2 and this message.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
  public var variable: String
  public var value: String
  public var reason: String

  public init(variable: String, value: String, reason: String) {
    self.variable = variable
    self.value = value
    self.reason = reason
  }

  public var description: String {
    "invalid configuration: \(variable)=\"\(value)\": \(reason)"
  }
}

/// A host and port another process can be reached at.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
  public var host: String
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  public var description: String { "\(host):\(port)" }
}

/// Reads typed values from environment variables. Every failure names the variable.
public struct EnvironmentReader: Sendable {
  public var values: [String: String]
  /// Told the name of every variable looked up, set or not: how a test learns which variables a
  /// configuration reads (deploy/'s files must set no variable the mart does not read).
  public var onRead: (@Sendable (String) -> Void)?

  public init(_ values: [String: String] = ProcessInfo.processInfo.environment) {
    self.values = values
  }

  /// The variable's value, or nil when it is unset or empty.
  public func string(_ name: String) -> String? {
    onRead?(name)
    guard let value = values[name], !value.isEmpty else { return nil }
    return value
  }

  public func string(_ name: String, default defaultValue: String) -> String {
    string(name) ?? defaultValue
  }

  public func port(_ name: String, default defaultValue: Int) throws -> Int {
    guard let raw = string(name) else { return defaultValue }
    guard let port = Int(raw), (0...65535).contains(port) else {
      throw ConfigurationError(variable: name, value: raw, reason: "expected a port number 0-65535")
    }
    return port
  }

  /// `key=value,key=value`; an empty or unset variable is an empty dictionary.
  public func keyValuePairs(_ name: String) throws -> [String: String] {
    guard let raw = string(name) else { return [:] }
    var pairs: [String: String] = [:]
    for item in raw.split(separator: ",") {
      let parts = item.split(separator: "=", maxSplits: 1)
      guard parts.count == 2, !parts[0].trimmingWhitespace().isEmpty else {
        throw ConfigurationError(variable: name, value: raw, reason: "expected key=value pairs separated by commas")
      }
      pairs[parts[0].trimmingWhitespace()] = parts[1].trimmingWhitespace()
    }
    return pairs
  }

  public func positiveInteger(_ name: String, default defaultValue: Int) throws -> Int {
    guard let raw = string(name) else { return defaultValue }
    guard let value = Int(raw), value > 0 else {
      throw ConfigurationError(variable: name, value: raw, reason: "expected a positive whole number")
    }
    return value
  }

  public func nonNegativeInteger(_ name: String, default defaultValue: Int) throws -> Int {
    guard let raw = string(name) else { return defaultValue }
    guard let value = Int(raw), value >= 0 else {
      throw ConfigurationError(variable: name, value: raw, reason: "expected a whole number, zero or more")
    }
    return value
  }

  public func bool(_ name: String, default defaultValue: Bool) throws -> Bool {
    guard let raw = string(name) else { return defaultValue }
    switch raw.lowercased() {
    case "1", "true", "yes", "on": return true
    case "0", "false", "no", "off": return false
    default:
      throw ConfigurationError(variable: name, value: raw, reason: "expected true or false")
    }
  }

  /// A duration written as a number with a unit: `250ms`, `5s`, `2m`.
  public func duration(_ name: String, default defaultValue: Duration) throws -> Duration {
    guard let raw = string(name) else { return defaultValue }
    guard let duration = Self.parseDuration(raw), duration > .zero else {
      throw ConfigurationError(
        variable: name, value: raw, reason: "expected a positive duration such as 500ms, 5s, 2m or 24h")
    }
    return duration
  }

  public func endpoint(_ name: String, default defaultValue: Endpoint) throws -> Endpoint {
    guard let raw = string(name) else { return defaultValue }
    guard let colon = raw.lastIndex(of: ":"), let port = Int(raw[raw.index(after: colon)...]),
      (1...65535).contains(port), colon > raw.startIndex
    else {
      throw ConfigurationError(variable: name, value: raw, reason: "expected host:port")
    }
    var host = String(raw[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return Endpoint(host: host, port: port)
  }

  public func logLevel(_ name: String, default defaultValue: Logger.Level) throws -> Logger.Level {
    guard let raw = string(name) else { return defaultValue }
    guard let level = Logger.Level(rawValue: raw.lowercased()) else {
      let levels = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
      throw ConfigurationError(variable: name, value: raw, reason: "expected one of \(levels)")
    }
    return level
  }

  static func parseDuration(_ text: String) -> Duration? {
    let units: [(suffix: String, make: (Int64) -> Duration)] = [
      ("ms", { .milliseconds($0) }), ("s", { .seconds($0) }), ("m", { .seconds($0 * 60) }),
      ("h", { .seconds($0 * 3600) }),
    ]
    for unit in units where text.hasSuffix(unit.suffix) {
      if let number = Int64(text.dropLast(unit.suffix.count)), number >= 0 {
        return unit.make(number)
      }
    }
    return nil
  }
}

/// How logs are written: one JSON object per line (the default, for machines) or plain text.
public enum LogFormat: String, Sendable {
  case json, text
}

/// Everything a service process needs to know, read once at start-up from the environment.
///
/// | variable | default |
/// |---|---|
/// | `MART_BIND_HOST` | `127.0.0.1` |
/// | `MART_<SERVICE>_PORT` | the service's port (user 8006, product 8005, …) |
/// | `MART_<SERVICE>_ADDRESS` | `127.0.0.1:<port>`: where other processes reach the service |
/// | `MART_<SERVICE>_DATABASE_URL` | `postgres://mart@127.0.0.1:5432/mart_<service>` |
/// | `MART_DATABASE_CHECK_INTERVAL` | `5s` |
/// | `MART_DATABASE_CHECK_TIMEOUT` | `5s` |
/// | `MART_DATABASE_WAIT` | `1s` |
/// | `MART_AUTO_MIGRATE` | `true` |
/// | `MART_GATEWAY_PORT` | `8000` |
/// | `MART_LOG_LEVEL` / `MART_LOG_FORMAT` | `info` / `json` |
/// | `KAFKA_BROKERS` | unset: events stay in-process |
/// | `MART_RPC_MAX_IN_FLIGHT` / `MART_RPC_MAX_QUEUED` / `MART_RPC_MAX_QUEUE_WAIT` | `128` / `256` / `500ms` (`admission`) |
/// | `MART_RPC_MAX_QUEUE_WAIT_UNDER_LOAD` | `10ms`: the wait once the queue has stood for 100 ms |
/// | `MART_<SERVICE>_METRICS_PORT` | the gRPC port + 1000 (`metricsPort`; `0`: none) |
public struct ServiceConfiguration: Sendable {
  public var service: MartService
  public var bindHost: String
  public var port: Int
  public var database: DatabaseConfiguration
  /// How often a healthy service re-checks its database (health turns NOT_SERVING on failure).
  public var databaseCheckInterval: Duration
  /// How long one of those checks may take before the database counts as unavailable; also how
  /// long an unreachable database at startup holds each attempt before it is logged and retried.
  public var databaseCheckTimeout: Duration
  /// Apply pending migrations at start-up; when false, the service waits (NOT_SERVING) for `mart migrate`.
  public var autoMigrate: Bool
  /// Admission control over the service's RPCs (health checks excepted): calls handled at once,
  /// how many more may wait, and for how long (less under sustained load), before UNAVAILABLE
  /// with RetryInfo.
  public var admission = AdmissionLimiter.Limits(
    maximumInFlight: 128, maximumQueued: 256, maximumWait: .milliseconds(500))
  /// Where `mart serve` answers GET /metrics (Prometheus); nil: nowhere.
  public var metricsPort: Int?
  /// How long a call may wait for a database that does not answer before the service checks it
  /// on a connection of its own and, if it is gone, answers UNAVAILABLE with RetryInfo (turning
  /// NOT_SERVING, so that later calls are refused at once) instead of keeping the caller waiting.
  public var databaseWait: Duration

  public init(
    service: MartService, bindHost: String = "127.0.0.1", port: Int, database: DatabaseConfiguration,
    databaseCheckInterval: Duration = .seconds(5), databaseCheckTimeout: Duration = .seconds(5),
    autoMigrate: Bool = true, databaseWait: Duration = .seconds(1)
  ) {
    self.service = service
    self.bindHost = bindHost
    self.port = port
    self.database = database
    self.databaseCheckInterval = databaseCheckInterval
    self.databaseCheckTimeout = databaseCheckTimeout
    self.autoMigrate = autoMigrate
    self.databaseWait = databaseWait
  }

  public init(_ service: MartService, environment env: EnvironmentReader) throws {
    let prefix = service.environmentPrefix
    self.init(
      service: service,
      bindHost: env.string("MART_BIND_HOST", default: "127.0.0.1"),
      port: try env.port("\(prefix)_PORT", default: service.defaultPort),
      database: try DatabaseConfiguration(
        variable: "\(prefix)_DATABASE_URL",
        url: env.string(
          "\(prefix)_DATABASE_URL",
          default: "postgres://mart@127.0.0.1:5432/\(service.defaultDatabaseName)")),
      databaseCheckInterval: try env.duration("MART_DATABASE_CHECK_INTERVAL", default: .seconds(5)),
      databaseCheckTimeout: try env.duration("MART_DATABASE_CHECK_TIMEOUT", default: .seconds(5)),
      autoMigrate: try env.bool("MART_AUTO_MIGRATE", default: true),
      databaseWait: try env.duration("MART_DATABASE_WAIT", default: .seconds(1))
    )
    admission = AdmissionLimiter.Limits(
      maximumInFlight: try env.positiveInteger("MART_RPC_MAX_IN_FLIGHT", default: admission.maximumInFlight),
      maximumQueued: try env.nonNegativeInteger("MART_RPC_MAX_QUEUED", default: admission.maximumQueued),
      maximumWait: try env.duration("MART_RPC_MAX_QUEUE_WAIT", default: admission.maximumWait),
      maximumWaitUnderLoad: try env.duration(
        "MART_RPC_MAX_QUEUE_WAIT_UNDER_LOAD", default: admission.maximumWaitUnderLoad))
    let metrics = try env.port("\(prefix)_METRICS_PORT", default: port == 0 ? 0 : port + 1000)
    metricsPort = metrics == 0 ? nil : metrics
  }
}

/// Where every service of the mart can be reached, for the gateway and for service-to-service calls.
public struct ServiceDirectory: Sendable {
  public var endpoints: [MartService: Endpoint]

  public init(endpoints: [MartService: Endpoint]) {
    self.endpoints = endpoints
  }

  public init(environment env: EnvironmentReader) throws {
    var endpoints: [MartService: Endpoint] = [:]
    for service in MartService.allCases {
      let port = try env.port("\(service.environmentPrefix)_PORT", default: service.defaultPort)
      endpoints[service] = try env.endpoint(
        "\(service.environmentPrefix)_ADDRESS", default: Endpoint(host: "127.0.0.1", port: port))
    }
    self.endpoints = endpoints
  }

  public subscript(service: MartService) -> Endpoint {
    endpoints[service] ?? Endpoint(host: "127.0.0.1", port: service.defaultPort)
  }
}

/// Settings shared by every process: logging and the event transport.
public struct ProcessConfiguration: Sendable {
  public var logLevel: Logger.Level
  public var logFormat: LogFormat
  /// Kafka bootstrap servers; nil means events are delivered in-process.
  public var kafkaBrokers: String?
  /// Partitions of each topic the mart creates (`MART_KAFKA_PARTITIONS`, default 6).
  public var kafkaPartitions: Int
  /// Extra librdkafka properties for every Kafka client (`MART_KAFKA_PROPERTIES`, `key=value,…`),
  /// e.g. `security.protocol=SASL_SSL,sasl.mechanism=PLAIN` or `session.timeout.ms=6000`.
  public var kafkaProperties: [String: String]
  /// Put before every topic and consumer-group name on the broker (`MART_KAFKA_TOPIC_PREFIX`,
  /// default none), so that environments can share a cluster.
  public var kafkaTopicPrefix: String
  /// How a failing event handler is retried before its event is dead-lettered
  /// (`MART_EVENT_MAX_ATTEMPTS`, default 5; `MART_EVENT_RETRY_BACKOFF`, default 200ms, doubling up to 10 s).
  public var retryPolicy: RetryPolicy

  public init(environment env: EnvironmentReader) throws {
    logLevel = try env.logLevel("MART_LOG_LEVEL", default: .info)
    let format = env.string("MART_LOG_FORMAT", default: "json")
    guard let logFormat = LogFormat(rawValue: format) else {
      throw ConfigurationError(variable: "MART_LOG_FORMAT", value: format, reason: "expected json or text")
    }
    self.logFormat = logFormat
    kafkaBrokers = env.string("KAFKA_BROKERS")
    kafkaPartitions = try env.positiveInteger("MART_KAFKA_PARTITIONS", default: 6)
    kafkaProperties = try env.keyValuePairs("MART_KAFKA_PROPERTIES")
    kafkaTopicPrefix = env.string("MART_KAFKA_TOPIC_PREFIX", default: "")
    retryPolicy = RetryPolicy(
      maximumAttempts: try env.positiveInteger("MART_EVENT_MAX_ATTEMPTS", default: 5),
      initialBackoff: try env.duration("MART_EVENT_RETRY_BACKOFF", default: .milliseconds(200)))
  }
}

extension Duration {
  /// Whole microseconds (what PostgreSQL intervals hold).
  public var microseconds: Int64 {
    let (seconds, attoseconds) = components
    return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
  }

  /// Seconds, for Foundation's dates.
  public var timeInterval: Double { Double(microseconds) / 1_000_000 }
}
