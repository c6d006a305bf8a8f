import Foundation
import MartCore

// The gateway's settings: where it listens and where the services are (environment, like every
// Mart process), and the edge policy (body limit, deadlines, rate limits, CORS, trusted proxies,
// fields the gateway fills) from a JSON file, `MART_GATEWAY_CONFIG` (default
// gateway/gateway.json; see gateway/README.md). Every setting has a default, so a missing file at
// the default path is fine; a file that is there but wrong stops start-up (ConfigurationError,
// exit 2) naming the setting.

/// Settings of the edge gateway.
public struct GatewayConfiguration: Sendable {
  public var bindHost: String
  public var port: Int
  public var directory: ServiceDirectory
  /// Issuer and audience of access tokens, and the gateway's own key (`MART_GATEWAY_KEY`), which
  /// vouches for client addresses and can make no service token.
  public var auth: AuthConfiguration
  /// The edge policy, from the configuration file.
  public var settings: GatewaySettings
  /// The bearer token that reads /metrics and /readyz's detail (`MART_GATEWAY_ADMIN_TOKEN`, a
  /// secret, so from the environment and not the file); nil: nobody reads them.
  public var adminToken: AdminToken?

  public init(
    bindHost: String = "127.0.0.1", port: Int = 8000, directory: ServiceDirectory,
    auth: AuthConfiguration = AuthConfiguration(keys: .none), settings: GatewaySettings = GatewaySettings(),
    adminToken: AdminToken? = nil
  ) {
    self.bindHost = bindHost
    self.port = port
    self.directory = directory
    self.auth = auth
    self.settings = settings
    self.adminToken = adminToken
  }

  public static let configFileVariable = "MART_GATEWAY_CONFIG"
  public static let defaultConfigFile = "gateway/gateway.json"

  /// `auth`: nil to read the gateway's own (`mart serve gateway`); `mart dev` passes the one its
  /// services share.
  public init(environment env: EnvironmentReader, auth: AuthConfiguration? = nil) throws {
    let explicitPath = env.string(Self.configFileVariable)
    let path = explicitPath ?? Self.defaultConfigFile
    let settings = try Self.settings(atPath: path, required: explicitPath != nil)
    try settings.validate(against: GatewayRouteTable.routes, source: path)
    self.init(
      bindHost: env.string("MART_BIND_HOST", default: "127.0.0.1"),
      port: try env.port("MART_GATEWAY_PORT", default: 8000),
      directory: try ServiceDirectory(environment: env),
      auth: try auth ?? AuthConfiguration(environment: env, for: .gateway),
      settings: settings,
      adminToken: try AdminToken(environment: env))
  }
}

extension GatewayConfiguration {
  /// The settings in the file at `path`; the defaults if there is none and none was `required`.
  static func settings(atPath path: String, required: Bool) throws -> GatewaySettings {
    guard FileManager.default.fileExists(atPath: path) else {
      if required {
        throw ConfigurationError(variable: configFileVariable, value: path, reason: "no such file")
      }
      return GatewaySettings()
    }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw ConfigurationError(variable: configFileVariable, value: path, reason: "cannot read the file")
    }
    return try GatewaySettings(json: Array(data), source: path)
  }
}

