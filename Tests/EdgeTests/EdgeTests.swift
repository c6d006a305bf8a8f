import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Gateway
import InventoryService
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import NotificationService
import OrderService
import PaymentService
import PostgresNIO
import ProductService
import ServiceLifecycle
import Synchronization
import Testing
import UserService

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// The edge as a client meets it: the real gateway in front of the real user service on a real
/// PostgreSQL, spoken to in JSON over HTTP. Nothing is stubbed.
@Suite struct EdgeTests {
  @Test func registerLoginMeRefreshLogoutThroughTheJSONAPI() async throws {
    try await withEdge { edge in
      let email = "Ada.\(UUID().uuidString.prefix(6))@Example.com"
      let registered = try await edge.call(
        "POST", "/v1/auth/register", json: ["email": email, "password": "correct horse 1", "fullName": "Ada"])
      #expect(registered.status == 200, "\(registered.text)")
      #expect(try registered.json()["email"] as? String == email.lowercased())
      // A taken email gets the very same answer (no 409): Register tells nobody who has an account.
      let again = try await edge.call(
        "POST", "/v1/auth/register",
        json: ["email": email.uppercased(), "password": "other horse 2", "fullName": "Eve"])
      #expect(again.status == 200, "\(again.text)")
      #expect(again.body == registered.body)

      let login = try await edge.call(
        "POST", "/v1/auth/login", json: ["email": email.uppercased(), "password": "correct horse 1"])
      #expect(login.status == 200, "\(login.text)")
      let user = try login.object("user")
      #expect(user["email"] as? String == email.lowercased())
      #expect((user["roles"] as? [String]) == ["CUSTOMER"])
      #expect(user["emailVerified"] as? Bool != true)
      let tokens = try login.object("tokens")
      let access = try #require(tokens["accessToken"] as? String)
      let refresh = try #require(tokens["refreshToken"] as? String)
      #expect(tokens["tokenType"] as? String == "Bearer")

      let me = try await edge.call("GET", "/v1/users/me", token: access)
      #expect(me.status == 200, "\(me.text)")
      #expect(try me.json()["email"] as? String == email.lowercased())

      let refreshed = try await edge.call("POST", "/v1/auth/refresh", json: ["refreshToken": refresh])
      #expect(refreshed.status == 200, "\(refreshed.text)")
      let next = try #require(try refreshed.object("tokens")["refreshToken"] as? String)
      #expect(next != refresh)
      let nextAccess = try #require(try refreshed.object("tokens")["accessToken"] as? String)
      #expect(try await edge.call("GET", "/v1/users/me", token: nextAccess).status == 200)

      let logout = try await edge.call("POST", "/v1/auth/logout", json: ["refreshToken": next], token: nextAccess)
      #expect(logout.status == 200, "\(logout.text)")
      let afterLogout = try await edge.call("POST", "/v1/auth/refresh", json: ["refreshToken": next])
      #expect(afterLogout.status == 401)
      try afterLogout.expectStatusBody(code: 16)

      // Passwords: a reset request answers the same for any email; a bad token is a 400 naming
      // it; ChangePassword needs a token and the current password, and answers new tokens.
      for address in [email, "nobody-\(UUID().uuidString.prefix(6))@example.com"] {
        let asked = try await edge.call("POST", "/v1/auth/password-reset", json: ["email": address])
        #expect(asked.status == 200, "\(asked.text)")
        #expect(asked.text == "{}")
      }
      let badReset = try await edge.call(
        "POST", "/v1/auth/password-reset:confirm", json: ["token": "nope", "newPassword": "a fine new password"])
      #expect(badReset.status == 400, "\(badReset.text)")
      try badReset.expectStatusBody(code: 3, naming: "token")
      let unsigned = try await edge.call(
        "POST", "/v1/users/me/password:change",
        json: ["currentPassword": "correct horse 1", "newPassword": "a fine new password"])
      #expect(unsigned.status == 401)
      let wrongCurrent = try await edge.call(
        "POST", "/v1/users/me/password:change",
        json: ["currentPassword": "not it at all", "newPassword": "a fine new password"], token: nextAccess)
      #expect(wrongCurrent.status == 401, "\(wrongCurrent.text)")
      let changed = try await edge.call(
        "POST", "/v1/users/me/password:change",
        json: ["currentPassword": "correct horse 1", "newPassword": "a fine new password"], token: nextAccess)
      #expect(changed.status == 200, "\(changed.text)")
      #expect(try changed.object("tokens")["accessToken"] is String)
      let withNew = try await edge.call(
        "POST", "/v1/auth/login", json: ["email": email, "password": "a fine new password"])
      #expect(withNew.status == 200, "\(withNew.text)")
    }
  }

