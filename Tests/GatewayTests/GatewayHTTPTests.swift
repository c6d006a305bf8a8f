import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import SwiftProtobuf
import Testing

@testable import Gateway

/// The gateway over HTTP (HummingbirdTesting's router client) in front of a test double of the
/// user service over real gRPC: the generated user-service routes, end to end through the edge.
@Suite struct GatewayHTTPTests {
  // MARK: Routing and transcoding

  @Test func getMeWithATokenReachesTheServiceWithTheCallsMetadata() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users/me", method: .get,
        headers: gateway.headers(token: gateway.customerToken, extra: ["X-Request-Id": "req-1"]))
      #expect(response.status == .ok, "\(response.text)")
      #expect(response.headers[.contentType] == "application/json")
      #expect(response.headers[.requestID] == "req-1")
      let user = try response.json()
      #expect(user["id"] as? String == "me")
      #expect(user["email"] as? String == "req-1", "x-request-id passed on")
      #expect(user["emailVerified"] as? Bool == true, "the token passed on")
      #expect(response.headers[.rateLimitPolicy] == #""default";q=1000;w=60"#)
      #expect(response.headers[.rateLimit]?.hasPrefix(#""default";r=999;t="#) == true)
    }
  }

  @Test func headIsAnsweredByTheGetRouteWithoutABody() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users/me", method: .head, headers: gateway.headers(token: gateway.customerToken))
      #expect(response.status == .ok)
      #expect(response.body.readableBytes == 0)
    }
  }

  @Test func theClientAddressIsPassedOnAndForwardedForTrustedOnlyFromProxies() async throws {
    // Over a real socket the peer is loopback: 127.0.0.1, or ::1 where "localhost" (which
    // HummingbirdTesting's live server and client both use) resolves to IPv6 first, as in a
    // bare Debian root without an /etc/hosts.
    let loopback = ["127.0.0.1", "::1"]
    try await withGateway(.live) { gateway, client in
      var headers = gateway.headers(token: gateway.customerToken)
      headers[.forwardedFor] = "203.0.113.9"
      let direct = try await client.execute(uri: "/v1/users/me", method: .get, headers: headers)
      let seen = try direct.json()["fullName"] as? String
      #expect(loopback.contains(seen ?? ""), "an untrusted peer's header is ignored, got \(seen ?? "nothing")")
    }
    try await withGateway(.live, trustedProxies: ["127.0.0.0/8", "::1/128"]) { gateway, client in
      var headers = gateway.headers(token: gateway.customerToken)
      headers[.forwardedFor] = "6.6.6.6, 203.0.113.9"
      let proxied = try await client.execute(uri: "/v1/users/me", method: .get, headers: headers)
      #expect(try proxied.json()["fullName"] as? String == "203.0.113.9", "the right-most untrusted hop")
    }
  }

  /// Every answer, success or error, says nosniff and may not be stored (tokens and personal data
  /// pass through); HSTS only when the gateway is configured to say it is behind TLS.
  @Test func everyAnswerCarriesTheSecurityHeaders() async throws {
    try await withGateway { gateway, client in
      let me = try await client.execute(
        uri: "/v1/users/me", method: .get, headers: gateway.headers(token: gateway.customerToken))
      let refused = try await client.execute(uri: "/v1/users/me", method: .get)
      let unknown = try await client.execute(uri: "/v1/nothing-here", method: .get)
      for response in [me, refused, unknown] {
        #expect(response.headers[.xContentTypeOptions] == "nosniff", "\(response.status)")
        #expect(response.headers[.cacheControl] == "no-store", "\(response.status)")
        #expect(response.headers[.strictTransportSecurity] == nil)
      }
      #expect(refused.status == .unauthorized && unknown.status == .notFound)
    }
    try await withGateway(hsts: "max-age=31536000; includeSubDomains") { gateway, client in
      let me = try await client.execute(
        uri: "/v1/users/me", method: .get, headers: gateway.headers(token: gateway.customerToken))
      #expect(me.headers[.strictTransportSecurity] == "max-age=31536000; includeSubDomains")
    }
  }

  /// A flood of bad tokens is charged to the client's address like any traffic: 401 until the
  /// quota is spent, then 429. A signed-in caller's own quota is untouched by it.
  @Test func refusedTokensCountAgainstTheQuota() async throws {
    let limits = ["UserService_GetMe": RateLimitPolicy(name: "me", limit: 3, window: .seconds(60))]
    try await withGateway(routeLimits: limits) { gateway, client in
      var statuses: [HTTPResponse.Status] = []
      for _ in 0..<4 {
        let response = try await client.execute(
          uri: "/v1/users/me", method: .get, headers: [.authorization: "Bearer not.a.token"])
        statuses.append(response.status)
        #expect(response.headers[.rateLimitPolicy] != nil)
      }
      #expect(statuses == [.unauthorized, .unauthorized, .unauthorized, .tooManyRequests])
      let signedIn = try await client.execute(
        uri: "/v1/users/me", method: .get, headers: gateway.headers(token: gateway.customerToken))
      #expect(signedIn.status == .ok)
    }
  }

  /// An IPv6 client is one quota per /64: addresses rotated inside it share the bucket.
  @Test func ipv6ClientsShareAQuotaPerSlash64() async throws {
    let limits = ["UserService_Login": RateLimitPolicy(name: "login", limit: 2, window: .seconds(60))]
    try await withGateway(.live, trustedProxies: ["127.0.0.0/8", "::1/128"], routeLimits: limits) { _, client in
      var statuses: [HTTPResponse.Status] = []
      for address in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3", "2001:db8:1:3::1"] {
        let response = try await client.execute(
          uri: "/v1/auth/login", method: .post,
          headers: [.contentType: "application/json", .forwardedFor: address],
          body: ByteBuffer(string: #"{"email": "a@example.com", "password": "whatever it is"}"#))
        statuses.append(response.status)
      }
      #expect(statuses[2] == .tooManyRequests, "\(statuses)")
      #expect(statuses[3] != .tooManyRequests, "another /64 has its own quota: \(statuses)")
    }
  }

  /// The shipped quota on registration: so many a minute per client address, shared with the
  /// other routes that send mail to an address nobody has proved (resend a verification link,
  /// ask for a password reset); another address has its own. The per-email quota is the user
  /// service's (`aTakenEmailIsAnsweredAsANewOneAndItsOwnerIsTold`).
  @Test func theShippedRegistrationQuotaHoldsPerAddress() async throws {
    let path = GatewayConfigurationTests.repositoryRoot.appendingPathComponent("gateway/gateway.json").path
    let shipped = try GatewayConfiguration(
      environment: EnvironmentReader(["MART_GATEWAY_CONFIG": path]), auth: .ephemeral()
    ).settings
    let register = shipped.rateLimit(for: "UserService_Register")
    #expect(register.name == "register")
    #expect((1...20).contains(register.limit), "a registration quota per address: \(register)")
    var limits: [String: RateLimitPolicy] = [:]
    for operation in [
      "UserService_Register", "UserService_ResendVerificationEmail", "UserService_RequestPasswordReset",
    ] {
      limits[operation] = shipped.rateLimit(for: operation)
      #expect(limits[operation]?.name == "register", "\(operation) shares the registration quota")
    }
    try await withGateway(.live, trustedProxies: ["127.0.0.0/8"], routeLimits: limits) { _, client in
      func post(_ path: String, _ body: String, from address: String) async throws -> HTTPResponse.Status {
        try await client.execute(
          uri: path, method: .post, headers: [.contentType: "application/json", .forwardedFor: address],
          body: ByteBuffer(string: body)
        ).status
      }
      func registration(_ number: Int) -> String {
        #"{"email": "new\#(number)@example.com", "password": "a long enough password", "fullName": "N"}"#
      }
      var statuses: [HTTPResponse.Status] = []
      for number in 0..<register.limit {
        statuses.append(try await post("/v1/auth/register", registration(number), from: "203.0.113.7"))
      }
      #expect(!statuses.contains(.tooManyRequests), "within the quota: \(statuses)")
      let over = try await post("/v1/auth/register", registration(99), from: "203.0.113.7")
      #expect(over == .tooManyRequests)
      let resend = try await post(
        "/v1/auth/verify-email:resend", #"{"email": "new1@example.com"}"#, from: "203.0.113.7")
      #expect(resend == .tooManyRequests, "the same bucket")
      let elsewhere = try await post("/v1/auth/register", registration(100), from: "203.0.113.8")
      #expect(elsewhere != .tooManyRequests, "another address has its own quota")
    }
  }

  @Test func aBadRequestIDIsReplaced() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users/me", method: .get,
        headers: gateway.headers(
          token: gateway.customerToken, extra: ["X-Request-Id": String(repeating: "x", count: 200)]))
      let id = try #require(response.headers[.requestID])
      #expect(id.count == 36, "a fresh UUID: \(id)")
    }
  }

  @Test func queryParametersAndEnumsReachTheService() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users?page_size=7&query=ada%20l&role=ADMIN", method: .get,
        headers: gateway.headers(token: gateway.adminToken))
      #expect(response.status == .ok, "\(response.text)")
      #expect(try response.json()["nextPageToken"] as? String == "size=7;query=ada l;role=admin")
      let byNumber = try await client.execute(
        uri: "/v1/users?pageSize=3&role=1", method: .get, headers: gateway.headers(token: gateway.adminToken))
      #expect(try byNumber.json()["nextPageToken"] as? String == "size=3;query=;role=customer")
    }
  }

  @Test func aFieldBodyIsMergedWithTheQuery() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users/me?update_mask=fullName,phone", method: .patch,
        headers: gateway.headers(token: gateway.customerToken, json: true),
        body: ByteBuffer(string: #"{"fullName": "Ada", "phone": "+27820000000"}"#))
      #expect(response.status == .ok, "\(response.text)")
      let user = try response.json()
      #expect(user["fullName"] as? String == "Ada")
      #expect(user["email"] as? String == "full_name,phone", "the mask, from the query")
    }
  }

  @Test func pathVariablesReachTheService() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(
        uri: "/v1/users/u%2042", method: .get, headers: gateway.headers(token: gateway.adminToken))
      #expect(response.status == .ok, "\(response.text)")
      #expect(try response.json()["id"] as? String == "u 42")
    }
  }

  // MARK: Refusals at the edge

  @Test func malformedUnknownAndMistypedBodiesAre400NamingTheField() async throws {
    try await withGateway { gateway, client in
      let login = { (body: String) in
        try await client.execute(
          uri: "/v1/auth/login", method: .post, headers: gateway.headers(json: true), body: ByteBuffer(string: body))
      }
      let malformed = try await login(#"{"email": "#)
      #expect(malformed.status == .badRequest)
      try malformed.expectStatus(code: 3)

      let unknown = try await login(#"{"email": "a@example.com", "password": "x", "isAdmin": true}"#)
      #expect(unknown.status == .badRequest)
      try unknown.expectStatus(code: 3, naming: "isAdmin")

      let wrongType = try await login(#"{"email": 5, "password": "x"}"#)
      #expect(wrongType.status == .badRequest)
      try wrongType.expectStatus(code: 3, naming: "email")
    }
  }

  @Test func oversizedBodiesAre413AndWrongContentTypes415() async throws {
    try await withGateway { gateway, client in
      let oversized = try await client.execute(
        uri: "/v1/auth/login", method: .post, headers: gateway.headers(json: true),
        body: ByteBuffer(string: #"{"email": "\#(String(repeating: "a", count: 2000))"}"#))
      #expect(oversized.status == .contentTooLarge)
      try oversized.expectStatus(code: 3)

      var form = gateway.headers()
      form[.contentType] = "application/x-www-form-urlencoded"
      let wrongType = try await client.execute(
        uri: "/v1/auth/login", method: .post, headers: form, body: ByteBuffer(string: "email=a"))
      #expect(wrongType.status == .unsupportedMediaType)
      try wrongType.expectStatus(code: 3)
    }
  }

  @Test func unknownPathsAre404AndOtherMethods405WithAllow() async throws {
    try await withGateway { gateway, client in
      let missing = try await client.execute(uri: "/v1/nothing-here", method: .get)
      #expect(missing.status == .notFound)
      try missing.expectStatus(code: 5)

      let wrongMethod = try await client.execute(uri: "/v1/auth/login", method: .delete)
      #expect(wrongMethod.status == .methodNotAllowed)
      #expect(wrongMethod.headers[.allow] == "OPTIONS, POST")
      try wrongMethod.expectStatus(code: 12)

      let options = try await client.execute(uri: "/v1/users/me", method: .options)
      #expect(options.status == .noContent)
      #expect(options.headers[.allow] == "GET, HEAD, OPTIONS, PATCH")

      let unknownQuery = try await client.execute(
        uri: "/v1/users/me?debug=true", method: .get, headers: gateway.headers(token: gateway.customerToken))
      #expect(unknownQuery.status == .badRequest)
      try unknownQuery.expectStatus(code: 3, naming: "debug")
    }
  }

  @Test func tokensAreRequiredAndRolesChecked() async throws {
    try await withGateway { gateway, client in
      let anonymous = try await client.execute(uri: "/v1/users/me", method: .get)
      #expect(anonymous.status == .unauthorized)
      #expect(anonymous.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
      try anonymous.expectStatus(code: 16)

      let garbage = try await client.execute(
        uri: "/v1/users/me", method: .get, headers: gateway.headers(token: "not-a-token"))
      #expect(garbage.status == .unauthorized)
      #expect(garbage.headers[.wwwAuthenticate]?.contains(#"error="invalid_token""#) == true)
      try garbage.expectStatus(code: 16)

      let customerAtAdminRoute = try await client.execute(
        uri: "/v1/users", method: .get, headers: gateway.headers(token: gateway.customerToken))
      #expect(customerAtAdminRoute.status == .forbidden)
      try customerAtAdminRoute.expectStatus(code: 7)

      let serviceToken = try await client.execute(
        uri: "/v1/users/u1", method: .get, headers: gateway.headers(token: gateway.serviceToken))
      #expect(serviceToken.status == .unauthorized, "no service token from outside: \(serviceToken.text)")
    }
  }

  @Test func quotaGives429WithRetryAfterAndHeadersAndTheBucketRefills() async throws {
    try await withGateway { gateway, client in
      for remaining in [1, 0] {
        let response = try await client.execute(uri: "/.well-known/jwks.json", method: .get)
        #expect(response.status == .ok, "\(response.text)")
        #expect(response.headers[.rateLimitPolicy] == #""jwks";q=2;w=10"#)
        #expect(response.headers[.rateLimit]?.hasPrefix(#""jwks";r=\#(remaining);"#) == true)
      }
      let refused = try await client.execute(uri: "/.well-known/jwks.json", method: .get)
      #expect(refused.status == .tooManyRequests)
      #expect(refused.headers[.retryAfter] == "5")
      #expect(refused.headers[.rateLimit] == #""jwks";r=0;t=10"#)
      #expect(refused.headers[.rateLimitPolicy] == #""jwks";q=2;w=10"#)
      try refused.expectStatus(code: 8)
      let details = try #require(try refused.json()["details"] as? [[String: Any]])
      let retryInfo = try #require(
        details.first { ($0["@type"] as? String)?.hasSuffix("google.rpc.RetryInfo") == true })
      #expect(retryInfo["retryDelay"] as? String == "5s")

      gateway.clock.advance(5)
      let again = try await client.execute(uri: "/.well-known/jwks.json", method: .get)
      #expect(again.status == .ok, "refilled: \(again.text)")
      // Other routes have their own policy.
      let other = try await client.execute(
        uri: "/v1/users/me", method: .get, headers: gateway.headers(token: gateway.customerToken))
      #expect(other.status == .ok)
    }
  }

  // MARK: Upstream errors

  @Test func upstreamErrorsKeepTheirDetailsButNeverInternalText() async throws {
    try await withGateway { gateway, client in
      let login = try await client.execute(
        uri: "/v1/auth/login", method: .post, headers: gateway.headers(json: true),
        body: ByteBuffer(string: #"{"email": "fail@example.com", "password": "x"}"#))
      #expect(login.status == .unauthorized)
      try login.expectStatus(code: 16)
      let details = try #require(try login.json()["details"] as? [[String: Any]])
      #expect(details.first?["reason"] as? String == "INVALID_CREDENTIALS")

      let missing = try await client.execute(
        uri: "/v1/users/missing", method: .get, headers: gateway.headers(token: gateway.adminToken))
      #expect(missing.status == .notFound)
      try missing.expectStatus(code: 5)

      let boom = try await client.execute(
        uri: "/v1/users/boom", method: .get,
        headers: gateway.headers(token: gateway.adminToken, extra: ["X-Request-Id": "req-boom"]))
      #expect(boom.status == .internalServerError)
      #expect(!boom.text.contains("secret"))
      #expect(boom.text.contains("req-boom"))

      let slow = try await client.execute(
        uri: "/v1/users/slow", method: .get, headers: gateway.headers(token: gateway.adminToken))
      #expect(slow.status == .gatewayTimeout, "the route's deadline: \(slow.text)")
      try slow.expectStatus(code: 4)
    }
  }

  @Test func anUnreachableServiceIs503() async throws {
    try await withGateway { gateway, client in
      let response = try await client.execute(uri: "/v1/products", method: .get)
      #expect(response.status == .serviceUnavailable)
      try response.expectStatus(code: 14)
    }
  }

  // MARK: The edge's own endpoints

  /// Past its capacity the gateway answers 503 with Retry-After at once (or after a short wait in
  /// its bounded queue), never queueing a request until its deadline; its own endpoints answer
  /// whatever the load, and a freed slot admits the next request.
  @Test func overCapacityIs503WithRetryAfterAndHealthStillAnswers() async throws {
    let limits = AdmissionLimiter.Limits(maximumInFlight: 1, maximumQueued: 1, maximumWait: .milliseconds(200))
    try await withGateway(admission: limits) { gateway, client in
      let auth = gateway.headers(token: gateway.adminToken)
      // Three slow calls at once: one runs (to its 2 s deadline: 504), one waits in the queue and
      // gives up after 200 ms, one finds the queue full. Which is which depends on arrival.
      let statuses = try await withThrowingTaskGroup(of: (HTTPResponse.Status, String?).self) { group in
        for _ in 0..<3 {
          group.addTask {
            let response = try await client.execute(uri: "/v1/users/slow", method: .get, headers: auth)
            return (response.status, response.headers[.retryAfter])
          }
        }
        var all: [(HTTPResponse.Status, String?)] = []
        for try await status in group { all.append(status) }
        return all
      }
      let refused = statuses.filter { $0.0 == .serviceUnavailable }
      #expect(refused.count == 2, "\(statuses)")
      #expect(refused.allSatisfy { $0.1 == "1" })
      #expect(statuses.filter { $0.0 == .gatewayTimeout }.count == 1, "\(statuses)")

      // While a slow call holds the only slot: /healthz answers, and a route is refused with the
      // reason in the usual google.rpc.Status body.
      let refusal = try await withThrowingTaskGroup(of: String?.self) { group in
        group.addTask {
          _ = try await client.execute(uri: "/v1/users/slow", method: .get, headers: auth)
          return nil
        }
        group.addTask {
          try await Task.sleep(for: .milliseconds(500))
          let health = try await client.execute(uri: "/healthz", method: .get)
          #expect(health.status == .ok)
          let response = try await client.execute(uri: "/v1/users/other", method: .get, headers: auth)
          return response.status == .serviceUnavailable ? String(buffer: response.body) : nil
        }
        var text: String?
        for try await value in group where value != nil { text = value }
        return text
      }
      let body = try #require(refusal)
      #expect(body.contains("\"code\":14"), "\(body)")
      #expect(body.contains("OVERLOADED"), "\(body)")

      // Nothing in flight any more: the next call is admitted.
      let admitted = try await client.execute(uri: "/v1/users/u-1", method: .get, headers: auth)
      #expect(admitted.status == .ok)
    }
  }

  @Test func corsPreflightAndHeaders() async throws {
    try await withGateway { gateway, client in
      var preflight = HTTPFields()
      preflight[.origin] = "https://shop.example"
      preflight[.accessControlRequestMethod] = "POST"
      let allowed = try await client.execute(uri: "/v1/auth/login", method: .options, headers: preflight)
      #expect(allowed.status == .noContent)
      #expect(allowed.headers[.accessControlAllowOrigin] == "https://shop.example")
      #expect(allowed.headers[.accessControlAllowHeaders]?.contains("Authorization") == true)
      #expect(allowed.headers[.accessControlAllowMethods]?.contains("POST") == true)

      preflight[.origin] = "https://evil.example"
      let refused = try await client.execute(uri: "/v1/auth/login", method: .options, headers: preflight)
      #expect(refused.headers[.accessControlAllowOrigin] == nil)

      var simple = HTTPFields()
      simple[.origin] = "https://shop.example"
      let error = try await client.execute(uri: "/v1/nothing", method: .get, headers: simple)
      #expect(error.headers[.accessControlAllowOrigin] == "https://shop.example")
      #expect(error.headers[.accessControlExposeHeaders]?.contains("RateLimit") == true)
    }
  }

  @Test func healthMetricsAndDocuments() async throws {
    try await withGateway { gateway, client in
      let health = try await client.execute(uri: "/healthz", method: .get)
      #expect(health.status == .ok)
      _ = try await client.execute(uri: "/v1/nothing", method: .get)
      let metrics = try await client.execute(
        uri: "/metrics", method: .get, headers: gateway.headers(token: TestGateway.adminEndpointToken))
      #expect(metrics.status == .ok)
      #expect(metrics.text.contains(#"mart_gateway_requests_total{operation="unmatched",method="GET",status="404"} 1"#))
      #expect(metrics.text.contains("mart_gateway_request_duration_seconds_bucket"))
      #expect(metrics.text.contains(#"mart_gateway_errors_total{operation="unmatched",code="NOT_FOUND"} 1"#))
      let openapi = try await client.execute(uri: "/openapi.json", method: .get)
      #expect(openapi.status == .ok)
      #expect(try openapi.json()["openapi"] as? String != nil)
      let docs = try await client.execute(uri: "/docs", method: .get)
      #expect(docs.status == .ok)
      #expect(docs.text.contains("swagger-ui-bundle.js"))
      let post = try await client.execute(uri: "/healthz", method: .post)
      #expect(post.status == .methodNotAllowed)
    }
  }

  /// /metrics and which service is down are for the operator: the admin token, compared in
  /// constant time. Liveness and readiness themselves stay public, as load balancers need them.
  @Test func metricsAndReadinessDetailNeedTheAdminToken() async throws {
    try await withGateway { gateway, client in
      let health = try await client.execute(uri: "/healthz", method: .get)
      #expect(health.status == .ok)

      let wrongTokens: [String?] = [
        nil, "not-the-admin-token-0123456789abcdef", gateway.adminToken, TestGateway.adminEndpointToken + "x",
      ]
      for token in wrongTokens {
        let metrics = try await client.execute(uri: "/metrics", method: .get, headers: gateway.headers(token: token))
        #expect(metrics.status == .unauthorized, "token \(token ?? "none")")
        #expect(metrics.headers[.wwwAuthenticate] == #"Bearer realm="mart-admin""#)
        #expect(!metrics.text.contains("mart_gateway_"))
      }
      let metrics = try await client.execute(
        uri: "/metrics", method: .get, headers: [.authorization: "bearer \(TestGateway.adminEndpointToken)"])
      #expect(metrics.status == .ok, "the scheme is case-insensitive")

      // The product service is nowhere: not ready, and only the admin learns which one it is.
      let publicReadiness = try await client.execute(uri: "/readyz", method: .get)
      #expect(publicReadiness.status == .serviceUnavailable)
      #expect(try publicReadiness.json().keys.sorted() == ["status"], "\(publicReadiness.text)")
      let detailed = try await client.execute(
        uri: "/readyz", method: .get, headers: gateway.headers(token: TestGateway.adminEndpointToken))
      #expect(detailed.status == .serviceUnavailable)
      let services = try #require(try detailed.json()["services"] as? [String: String], "\(detailed.text)")
      #expect(services["product"] == "NOT_SERVING")
    }
  }

  /// /docs runs a CDN's code in our origin: every stylesheet and script it loads from elsewhere is
  /// at an exact version and carries a SHA-384 integrity hash, checked by the browser.
  @Test func theDocsPageLoadsAPinnedSwaggerUIWithIntegrityHashes() async throws {
    try await withGateway { _, client in
      let docs = try await client.execute(uri: "/docs", method: .get)
      #expect(docs.status == .ok)
      let tags = docs.text.matches(of: try Regex(#"<(script|link)\b[^>]*>"#)).map { String(docs.text[$0.range]) }
      let external = tags.filter { $0.contains("https://") }
      #expect(external.count == 2, "the stylesheet and the bundle: \(tags)")
      for tag in external {
        #expect(tag.contains("swagger-ui-dist@\(APIDocumentation.swaggerUIVersion)/"), "\(tag)")
        #expect(tag.contains(try Regex(#"@\d+\.\d+\.\d+/"#)), "an exact version: \(tag)")
        let integrity = try #require(
          tag.firstMatch(of: try Regex(#"integrity="sha384-([A-Za-z0-9+/]{64})""#)), "\(tag)")
        #expect(integrity.output.count == 2)
        #expect(tag.contains(#"crossorigin="anonymous""#), "integrity needs a CORS fetch: \(tag)")
      }
    }
  }

  /// Without a token configured, nobody reads /metrics through the gateway.
  @Test func withoutAnAdminTokenConfiguredMetricsAreClosed() async throws {
    try await withGateway(adminToken: nil) { gateway, client in
      let metrics = try await client.execute(
        uri: "/metrics", method: .get, headers: gateway.headers(token: TestGateway.adminEndpointToken))
      #expect(metrics.status == .unauthorized)
      let readiness = try await client.execute(
        uri: "/readyz", method: .get, headers: gateway.headers(token: TestGateway.adminEndpointToken))
      #expect(try readiness.json()["services"] == nil)
    }
  }
}

// MARK: - The harness

struct TestGateway: Sendable {
  /// The operator's token for /metrics and /readyz's detail (not a JWT).
  static let adminEndpointToken = "gateway-tests-admin-endpoint-token-0123456789"

  let clock: ManualClock
  let customerToken: String
  let adminToken: String
  let serviceToken: String

  func headers(token: String? = nil, json: Bool = false, extra: [String: String] = [:]) -> HTTPFields {
    var fields = HTTPFields()
    if let token { fields[.authorization] = "Bearer \(token)" }
    if json { fields[.contentType] = "application/json" }
    for (name, value) in extra {
      if let name = HTTPField.Name(name) { fields[name] = value }
    }
    return fields
  }
}

extension TestResponse {
  var text: String { String(buffer: body) }

  func json() throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not JSON: \(text)")
  }

  /// A google.rpc.Status body with this code and, if given, a BadRequest violation naming `field`.
  func expectStatus(code: Int, naming field: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(headers[.contentType] == "application/json", sourceLocation: sourceLocation)
    let status = try json()
    #expect(status["code"] as? Int == code, "\(text)", sourceLocation: sourceLocation)
    #expect((status["message"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    if let field {
      let details = status["details"] as? [[String: Any]] ?? []
      let violations = details.flatMap { $0["fieldViolations"] as? [[String: Any]] ?? [] }
      #expect(violations.contains { $0["field"] as? String == field }, "\(text)", sourceLocation: sourceLocation)
    }
  }
}

/// Runs the stub user service, the gRPC clients and the gateway application, and hands the test
/// an HTTP client for the gateway.
func withGateway(
  _ setup: TestingSetup = .router, trustedProxies: [String] = [], hsts: String? = nil,
  routeLimits: [String: RateLimitPolicy] = [:], adminToken: String? = TestGateway.adminEndpointToken,
  timeouts: ConnectionTimeouts = ConnectionTimeouts(), admission: AdmissionLimiter.Limits? = nil,
  _ body: @escaping @Sendable (TestGateway, any TestClientProtocol) async throws -> Void
) async throws {
  let userKey = TokenSigningKey.random(kid: "test-user-key")
  let serviceAuth = AuthConfiguration.ephemeral()
  let orderTokens = try #require(ServiceTokenIssuer(.service(.order), configuration: serviceAuth))
  let now = Int64(Date().timeIntervalSince1970)
  func token(_ subject: String, _ roles: [String], key: TokenSigningKey, issuer: String = "mart") throws -> String {
    try key.sign(AccessTokenClaims(sub: subject, roles: roles, iss: issuer, aud: "mart", iat: now, exp: now + 600))
  }
  let clock = ManualClock()
  let gateway = TestGateway(
    clock: clock,
    customerToken: try token(UUID().uuidString, ["customer"], key: userKey),
    adminToken: try token(UUID().uuidString, ["customer", "admin"], key: userKey),
    serviceToken: try await orderTokens.token(for: .user))

  let server = GRPCServer(
    transport: .http2NIOPosix(address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext),
    services: [StubUserService(key: JSONWebKeyValue(kid: userKey.kid, publicKey: userKey.privateKey.publicKey))])
  try await withServices([GRPCServerService(server: server)]) {
    let address = try #require(try await server.listeningAddress?.ipv4)
    // The product service is nowhere: nothing listens on its port.
    let directory = ServiceDirectory(endpoints: [
      .user: Endpoint(host: "127.0.0.1", port: address.port),
      .product: Endpoint(host: "127.0.0.1", port: try freePort()),
    ])
    let upstreams = try ServiceClients(directory: directory, services: [.user, .product])
    try await withServices([upstreams]) {
      var settings = GatewaySettings()
      settings.maxBodyBytes = 1024
      settings.defaultRateLimit = RateLimitPolicy(name: "default", limit: 1000, window: .seconds(60))
      settings.routeRateLimits = ["UserService_GetJwks": RateLimitPolicy(name: "jwks", limit: 2, window: .seconds(10))]
      // Long enough for a loaded machine's ordinary GetUser, far shorter than the "slow" user's.
      settings.routeDeadlines = ["UserService_GetUser": .seconds(2)]
      settings.cors.allowedOrigins = ["https://shop.example"]
      settings.trustedProxies = trustedProxies.compactMap { IPNetwork($0) }
      settings.strictTransportSecurity = hsts
      settings.routeRateLimits.merge(routeLimits) { _, new in new }
      settings.timeouts = timeouts
      if let admission { settings.admission = admission }
      // The gateway's configuration holds every service's key (as in `mart dev`), and still checks
      // no service token: they are for calls between services only.
      let configuration = GatewayConfiguration(
        directory: directory, auth: serviceAuth, settings: settings, adminToken: try adminToken.map(AdminToken.init))
      let app = try Gateway.makeApplication(
        configuration: configuration, upstreams: upstreams, clock: clock.function, logger: TestBed.logger)
      try await app.test(setup) { client in
        try await body(gateway, client)
      }
    }
  }
}

/// The user service as a test double: just enough of it to see what the gateway sends.
struct StubUserService: RegistrableRPCService {
  let key: JSONWebKeyValue

  func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
    typealias Method = Mart_User_V1_UserService.Method
    let key = self.key
    Self.unary(&router, Method.GetJwks.descriptor) { (_: Mart_User_V1_GetJwksRequest, _) in
      Mart_User_V1_JsonWebKeySet.with {
        $0.keys = [
          .with {
            $0.kty = key.kty
            $0.use = key.use
            $0.kid = key.kid
            $0.alg = key.alg
            $0.crv = key.crv
            $0.x = key.x
            $0.y = key.y
          }
        ]
      }
    }
    Self.unary(&router, Method.GetMe.descriptor) { (_: Mart_User_V1_GetMeRequest, metadata) in
      Mart_User_V1_User.with {
        $0.id = "me"
        $0.email = metadata[stringValues: "x-request-id"].first(where: { _ in true }) ?? ""
        $0.emailVerified = metadata[stringValues: "authorization"].first(where: { _ in true }) != nil
        $0.fullName = metadata[stringValues: "x-mart-client-ip"].first(where: { _ in true }) ?? "none"
      }
    }
    Self.unary(&router, Method.Login.descriptor) { (request: Mart_User_V1_LoginRequest, _) in
      guard request.email != "fail@example.com" else {
        throw GoogleRPCStatus(
          code: .unauthenticated, message: "invalid email or password",
          details: [.errorInfo(reason: "INVALID_CREDENTIALS", domain: "mart")])
      }
      return Mart_User_V1_LoginResponse.with { $0.user.email = request.email }
    }
    Self.unary(&router, Method.ListUsers.descriptor) { (request: Mart_User_V1_ListUsersRequest, _) in
      let role = request.role == .admin ? "admin" : request.role == .customer ? "customer" : "none"
      return Mart_User_V1_ListUsersResponse.with {
        $0.nextPageToken = "size=\(request.pageSize);query=\(request.query);role=\(role)"
      }
    }
    Self.unary(&router, Method.GetUser.descriptor) { (request: Mart_User_V1_GetUserRequest, _) in
      switch request.userID {
      case "missing":
        throw GoogleRPCStatus(
          code: .notFound, message: "no such user",
          details: [.resourceInfo(type: "mart.user.v1.User", name: "missing", errorDescription: "not found")])
      case "boom":
        throw RPCError(code: .internalError, message: "secret database failure")
      case "slow":
        // Cancelled when the gateway's deadline (sent as grpc-timeout) passes.
        try await Task.sleep(for: .seconds(10))
        return Mart_User_V1_User()
      default:
        return Mart_User_V1_User.with { $0.id = request.userID }
      }
    }
    Self.unary(&router, Method.UpdateMe.descriptor) { (request: Mart_User_V1_UpdateMeRequest, _) in
      var user = request.user
      user.email = request.updateMask.paths.joined(separator: ",")
      return user
    }
  }

  static func unary<
    Transport: ServerTransport, Input: SwiftProtobuf.Message & Sendable, Output: SwiftProtobuf.Message & Sendable
  >(
    _ router: inout RPCRouter<Transport>, _ descriptor: MethodDescriptor,
    _ handle: @escaping @Sendable (Input, Metadata) async throws -> Output
  ) {
    router.registerHandler(
      forMethod: descriptor, deserializer: ProtobufDeserializer<Input>(), serializer: ProtobufSerializer<Output>()
    ) { request, _ in
      var input: Input?
      for try await message in request.messages { input = message }
      guard let input else { throw RPCError(code: .invalidArgument, message: "no request message") }
      let output = try await handle(input, request.metadata)
      return StreamingServerResponse(single: ServerResponse(message: output))
    }
  }
}