/// The edge policy. Each property's default is what the gateway does without a file.
public struct GatewaySettings: Sendable {
  /// Largest request body accepted (413 beyond).
  public var maxBodyBytes = 1 << 20
  /// How often a Server-Sent Events stream that has nothing to say sends a comment line, so that
  /// proxies and clients do not take it for dead.
  public var streamHeartbeat: Duration = .seconds(15)
  /// HTTP/2 connections to each service (`"upstreamConnections"`). A server closes a connection
  /// on which its client gave up on more than 200 calls in 30 s (the HTTP/2 rapid-reset
  /// defence), and the gateway gives up on a call for every client that leaves a watch or a
  /// request early: calls go to the least loaded of these connections so that none nears the
  /// limit (`UpstreamConnections`).
  public var upstreamConnections = 8
  /// The gRPC deadline of a call, unless its route has its own (by operationID).
  public var defaultDeadline: Duration = .seconds(10)
  public var routeDeadlines: [String: Duration] = [:]
  /// The rate-limit policy of routes without their own, and the routes' own (by operationID).
  public var defaultRateLimit = RateLimitPolicy(name: "default", limit: 100, window: .seconds(60))
  public var routeRateLimits: [String: RateLimitPolicy] = [:]
  /// Hard cap on the number of rate-limit buckets kept in memory.
  public var maxRateLimitBuckets = 100_000
  public var cors = CORSSettings()
  /// Proxies whose `X-Forwarded-For` is believed.
  public var trustedProxies: [IPNetwork] = []
  /// The `Strict-Transport-Security` value every answer carries, when the gateway is reached over
  /// TLS only (behind a TLS-terminating proxy); nil: none (configuration `"hsts"`).
  public var strictTransportSecurity: String?
  /// How long a connection may go without a request making progress (slow clients).
  public var timeouts = ConnectionTimeouts()
  /// Admission control over the routes (`"admission"`): requests handled at once, how many more
  /// may wait and for how long (`maxQueueWaitUnderLoad` once the queue has stood for 100 ms); the
  /// rest are answered 503 with Retry-After at once.
  public var admission = AdmissionLimiter.Limits(
    maximumInFlight: 256, maximumQueued: 512, maximumWait: .milliseconds(250))
  /// The routes admitted with priority (`"admission": {"priorityOperations": [...]}`): they may use
  /// every slot and are served first, the others only three quarters. By default, what finishes
  /// an order already placed: paying for it, following it, cancelling it, and the payment
  /// providers' notifications.
  public var admissionPriorityOperations: Set<String> = [
    "OrderService_GetOrder", "OrderService_WatchOrder", "OrderService_CancelOrder", "PaymentService_CreatePayment",
    "PaymentService_GetPayment", "PaymentService_StripeWebhook", "PaymentService_PayfastWebhook",
  ]
  /// Request fields the gateway fills from request headers, by operationID: field → header.
  public var requestHeaderFields: [String: [String: String]] = [
    "PaymentService_StripeWebhook": ["signature": "Stripe-Signature"],
    "NotificationService_TwilioStatusCallback": ["signature": "X-Twilio-Signature"],
    // draft-ietf-httpapi-idempotency-key-header: the key of a retried POST.
    "OrderService_CreateOrder": ["request_id": "Idempotency-Key"],
    "PaymentService_CreatePayment": ["request_id": "Idempotency-Key"],
    "PaymentService_RefundPayment": ["request_id": "Idempotency-Key"],
    // Server-Sent Events: a reconnecting client names the last event it saw.
    "OrderService_WatchOrder": ["last_event_id": "Last-Event-ID"],
  ]
  /// A request field the gateway fills with the client's address, by operationID.
  public var clientIPFields: [String: String] = ["PaymentService_PayfastWebhook": "source_ip"]

  public init() {}

  public func deadline(for operationID: String) -> Duration {
    routeDeadlines[operationID] ?? defaultDeadline
  }

  public func rateLimit(for operationID: String) -> RateLimitPolicy {
    routeRateLimits[operationID] ?? defaultRateLimit
  }

  /// Checks that every operationID named exists, and that policies sharing a name agree.
  public func validate(against routes: [GatewayRoute], source: String) throws {
    let known = Set(routes.map(\.operationID))
    func check(_ ids: some Sequence<String>, _ setting: String) throws {
      for id in ids where !known.contains(id) {
        throw ConfigurationError(
          variable: GatewayConfiguration.configFileVariable, value: source,
          reason: "\(setting): no route has operationID \(id.debugDescription)")
      }
    }
    try check(routeDeadlines.keys, "deadlines.routes")
    try check(routeRateLimits.keys, "rateLimits.routes")
    try check(admissionPriorityOperations, "admission.priorityOperations")
    var byName: [String: RateLimitPolicy] = [defaultRateLimit.name: defaultRateLimit]
    for (id, policy) in routeRateLimits.sorted(by: { $0.key < $1.key }) {
      if let other = byName[policy.name], other != policy {
        throw ConfigurationError(
          variable: GatewayConfiguration.configFileVariable, value: source,
          reason: "rateLimits.routes.\(id): policy name \(policy.name.debugDescription) is used with other limits")
      }
      byName[policy.name] = policy
    }
    // Fields the gateway fills are checked against the schemas when the routes are compiled;
    // for routes not in this build's table they are simply unused.
  }
}

/// Limits on how long a client may hold a connection without a request making progress, so that a
/// slow client (slowloris) cannot hold connections for ever (SlowClientTimeouts.swift).
public struct ConnectionTimeouts: Sendable, Equatable {
  /// A connection on which nothing arrives that completes a request head (a new one, or one kept
  /// alive after its answer) is closed after this long.
  public var idle: Duration = .seconds(30)
  /// From the first bytes of a request to the end of its head.
  public var header: Duration = .seconds(10)
  /// From a request's head to the end of its body.
  public var body: Duration = .seconds(30)

  public init() {}
}

/// Cross-origin access for browser clients.
public struct CORSSettings: Sendable {
  /// Exact origins (`https://shop.example.com`), or `*` for any. Empty: no CORS headers at all.
  public var allowedOrigins: [String] = []
  public var allowedMethods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
  public var allowedHeaders = [
    "Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-Id", "traceparent",
  ]
  public var exposedHeaders = ["RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"]
  public var allowCredentials = false
  /// How long a browser may cache a preflight answer.
  public var maxAge: Duration = .seconds(600)