  @Test func reusingARefreshTokenRevokesItsWholeFamily() async throws {
    try await withEdge { edge in
      let (_, refresh) = try await edge.register()
      let first = try await edge.call("POST", "/v1/auth/refresh", json: ["refreshToken": refresh])
      #expect(first.status == 200)
      let successor = try #require(try first.object("tokens")["refreshToken"] as? String)
      // The stolen copy is replayed: refused, and the thief's use burns the legitimate chain too.
      let replay = try await edge.call("POST", "/v1/auth/refresh", json: ["refreshToken": refresh])
      #expect(replay.status == 401)
      try replay.expectStatusBody(code: 16)
      let legitimate = try await edge.call("POST", "/v1/auth/refresh", json: ["refreshToken": successor])
      #expect(legitimate.status == 401)
    }
  }

  @Test func everyForgedOrInvalidTokenIs401() async throws {
    try await withEdge { edge in
      let (access, _) = try await edge.register()
      #expect(try await edge.call("GET", "/v1/users/me", token: access).status == 200)
      let genuine = try await edge.currentSigningKey()
      let claims = try JSONDecoder().decode(
        AccessTokenClaims.self, from: try #require(Base64URL.decode(access.split(separator: ".")[1])))
      let now = Int64(Date().timeIntervalSince1970)
      func signed(_ change: (inout AccessTokenClaims) -> Void) throws -> String {
        var forged = claims
        forged.jti = UUID().uuidString
        change(&forged)
        return try genuine.sign(forged)
      }
      let parts = access.split(separator: ".").map(String.init)
      let payload = parts[1]
      let adminPayload = Base64URL.encode(
        try JSONEncoder().encode(
          {
            var c = claims
            c.roles = ["customer", "admin"]
            return c
          }()))
      let publicKey = genuine.privateKey.publicKey
      let hs256Header = Base64URL.encode(Data(#"{"alg":"HS256","kid":"\#(genuine.kid)","typ":"JWT"}"#.utf8))
      let hs256Mac = HMAC<SHA256>.authenticationCode(
        for: Data("\(hs256Header).\(payload)".utf8), using: SymmetricKey(data: publicKey.x963Representation))

      let attacks: [(String, String)] = [
        ("alg none", Base64URL.encode(Data(#"{"alg":"none","typ":"JWT"}"#.utf8)) + ".\(payload)."),
        ("HS256 with the public key", "\(hs256Header).\(payload).\(Base64URL.encode(Data(hs256Mac)))"),
        (
          "unknown kid",
          try TokenSigningKey(kid: "no-such-key", privateKey: P256.Signing.PrivateKey()).sign(claims)
        ),
        (
          "expired",
          try signed {
            $0.iat = now - 3600; $0.exp = now - 120
          }
        ),
        ("not yet valid", try signed { $0.nbf = now + 600 }),
        ("wrong iss", try signed { $0.iss = "https://evil.example" }),
        ("wrong aud", try signed { $0.aud = ["someone-else"] }),
        ("tampered payload", "\(parts[0]).\(adminPayload).\(parts[2])"),
        ("garbage", "not-a-token"),
      ]
      for (name, token) in attacks {
        let response = try await edge.call("GET", "/v1/users/me", token: token)
        #expect(response.status == 401, "\(name): \(response.status) \(response.text)")
        try response.expectStatusBody(code: 16)
        #expect(response.headers["www-authenticate"]?.lowercased().hasPrefix("bearer") == true, "\(name)")
      }
      // The same forgeries straight at the service (which checks tokens itself): UNAUTHENTICATED.
      for (name, token) in attacks {
        await #expect(throws: RPCError.self, "\(name)") {
          try await edge.grpcGetMe(token: token)
        }
      }
    }
  }

  @Test func theServiceChecksTokensAndRolesItself() async throws {
    try await withEdge { edge in
      do {
        try await edge.grpcGetMe(token: nil)
        Issue.record("GetMe without a token succeeded")
      } catch let error as RPCError {
        #expect(error.code == .unauthenticated)
      }
      let (access, _) = try await edge.register()
      try await edge.grpcGetMe(token: access)
      do {
        try await edge.grpcListUsers(token: access)
        Issue.record("a customer listed users")
      } catch let error as RPCError {
        #expect(error.code == .permissionDenied)
      }
      let forbidden = try await edge.call("GET", "/v1/users", token: access)
      #expect(forbidden.status == 403)
      try forbidden.expectStatusBody(code: 7)
      let anonymous = try await edge.call("GET", "/v1/users/me")
      #expect(anonymous.status == 401)
      try anonymous.expectStatusBody(code: 16)
    }
  }

  @Test func aRefusedCallGets429WithRetryAfterAndTheBucketRefills() async throws {
    try await withEdge { edge in
      // The quota clock stands still unless moved: exactly the limit passes, however slow the
      // machine, and the refill is a step of the clock rather than a wait.
      for remaining in [2, 1, 0] {
        let response = try await edge.call("GET", "/.well-known/jwks.json")
        #expect(response.status == 200, "\(response.text)")
        #expect(response.headers["ratelimit-policy"] == #""jwks";q=3;w=10"#, "\(response.headers)")
        #expect(response.headers["ratelimit"]?.hasPrefix(#""jwks";r=\#(remaining);"#) == true, "\(response.headers)")
      }
      let tooMany = try await edge.call("GET", "/.well-known/jwks.json")
      #expect(tooMany.status == 429, "\(tooMany.text)")
      try tooMany.expectStatusBody(code: 8)
      // One token per 10/3 s: back after 4 whole seconds.
      #expect(tooMany.headers["retry-after"] == "4")
      let details = try #require(try tooMany.json()["details"] as? [[String: Any]])
      #expect(details.contains { ($0["@type"] as? String)?.hasSuffix("google.rpc.RetryInfo") == true })
      edge.quotaClock.advance(by: .seconds(3))
      #expect(try await edge.call("GET", "/.well-known/jwks.json").status == 429, "not before Retry-After")
      edge.quotaClock.advance(by: .seconds(1))
      #expect(try await edge.call("GET", "/.well-known/jwks.json").status == 200, "refilled by Retry-After")
    }
  }

  @Test func badRequestsGetTheRight4xxWithAStatusBodyAndNeverReachTheService() async throws {
    try await withEdge { edge in
      let malformed = try await edge.call("POST", "/v1/auth/login", body: Data("{\"email\": ".utf8))
      #expect(malformed.status == 400)
      try malformed.expectStatusBody(code: 3)

      let unknown = try await edge.call(
        "POST", "/v1/auth/login", json: ["email": "a@example.com", "password": "xxxxxxxx", "isAdmin": true])
      #expect(unknown.status == 400)
      try unknown.expectStatusBody(code: 3, naming: "isAdmin")

      let wrongType = try await edge.call("POST", "/v1/auth/login", json: ["email": 5, "password": "xxxxxxxx"])
      #expect(wrongType.status == 400)
      try wrongType.expectStatusBody(code: 3, naming: "email")

      let oversized = try await edge.call(
        "POST", "/v1/auth/register",
        json: ["email": "a@example.com", "password": String(repeating: "p", count: 20_000)])
      #expect(oversized.status == 413)
      try oversized.expectStatusBody(code: 3)

      let wrongContentType = try await edge.call(
        "POST", "/v1/auth/login", body: Data("email=a".utf8), contentType: "application/x-www-form-urlencoded")
      #expect(wrongContentType.status == 415)
      try wrongContentType.expectStatusBody(code: 3)

      let unknownPath = try await edge.call("GET", "/v1/nothing-here")
      #expect(unknownPath.status == 404)
      try unknownPath.expectStatusBody(code: 5)

      let wrongMethod = try await edge.call("DELETE", "/v1/auth/login")
      #expect(wrongMethod.status == 405)
      #expect(wrongMethod.headers["allow"]?.contains("POST") == true)
      try wrongMethod.expectStatusBody(code: 12)

      let unknownQuery = try await edge.call("GET", "/v1/users/me?debug=true", token: try await edge.register().0)
      #expect(unknownQuery.status == 400)
      try unknownQuery.expectStatusBody(code: 3, naming: "debug")
    }
  }

  /// The client address the gateway resolved (here from a trusted proxy's X-Forwarded-For)
  /// reaches the user service's login throttle, because the gateway vouches for it with its own
  /// key; the same header sent straight to the service counts for nothing.
  @Test func theLoginThrottleCountsTheAddressTheGatewayVouchesFor() async throws {
    try await withEdge { edge in
      let failed = try await edge.call(
        "POST", "/v1/auth/login", json: ["email": "nobody@example.com", "password": "not the password"],
        headers: ["X-Forwarded-For": "203.0.113.50"])
      #expect(failed.status == 401, "\(failed.text)")
      var spoofed = Metadata()
      spoofed.addString("198.51.100.9", forKey: ForwardedClient.addressKey)
      var direct: RPCError?
      do {
        try await edge.withUserClient { users in
          _ = try await users.login(
            .with {
              $0.email = "nobody@example.com"
              $0.password = "not the password"
            }, metadata: spoofed)
        }
      } catch let error as RPCError {
        direct = error
      }
      #expect(direct?.code == .unauthenticated)
      let keys = try await withPostgresClient(edge.userDatabase) { client in
        var keys: [String] = []
        let rows = try await client.query("SELECT key FROM login_failures ORDER BY key", logger: TestBed.logger)
        for try await key in rows.decode(String.self) { keys.append(key) }
        return keys
      }
      // The direct call counted against its own address, the connection's peer.
      #expect(
        keys == [
          "account:nobody@example.com", "ip:127.0.0.1", "ip:203.0.113.50", "pair:nobody@example.com|127.0.0.1",
          "pair:nobody@example.com|203.0.113.50",
        ])
    }
  }

  @Test func keysThatCannotBeFetchedAre503Not401() async throws {
    // Only the gateway runs: the user service, which publishes the keys, is nowhere (port 1 on
    // loopback: nothing listens there, and nothing can without privileges).
    let (listening, announce) = AsyncStream.makeStream(of: Int.self)
    let gateway = try Gateway.makeServices(
      configuration: try GatewayConfiguration(
        environment: EnvironmentReader(["MART_GATEWAY_PORT": "0", "MART_USER_ADDRESS": "127.0.0.1:1"]),
        auth: .ephemeral()),
      logger: TestBed.logger
    ) { port in
      announce.yield(port)
      announce.finish()
    }
    try await withServices(gateway) {
      var ports = listening.makeAsyncIterator()
      let gatewayPort = try #require(await ports.next(), "the gateway is not listening")
      let edge = Edge(gatewayPort: gatewayPort, userPort: 0, userDatabase: try TestBed.adminDatabase())
      #expect(await eventually { (try? await edge.call("GET", "/healthz").status) == 200 })
      let key = TokenSigningKey(kid: "some-key", privateKey: P256.Signing.PrivateKey())
      let now = Int64(Date().timeIntervalSince1970)
      let token = try key.sign(
        AccessTokenClaims(
          sub: UUID().uuidString.lowercased(), roles: ["customer"], iss: "mart", aud: "mart", iat: now, exp: now + 600))
      // The token may well be genuine: saying 401 would log the user out for our outage.
      let unavailable = try await edge.call("GET", "/v1/users/me", token: token)
      #expect(unavailable.status == 503, "\(unavailable.text)")
      try unavailable.expectStatusBody(code: 14)
      // A token that is wrong on its face is still 401: no key is needed to see that.
      let garbage = try await edge.call("GET", "/v1/users/me", token: "garbage")
      #expect(garbage.status == 401)
    }
  }

  @Test func requestIDsAreEchoedAndTheDocumentsAreServed() async throws {
    try await withEdge { edge in
      let tagged = try await edge.call("GET", "/.well-known/jwks.json", headers: ["X-Request-Id": "edge-test-42"])
      #expect(tagged.headers["x-request-id"] == "edge-test-42")
      let generated = try await edge.call("GET", "/.well-known/jwks.json")
      #expect(generated.headers["x-request-id"]?.isEmpty == false)
      let jwks = try generated.json()
      let keys = try #require(jwks["keys"] as? [[String: Any]])
      #expect(keys.first?["kty"] as? String == "EC")
      #expect(keys.allSatisfy { $0["d"] == nil })

      let openapi = try await edge.call("GET", "/openapi.json")
      #expect(openapi.status == 200)
      #expect(try openapi.json()["openapi"] as? String == "3.1.0")
      let docs = try await edge.call("GET", "/docs")
      #expect(docs.status == 200)
      #expect(docs.text.contains("swagger-ui"))
      let refused = try await edge.call("GET", "/metrics")
      #expect(refused.status == 401, "/metrics is for the admin token only")
      let metrics = try await edge.call("GET", "/metrics", token: Edge.adminToken)
      #expect(metrics.status == 200)
    }
  }
}

// MARK: - The edge under test

/// One HTTP answer.
struct HTTPResult {
  var status: Int
  /// Lower-cased names.
  var headers: [String: String]
  var body: Data

  var text: String { String(decoding: body, as: UTF8.self) }

  func json() throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any], "not a JSON object: \(text)")
  }

  func object(_ key: String) throws -> [String: Any] {
    try #require(try json()[key] as? [String: Any], "no object \(key) in \(text)")
  }

  /// A `google.rpc.Status` body with this code, and, if given, a BadRequest violation naming `field`.
  func expectStatusBody(code: Int, naming field: String? = nil, sourceLocation: SourceLocation = #_sourceLocation)
    throws
  {
    #expect(headers["content-type"]?.hasPrefix("application/json") == true, sourceLocation: sourceLocation)
    let status = try json()
    #expect(status["code"] as? Int == code, "\(text)", sourceLocation: sourceLocation)
    #expect((status["message"] as? String)?.isEmpty == false, "\(text)", sourceLocation: sourceLocation)
    if let field {
      let details = status["details"] as? [[String: Any]] ?? []
      let violations = details.flatMap { $0["fieldViolations"] as? [[String: Any]] ?? [] }
      #expect(
        violations.contains { ($0["field"] as? String)?.contains(field) == true }, "\(text)",
        sourceLocation: sourceLocation)
    }
  }
}

struct Edge {
  /// The operator's token for /metrics, which every edge's gateway is configured with.
  static let adminToken = "edge-tests-admin-endpoint-token-0123456789"

