import Foundation
import MartRuntime
import Testing

@testable import Gateway

@Suite struct GatewayConfigurationTests {
  static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  func settings(_ json: String) throws -> GatewaySettings {
    try GatewaySettings(json: Array(json.utf8), source: "test.json")
  }

  @Test func defaultsWithoutAFile() throws {
    let settings = try GatewayConfiguration.settings(atPath: "/nonexistent/gateway.json", required: false)
    #expect(settings.maxBodyBytes == 1 << 20)
    #expect(settings.defaultRateLimit == RateLimitPolicy(name: "default", limit: 100, window: .seconds(60)))
    #expect(settings.defaultDeadline == .seconds(10))
    #expect(settings.cors.allowedOrigins.isEmpty)
    #expect(settings.trustedProxies.isEmpty)
    let configuration = try GatewayConfiguration(environment: EnvironmentReader([:]), auth: .ephemeral())
    #expect(configuration.port == 8000)
  }

  @Test func theShippedFileIsValid() throws {
    let path = Self.repositoryRoot.appendingPathComponent("gateway/gateway.json").path
    let configuration = try GatewayConfiguration(
      environment: EnvironmentReader(["MART_GATEWAY_CONFIG": path]), auth: .ephemeral())
    let settings = configuration.settings
    #expect(
      settings.rateLimit(for: "UserService_Login").limit < settings.rateLimit(for: "ProductService_GetProduct").limit)
    #expect(settings.rateLimit(for: "UserService_Login").name == "login")
    #expect(settings.rateLimit(for: "UserService_GetMe").name == "default")
    #expect(settings.deadline(for: "UserService_Register") == .seconds(15))
    #expect(settings.deadline(for: "UserService_GetMe") == .seconds(10))
    #expect(settings.timeouts == ConnectionTimeouts(), "the shipped file says what the defaults are")
    #expect(settings.requestHeaderFields["PaymentService_StripeWebhook"] == ["signature": "Stripe-Signature"])
    // The shipped (production) policy lets no local development page call the API with a user's token.
    #expect(!settings.cors.allowedOrigins.contains { $0.contains("localhost") || $0.contains("127.0.0.1") })
  }

  @Test func everySettingIsRead() throws {
    let parsed = try settings(
      """
      {
        "maxBodyBytes": 16384,
        "deadlines": { "default": "2s", "routes": { "UserService_Login": "500ms" } },
        "rateLimits": {
          "default": { "limit": 10, "window": "1m" },
          "routes": { "UserService_GetJwks": { "name": "jwks", "limit": 3, "window": "2s" },
                      "UserService_Login": { "limit": 1, "window": "1h" } },
          "maxBuckets": 50
        },
        "cors": { "allowedOrigins": ["https://shop.example"], "allowCredentials": true, "maxAge": "60s",
                  "allowedMethods": ["get"], "allowedHeaders": ["X-A"], "exposedHeaders": ["X-B"] },
        "trustedProxies": ["10.0.0.0/8", "::1"],
        "hsts": "max-age=31536000",
        "requestHeaderFields": {},
        "clientIPFields": { "UserService_Login": "email" },
        "timeouts": { "idle": "1m", "header": "5s", "body": "45s" }
      }
      """)
    #expect(parsed.maxBodyBytes == 16384)
    #expect(parsed.deadline(for: "UserService_Login") == .milliseconds(500))
    #expect(parsed.defaultDeadline == .seconds(2))
    #expect(parsed.defaultRateLimit == RateLimitPolicy(name: "default", limit: 10, window: .seconds(60)))
    #expect(
      parsed.rateLimit(for: "UserService_GetJwks") == RateLimitPolicy(name: "jwks", limit: 3, window: .seconds(2)))
    #expect(parsed.rateLimit(for: "UserService_Login").name == "UserService_Login")
    #expect(parsed.rateLimit(for: "UserService_Login").window == .seconds(3600))
    #expect(parsed.maxRateLimitBuckets == 50)
    #expect(parsed.cors.allowedOrigins == ["https://shop.example"])
    #expect(parsed.cors.allowedMethods == ["GET"])
    #expect(parsed.cors.allowCredentials)
    #expect(parsed.trustedProxies.map(\.description) == ["10.0.0.0/8", "::1/128"])
    #expect(parsed.strictTransportSecurity == "max-age=31536000")
    #expect(parsed.requestHeaderFields.isEmpty)
    #expect(parsed.clientIPFields == ["UserService_Login": "email"])
    #expect(parsed.timeouts.idle == .seconds(60))
    #expect(parsed.timeouts.header == .seconds(5))
    #expect(parsed.timeouts.body == .seconds(45))
    try parsed.validate(against: GatewayRouteTable.routes, source: "test.json")
  }

  @Test func malformedFilesAreConfigurationErrorsNamingTheSetting() throws {
    let cases: [(String, String)] = [
      ("{", "not valid JSON"),
      (#"{"maxBodyBytes": -1}"#, "maxBodyBytes"),
      (#"{"maxBodyBytes": "1MB"}"#, "maxBodyBytes"),
      (#"{"maxBodySize": 1}"#, "maxBodySize: unknown setting"),
      (#"{"rateLimits": {"default": {"limit": 5}}}"#, "window is required"),
      (#"{"rateLimits": {"default": {"limit": 5, "window": "soon"}}}"#, "rateLimits.default.window"),
      (#"{"rateLimits": {"routes": {"X": {"limit": 1, "window": "1s", "burst": 2}}}}"#, "rateLimits.routes.X.burst"),
      (#"{"deadlines": {"default": "0s"}}"#, "deadlines.default"),
      (#"{"trustedProxies": ["10.0.0.0/99"]}"#, "trustedProxies"),
      (#"{"hsts": "includeSubDomains"}"#, "hsts"),
      (#"{"timeouts": {"header": "0s"}}"#, "timeouts.header"),
      (#"{"timeouts": {"read": "10s"}}"#, "timeouts.read: unknown setting"),
      (#"{"cors": {"allowedOrigins": ["*"], "allowCredentials": true}}"#, "cors.allowCredentials"),
      (#"{"cors": {"allowedOrigins": "*"}}"#, "cors.allowedOrigins"),
      (#"{"rateLimits": {"default": {"name": "a\"b", "limit": 1, "window": "1s"}}}"#, "rateLimits.default.name"),
    ]
    for (json, mention) in cases {
      do {
        _ = try settings(json)
        Issue.record("accepted: \(json)")
      } catch let error as ConfigurationError {
        #expect(error.variable == "MART_GATEWAY_CONFIG")
        #expect(error.description.contains(mention), "\(error.description)")
      }
    }
  }

  @Test func unknownOperationIDsAndConflictingPoliciesAreRefused() throws {
    let typo = try settings(#"{"rateLimits": {"routes": {"UserService_Logn": {"limit": 1, "window": "1s"}}}}"#)
    #expect(throws: ConfigurationError.self) { try typo.validate(against: GatewayRouteTable.routes, source: "t") }
    let deadlineTypo = try settings(#"{"deadlines": {"routes": {"Nope": "1s"}}}"#)
    #expect(throws: ConfigurationError.self) {
      try deadlineTypo.validate(against: GatewayRouteTable.routes, source: "t")
    }
    let priorityTypo = try settings(#"{"admission": {"priorityOperations": ["OrderService_WatchOrdr"]}}"#)
    #expect(throws: ConfigurationError.self) {
      try priorityTypo.validate(against: GatewayRouteTable.routes, source: "t")
    }
    // The defaults name real routes.
    try GatewaySettings().validate(against: GatewayRouteTable.routes, source: "defaults")
    let conflict = try settings(
      #"{"rateLimits": {"routes": {"UserService_Login": {"name": "auth", "limit": 1, "window": "1s"}, "#
        + #""UserService_Register": {"name": "auth", "limit": 2, "window": "1s"}}}}"#)
    #expect(throws: ConfigurationError.self) { try conflict.validate(against: GatewayRouteTable.routes, source: "t") }
  }

  /// The admin token has no default, and one short enough to guess is refused at start-up.
  @Test func theAdminTokenComesFromTheEnvironmentAndMustBeLong() throws {
    #expect(try GatewayConfiguration(environment: EnvironmentReader([:]), auth: .ephemeral()).adminToken == nil)
    let long = String(repeating: "k", count: AdminToken.minimumLength)
    let configured = try GatewayConfiguration(
      environment: EnvironmentReader([AdminToken.variable: long]), auth: .ephemeral())
    #expect(configured.adminToken != nil)
    let short = String(repeating: "k", count: AdminToken.minimumLength - 1)
    do {
      _ = try GatewayConfiguration(environment: EnvironmentReader([AdminToken.variable: short]), auth: .ephemeral())
      Issue.record("a short admin token was accepted")
    } catch let error as ConfigurationError {
      #expect(error.variable == AdminToken.variable)
      #expect(!error.description.contains(short), "the secret is not repeated in the error")
    }
  }

  @Test func aMissingExplicitFileIsAnError() {
    #expect(throws: ConfigurationError.self) {
      try GatewayConfiguration(
        environment: EnvironmentReader(["MART_GATEWAY_CONFIG": "/nonexistent/gateway.json"]), auth: .ephemeral())
    }
  }
}