  public init() {}
}

// MARK: Reading the file

extension GatewaySettings {
  /// Reads the JSON configuration file; unknown keys are errors (a misspelt setting must not be
  /// silently ignored). Keys named `$comment` are ignored everywhere.
  public init(json bytes: [UInt8], source: String) throws {
    self.init()
    let root: JSONValue
    do {
      root = try JSONParser.parse(bytes)
    } catch {
      throw ConfigurationError(
        variable: GatewayConfiguration.configFileVariable, value: source, reason: "not valid JSON: \(error)")
    }
    let reader = SettingsReader(source: source)
    let top = try reader.object(root, "")
    for (key, value) in top {
      switch key {
      case "maxBodyBytes":
        maxBodyBytes = try reader.positiveInteger(value, key)
      case "streamHeartbeat":
        streamHeartbeat = try reader.duration(value, key)
      case "upstreamConnections":
        upstreamConnections = try reader.positiveInteger(value, key)
      case "deadlines":
        for (subkey, subvalue) in try reader.object(value, key) {
          switch subkey {
          case "default": defaultDeadline = try reader.duration(subvalue, "deadlines.default")
          case "routes":
            for (id, deadline) in try reader.object(subvalue, "deadlines.routes") {
              routeDeadlines[id] = try reader.duration(deadline, "deadlines.routes.\(id)")
            }
          default: throw reader.unknown("deadlines.\(subkey)")
          }
        }
      case "rateLimits":
        for (subkey, subvalue) in try reader.object(value, key) {
          switch subkey {
          case "default": defaultRateLimit = try reader.policy(subvalue, "rateLimits.default", defaultName: "default")
          case "routes":
            for (id, policy) in try reader.object(subvalue, "rateLimits.routes") {
              routeRateLimits[id] = try reader.policy(policy, "rateLimits.routes.\(id)", defaultName: id)
            }
          case "maxBuckets": maxRateLimitBuckets = try reader.positiveInteger(subvalue, "rateLimits.maxBuckets")
          default: throw reader.unknown("rateLimits.\(subkey)")
          }
        }
      case "cors":
        for (subkey, subvalue) in try reader.object(value, key) {
          let name = "cors.\(subkey)"
          switch subkey {
          case "allowedOrigins": cors.allowedOrigins = try reader.strings(subvalue, name)
          case "allowedMethods": cors.allowedMethods = try reader.strings(subvalue, name).map { $0.uppercased() }
          case "allowedHeaders": cors.allowedHeaders = try reader.strings(subvalue, name)
          case "exposedHeaders": cors.exposedHeaders = try reader.strings(subvalue, name)
          case "allowCredentials": cors.allowCredentials = try reader.bool(subvalue, name)
          case "maxAge": cors.maxAge = try reader.duration(subvalue, name)
          default: throw reader.unknown(name)
          }
        }
        // Credentials for any origin would let every site act with a user's cookies or auth.
        if cors.allowCredentials && cors.allowedOrigins.contains("*") {
          throw reader.invalid(
            "cors.allowCredentials", "cannot be true while cors.allowedOrigins allows \"*\": list the origins")
        }
      case "timeouts":
        for (subkey, subvalue) in try reader.object(value, key) {
          let name = "timeouts.\(subkey)"
          switch subkey {
          case "idle": timeouts.idle = try reader.duration(subvalue, name)
          case "header": timeouts.header = try reader.duration(subvalue, name)
          case "body": timeouts.body = try reader.duration(subvalue, name)
          default: throw reader.unknown(name)
          }
        }
      case "admission":
        for (subkey, subvalue) in try reader.object(value, key) {
          let name = "admission.\(subkey)"
          switch subkey {
          case "maxInFlight": admission.maximumInFlight = try reader.positiveInteger(subvalue, name)
          case "maxQueued": admission.maximumQueued = try reader.nonNegativeInteger(subvalue, name)
          case "maxQueueWait": admission.maximumWait = try reader.duration(subvalue, name)
          case "maxQueueWaitUnderLoad": admission.maximumWaitUnderLoad = try reader.duration(subvalue, name)
          case "priorityOperations":
            admissionPriorityOperations = Set(try reader.strings(subvalue, name))
          default: throw reader.unknown(name)
          }
        }
      case "hsts":
        let text = try reader.string(value, key)
        guard text.hasPrefix("max-age="), !text.contains("\r"), !text.contains("\n") else {
          throw reader.invalid(key, "expected a Strict-Transport-Security value such as \"max-age=31536000\"")
        }
        strictTransportSecurity = text
      case "trustedProxies":
        trustedProxies = try reader.strings(value, key).map { text in
          guard let network = IPNetwork(text) else {
            throw reader.invalid(key, "\(text.debugDescription) is not an address or CIDR block")
          }
          return network
        }
      case "requestHeaderFields":
        requestHeaderFields = [:]
        for (id, fields) in try reader.object(value, key) {
          var mapping: [String: String] = [:]
          for (field, header) in try reader.object(fields, "\(key).\(id)") {
            mapping[field] = try reader.string(header, "\(key).\(id).\(field)")
          }
          requestHeaderFields[id] = mapping
        }
      case "clientIPFields":
        clientIPFields = [:]
        for (id, field) in try reader.object(value, key) {
          clientIPFields[id] = try reader.string(field, "\(key).\(id)")
        }
      default:
        throw reader.unknown(key)
      }
    }
  }
}