  let gatewayPort: Int
  let userPort: Int
  let userDatabase: DatabaseConfiguration
  /// The clock the gateway's quotas refill by; it moves only when a test moves it.
  var quotaClock = QuotaClock()

  func call(
    _ method: String, _ path: String, json: [String: Any]? = nil, body: Data? = nil,
    contentType: String = "application/json", token: String? = nil, headers: [String: String] = [:]
  ) async throws -> HTTPResult {
    let url = try #require(URL(string: "http://127.0.0.1:\(gatewayPort)\(path)"))
    var request = URLRequest(url: url)
    request.httpMethod = method
    if let json {
      request.httpBody = try JSONSerialization.data(withJSONObject: json)
      request.setValue(contentType, forHTTPHeaderField: "Content-Type")
    } else if let body {
      request.httpBody = body
      request.setValue(contentType, forHTTPHeaderField: "Content-Type")
    }
    if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    let (data, response) = try await URLSession.shared.data(for: request)
    let http = try #require(response as? HTTPURLResponse)
    var fields: [String: String] = [:]
    for (name, value) in http.allHeaderFields {
      if let name = name as? String, let value = value as? String { fields[name.lowercased()] = value }
    }
    return HTTPResult(status: http.statusCode, headers: fields, body: data)
  }

  /// A new customer, signed in: (access token, refresh token).
  func register() async throws -> (String, String) {
    let email = "c-\(UUID().uuidString.prefix(8))@example.com"
    let registered = try await call(
      "POST", "/v1/auth/register", json: ["email": email, "password": "a fine password", "fullName": "C"])
    #expect(registered.status == 200, "\(registered.text)")
    let response = try await call("POST", "/v1/auth/login", json: ["email": email, "password": "a fine password"])
    #expect(response.status == 200, "\(response.text)")
    let tokens = try response.object("tokens")
    return (try #require(tokens["accessToken"] as? String), try #require(tokens["refreshToken"] as? String))
  }

  /// The user service's current signing key, read from its database and opened with the test
  /// bed's key-encryption key: what lets the test sign tokens that are genuine in every respect
  /// but the one under test.
  func currentSigningKey() async throws -> TokenSigningKey {
    let encryption = try KeyEncryptionKeys(environment: EnvironmentReader())
    return try await withPostgresClient(userDatabase) { client in
      let rows = try await client.query(
        "SELECT kid, private_key, kek_id FROM signing_keys ORDER BY created_at DESC LIMIT 1", logger: TestBed.logger)
      for try await (kid, sealed, kekID) in rows.decode((String, Data, String).self) {
        let raw = try encryption.open(sealed, kekID: kekID, kid: kid)
        return TokenSigningKey(kid: kid, privateKey: try P256.Signing.PrivateKey(rawRepresentation: raw))
      }
      throw TestBed.NotConfigured(variable: "signing_keys: no readable key")
    }
  }

  func withUserClient<R: Sendable>(
    _ body: (Mart_User_V1_UserService.Client<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    try await withGRPCClient(
      transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: userPort), transportSecurity: .plaintext)
    ) { client in
      try await body(Mart_User_V1_UserService.Client(wrapping: client))
    }
  }