/// Typed reads from the parsed file, each failure naming the setting.
private struct SettingsReader {
  var source: String

  func invalid(_ key: String, _ reason: String) -> ConfigurationError {
    ConfigurationError(variable: GatewayConfiguration.configFileVariable, value: source, reason: "\(key): \(reason)")
  }

  func unknown(_ key: String) -> ConfigurationError { invalid(key, "unknown setting") }

  func object(_ value: JSONValue, _ key: String) throws -> [(String, JSONValue)] {
    guard case .object(let members) = value else { throw invalid(key.isEmpty ? "(file)" : key, "expected an object") }
    var seen: Set<String> = []
    var result: [(String, JSONValue)] = []
    for member in members where member.key != "$comment" {
      guard seen.insert(member.key).inserted else { throw invalid("\(key).\(member.key)", "given twice") }
      result.append((member.key, member.value))
    }
    return result
  }

  func string(_ value: JSONValue, _ key: String) throws -> String {
    guard case .string(let text) = value, !text.isEmpty else { throw invalid(key, "expected a non-empty string") }
    return text
  }

  func strings(_ value: JSONValue, _ key: String) throws -> [String] {
    guard case .array(let values) = value else { throw invalid(key, "expected an array of strings") }
    return try values.map { try string($0, key) }
  }

  func bool(_ value: JSONValue, _ key: String) throws -> Bool {
    guard case .bool(let flag) = value else { throw invalid(key, "expected true or false") }
    return flag
  }

  func positiveInteger(_ value: JSONValue, _ key: String) throws -> Int {
    guard case .number(let text) = value, let number = Int(text), number > 0 else {
      throw invalid(key, "expected a positive whole number")
    }
    return number
  }

  func nonNegativeInteger(_ value: JSONValue, _ key: String) throws -> Int {
    guard case .number(let text) = value, let number = Int(text), number >= 0 else {
      throw invalid(key, "expected a whole number, zero or more")
    }
    return number
  }

  /// `250ms`, `10s`, `2m`, `1h`.
  func duration(_ value: JSONValue, _ key: String) throws -> Duration {
    guard case .string(let text) = value, let duration = Self.parseDuration(text), duration > .zero else {
      throw invalid(key, "expected a positive duration such as 500ms, 10s, 2m or 1h")
    }
    return duration
  }

  static func parseDuration(_ text: String) -> Duration? {
    let units: [(suffix: String, make: (Int64) -> Duration)] = [
      ("ms", { .milliseconds($0) }), ("s", { .seconds($0) }), ("m", { .seconds($0 * 60) }),
      ("h", { .seconds($0 * 3600) }),
    ]
    for unit in units where text.hasSuffix(unit.suffix) {
      let number = text.dropLast(unit.suffix.count)
      if number.allSatisfy(\.isNumber), let value = Int64(number), value <= 1_000_000_000 {
        return unit.make(value)
      }
    }
    return nil
  }

  func policy(_ value: JSONValue, _ key: String, defaultName: String) throws -> RateLimitPolicy {
    var name = defaultName
    var limit: Int?
    var window: Duration?
    for (subkey, subvalue) in try object(value, key) {
      switch subkey {
      case "name": name = try string(subvalue, "\(key).name")
      case "limit": limit = try positiveInteger(subvalue, "\(key).limit")
      case "window": window = try duration(subvalue, "\(key).window")
      default: throw unknown("\(key).\(subkey)")
      }
    }
    guard let limit else { throw invalid(key, "limit is required") }
    guard let window else { throw invalid(key, "window is required") }
    // The name goes into a structured-field string in the RateLimit headers.
    guard name.unicodeScalars.allSatisfy({ $0.isPrintableASCII && $0 != "\"" && $0 != "\\" }) else {
      throw invalid("\(key).name", "printable ASCII without quotes or backslashes")
    }
    return RateLimitPolicy(name: name, limit: limit, window: window)
  }
}