  static func metadata(_ token: String?) -> Metadata {
    var metadata = Metadata()
    if let token { metadata.addString("Bearer \(token)", forKey: "authorization") }
    return metadata
  }

  func grpcGetMe(token: String?) async throws {
    try await withUserClient { users in
      _ = try await users.getMe(Mart_User_V1_GetMeRequest(), metadata: Self.metadata(token))
    }
  }

  func grpcListUsers(token: String?) async throws {
    try await withUserClient { users in
      _ = try await users.listUsers(Mart_User_V1_ListUsersRequest(), metadata: Self.metadata(token))
    }
  }
}

/// Time for the gateway's quotas, moved by hand: a refill is a step of this clock, not a wait.
final class QuotaClock: Sendable {
  private let elapsed = Mutex(Duration.zero)

  func advance(by duration: Duration) { elapsed.withLock { $0 += duration } }

  var reading: @Sendable () -> Duration { { [self] in elapsed.withLock { $0 } } }
}

/// Starts the user service on a scratch database and the gateway in front of it, with a gateway
/// configuration whose limits the tests can reach: 3 JWKS reads per 10 s, and 16 KiB bodies.
/// With `catalog`, the product and inventory services run too, each on a scratch database, with
/// the same token settings (they verify user tokens against the user service's JWKS) and one
/// in-process event transport, so that ProductCreated reaches the inventory service.
/// With `orders`, the order service too (and the catalogue, which it calls). With
/// `notifications`, the notification service beside the user service (no catalogue).
func withEdge(
  catalog: Bool = false, orders: Bool = false, payments: PaymentSettings? = nil,
  notifications: NotificationSettings? = nil, _ body: (Edge) async throws -> Void
) async throws {
  let orders = orders || payments != nil
  try await ScratchDatabase.with("edge") { database in
    if let notifications {
      return try await ScratchDatabase.with("edge_notification") { notification in
        try await withEdge(
          user: database, catalog: nil, orders: nil, payments: nil, notifications: (notification, notifications), body)
      }
    }
    guard catalog || orders else {
      return try await withEdge(user: database, catalog: nil, orders: nil, payments: nil, body)
    }
    try await ScratchDatabase.with("edge_product") { product in
      try await ScratchDatabase.with("edge_inventory") { inventory in
        guard orders else {
          return try await withEdge(user: database, catalog: (product, inventory), orders: nil, payments: nil, body)
        }
        try await ScratchDatabase.with("edge_order") { order in
          guard let payments else {
            return try await withEdge(
              user: database, catalog: (product, inventory), orders: order, payments: nil, body)
          }
          try await ScratchDatabase.with("edge_payment") { payment in
            try await withEdge(
              user: database, catalog: (product, inventory), orders: order, payments: (payment, payments), body)
          }
        }
      }
    }
  }
}

private func withEdge(
  user database: ScratchDatabase, catalog: (product: ScratchDatabase, inventory: ScratchDatabase)?,
  orders: ScratchDatabase?, payments: (database: ScratchDatabase, settings: PaymentSettings)?,
  notifications: (database: ScratchDatabase, settings: NotificationSettings)? = nil,
  _ body: (Edge) async throws -> Void
) async throws {
  let configFile = FileManager.default.temporaryDirectory.appendingPathComponent("edge-\(UUID().uuidString).json")
  try Data(
    """
    {
      "maxBodyBytes": 16384,
      "streamHeartbeat": "50ms",
      "trustedProxies": ["127.0.0.1/32"],
      "rateLimits": {
        "default": { "limit": 1000, "window": "60s" },
        "routes": { "UserService_GetJwks": { "name": "jwks", "limit": 3, "window": "10s" } }
      }
    }
    """.utf8
  ).write(to: configFile)
  defer { try? FileManager.default.removeItem(at: configFile) }

  // Every listener takes port 0 and is asked which port it got: ports picked in advance can be
  // picked twice by tests running side by side, and then one test talks to another's services.
  let auth = AuthConfiguration.ephemeral()
  let transport = InProcessEventTransport()
  let user = try ServiceHost(
    definition: UserServiceModule.definition,
    configuration: ServiceConfiguration(service: .user, port: 0, database: database.configuration),
    directory: ServiceDirectory(endpoints: [:]), auth: auth, transport: transport, logger: TestBed.logger)
  // Each service starts once the one before it serves, and the gateway once they all do: a gRPC
  // client connects as soon as it starts, and one that found nobody listening backs off for a
  // second or more, during which the gateway answers 503.
  try await withServing([user][...]) { userPorts in
    let userPort = try #require(userPorts[.user])
    // The catalog services call the user service (for its keys); the gateway calls all three.
    let directory = ServiceDirectory(endpoints: [.user: .init(host: "127.0.0.1", port: userPort)])
    var hosts: [ServiceHost<HTTP2ServerTransport.Posix>] = []
    if let notifications {
      hosts.append(
        try ServiceHost(
          definition: NotificationServiceModule.makeDefinition(settings: notifications.settings),
          configuration: ServiceConfiguration(
            service: .notification, port: 0, database: notifications.database.configuration),
          directory: directory, auth: auth, transport: transport, logger: TestBed.logger))
    }
    if let catalog {
      hosts.append(
        try ServiceHost(
          definition: ProductServiceModule.definition,
          configuration: ServiceConfiguration(service: .product, port: 0, database: catalog.product.configuration),
          directory: directory, auth: auth, transport: transport, logger: TestBed.logger))
      hosts.append(
        try ServiceHost(
          definition: InventoryServiceModule.makeDefinition(settings: InventorySettings()),
          configuration: ServiceConfiguration(
            service: .inventory, port: 0, database: catalog.inventory.configuration),
          directory: directory, auth: auth, transport: transport, logger: TestBed.logger))
    }
    try await withServing(hosts[...], ports: userPorts) { catalogPorts in
      // The order service calls the catalogue, so it starts once the catalogue listens.
      var orderHosts: [ServiceHost<HTTP2ServerTransport.Posix>] = []
      if let orders {
        var endpoints = directory.endpoints
        for (service, port) in catalogPorts { endpoints[service] = .init(host: "127.0.0.1", port: port) }
        orderHosts.append(
          try ServiceHost(
            definition: OrderServiceModule.makeDefinition(settings: OrderSettings()),
            configuration: ServiceConfiguration(service: .order, port: 0, database: orders.configuration),
            directory: ServiceDirectory(endpoints: endpoints), auth: auth, transport: transport,
            logger: TestBed.logger))
      }
      try await withServing(orderHosts[...], ports: catalogPorts) { orderPorts in
        // The payment service calls the order service (for an order's total).
        var paymentHosts: [ServiceHost<HTTP2ServerTransport.Posix>] = []
        if let payments {
          var endpoints = directory.endpoints
          for (service, port) in orderPorts { endpoints[service] = .init(host: "127.0.0.1", port: port) }
          paymentHosts.append(
            try ServiceHost(
              definition: PaymentServiceModule.makeDefinition(settings: payments.settings),
              configuration: ServiceConfiguration(
                service: .payment, port: 0, database: payments.database.configuration),
              directory: ServiceDirectory(endpoints: endpoints), auth: auth, transport: transport,
              logger: TestBed.logger))
        }
        try await withServing(paymentHosts[...], ports: orderPorts) { ports in
          var environment = [
            "MART_GATEWAY_PORT": "0", "MART_GATEWAY_CONFIG": configFile.path, AdminToken.variable: Edge.adminToken,
          ]
          for (service, port) in ports {
            environment["\(service.environmentPrefix)_ADDRESS"] = "127.0.0.1:\(port)"
          }
          let (listening, announce) = AsyncStream.makeStream(of: Int.self)
          let quotaClock = QuotaClock()
          let gateway = try Gateway.makeServices(
            configuration: try GatewayConfiguration(environment: EnvironmentReader(environment), auth: auth),
            logger: TestBed.logger,
            onListening: { port in
              announce.yield(port)
              announce.finish()
            }, rateLimitClock: quotaClock.reading)
          try await withServices(gateway) {
            var ports = listening.makeAsyncIterator()
            let gatewayPort = try #require(await ports.next(), "the gateway is not listening")
            let edge = Edge(
              gatewayPort: gatewayPort, userPort: userPort, userDatabase: database.configuration, quotaClock: quotaClock
            )
            let up = await eventually { (try? await edge.call("GET", "/healthz").status) == 200 }
            #expect(up)
            try await body(edge)
          }
        }
      }
    }
  }
}

/// Runs `hosts` one after another, each started once the one before it serves, and then `body`
/// with the port each listens on.
private func withServing(
  _ hosts: ArraySlice<ServiceHost<HTTP2ServerTransport.Posix>>, ports: [MartService: Int] = [:],
  _ body: ([MartService: Int]) async throws -> Void
) async throws {
  guard let host = hosts.first else { return try await body(ports) }
  try await withServices(host.lifecycleServices) {
    let service = host.configuration.service
    let port = try #require(try await host.server.listeningAddress?.ipv4?.port, "\(service) is not listening")
    // The board the health service reads, rather than polling it over the network.
    let serving = await host.health.waitUntilServing()
    #expect(serving, "\(service) is not serving")
    var ports = ports
    ports[service] = port
    try await withServing(hosts.dropFirst(), ports: ports, body)
  }
}
