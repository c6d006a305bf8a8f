import Foundation
import GRPCCore
import GRPCProtobuf
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import SwiftProtobuf
import Testing
import UserService

/// The user service in-process on a scratch database, called with the generated client over the
/// in-process transport (over HTTP/2 where the caller's address matters).
@Suite struct UserServiceTests {
  @Test func registerLoginGetMeRefreshLogout() async throws {
    try await withUserService("users_flow") { service in
      let registered = try await service.register(email: "  Alice@Example.COM ", fullName: "Alice Liddell")
      #expect(registered.user.email == "alice@example.com")
      #expect(registered.user.roles == [.customer])
      #expect(registered.tokens.tokenType == "Bearer")
      #expect(registered.tokens.expiresIn == 900)
      #expect(!registered.tokens.refreshToken.isEmpty)

      let me = try await service.client.getMe(.init(), metadata: bearer(registered.tokens.accessToken))
      #expect(me.id == registered.user.id)
      #expect(me.fullName == "Alice Liddell")

      let login = try await service.client.login(
        .with {
          $0.email = "ALICE@example.com"
          $0.password = defaultPassword
        })
      #expect(login.user.id == registered.user.id)
      #expect(login.user.hasLastLoginTime)
      let claims = try decodeClaims(login.tokens.accessToken)
      #expect(claims.sub == registered.user.id)
      #expect(claims.roles == ["customer"])
      #expect(claims.iss == "mart" && claims.aud == ["mart"])
      #expect(claims.exp - claims.iat == 900)
      #expect(!claims.jti.isEmpty)

      let refreshed = try await service.client.refresh(.with { $0.refreshToken = login.tokens.refreshToken })
      #expect(refreshed.tokens.refreshToken != login.tokens.refreshToken)
      let again = try await service.client.getMe(.init(), metadata: bearer(refreshed.tokens.accessToken))
      #expect(again.id == registered.user.id)

      // Logout ends the session: its refresh token no longer works. Logout is idempotent.
      _ = try await service.client.logout(.with { $0.refreshToken = refreshed.tokens.refreshToken })
      let afterLogout = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = refreshed.tokens.refreshToken })
      }
      #expect(afterLogout?.code == .unauthenticated)
      _ = try await service.client.logout(.with { $0.refreshToken = refreshed.tokens.refreshToken })
      _ = try await service.client.logout(.with { $0.refreshToken = "not-a-token" })

      // The register session is another family: still alive until logout with all_sessions.
      let other = try await service.client.refresh(.with { $0.refreshToken = registered.tokens.refreshToken })
      _ = try await service.client.logout(
        .with {
          $0.refreshToken = other.tokens.refreshToken
          $0.allSessions = true
        })
      let live = try await service.count("SELECT count(*)::int8 FROM refresh_tokens WHERE revoked_at IS NULL")
      #expect(live == 0)
    }
  }

  /// Register answers a taken email (in any case) exactly as a new one, so it cannot be used to
  /// find out who has an account; the owner is told instead, and the stranger's password opens
  /// nothing.
  @Test func aTakenEmailIsAnsweredAsANewOneAndItsOwnerIsTold() async throws {
    try await withUserService("users_dup") { service in
      let request = Mart_User_V1_RegisterRequest.with {
        $0.email = "Bob@Example.com"
        $0.password = defaultPassword
        $0.fullName = "Bob"
      }
      let first = try await service.client.register(request)
      var again = request
      again.email = "bob@EXAMPLE.com"
      again.password = "another fine password"
      let second = try await service.client.register(again)
      #expect(first == second)
      #expect(first.email == "bob@example.com")
      #expect(try await service.count("SELECT count(*)::int8 FROM users") == 1)
      let events = try await service.strings(
        "SELECT event_type FROM outbox WHERE event_type LIKE 'mart.user.v1.%' ORDER BY id")
      #expect(
        events == [
          "mart.user.v1.UserRegistered", "mart.user.v1.EmailVerificationRequested",
          "mart.user.v1.RegistrationAttempted",
        ])
      let wrong = await rpcError {
        _ = try await service.client.login(
          .with {
            $0.email = "bob@example.com"
            $0.password = "another fine password"
          })
      }
      #expect(wrong?.code == .unauthenticated)
      _ = try await service.client.login(
        .with {
          $0.email = "bob@example.com"
          $0.password = defaultPassword
        })
      // Per email, taken or not: five an hour, then RATE_LIMITED for any email alike.
      for _ in 0..<3 { _ = try await service.client.register(again) }
      let limited = await rpcError { _ = try await service.client.register(again) }
      #expect(limited?.code == .resourceExhausted)
      #expect(reason(limited) == "RATE_LIMITED")
      var unknown = request
      unknown.email = "nobody-yet@example.com"
      for _ in 0..<5 { _ = try await service.client.register(unknown) }
      let unknownLimited = await rpcError { _ = try await service.client.register(unknown) }
      #expect(unknownLimited?.code == .resourceExhausted)
    }
  }

  /// The link in the verification email verifies the address once; the access token then says
  /// so; a used, unknown or resent-over token does not verify, and resending has a quota that
  /// answers the same for any email.
  @Test func emailVerificationIsSingleUseAndResendIsQuotaed() async throws {
    try await withUserService("users_verify") { service in
      let signedIn = try await service.register(email: "vera@example.com")
      #expect(!signedIn.user.emailVerified)
      #expect(try decodeClaims(signedIn.tokens.accessToken).emailVerified == false)
      let token = try #require(try await service.verificationTokens("vera@example.com").first)
      let bogus = await rpcError { _ = try await service.client.verifyEmail(.with { $0.token = "not-a-token" }) }
      #expect(bogus?.code == .invalidArgument)
      #expect(reason(bogus) == "INVALID_VERIFICATION_TOKEN")
      #expect(fields(bogus) == ["token"])
      let verified = try await service.client.verifyEmail(.with { $0.token = token })
      #expect(verified.user.emailVerified)
      #expect(verified.user.email == "vera@example.com")
      let reused = await rpcError { _ = try await service.client.verifyEmail(.with { $0.token = token }) }
      #expect(reason(reused) == "INVALID_VERIFICATION_TOKEN")
      let after = try await service.client.login(
        .with {
          $0.email = "vera@example.com"
          $0.password = defaultPassword
        })
      #expect(after.user.emailVerified)
      #expect(try decodeClaims(after.tokens.accessToken).emailVerified == true)

      // Resend: a new link only for an account that is not verified yet, the same answer always.
      _ = try await service.register(email: "walt@example.com")
      for email in ["walt@example.com", "vera@example.com", "nobody@example.com"] {
        _ = try await service.client.resendVerificationEmail(.with { $0.email = email })
      }
      #expect(try await service.verificationTokens("walt@example.com").count == 2)
      #expect(try await service.verificationTokens("vera@example.com").count == 1)
      for _ in 0..<2 { _ = try await service.client.resendVerificationEmail(.with { $0.email = "nobody@example.com" }) }
      let limited = await rpcError {
        _ = try await service.client.resendVerificationEmail(.with { $0.email = "nobody@example.com" })
      }
      #expect(limited?.code == .resourceExhausted)
      let badEmail = await rpcError {
        _ = try await service.client.resendVerificationEmail(.with { $0.email = "not an email" })
      }
      #expect(fields(badEmail) == ["email"])
      // An expired link verifies nothing.
      let walt = try await service.verificationTokens("walt@example.com")
      try await service.database.query(
        "UPDATE email_verifications SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'",
        logger: TestBed.logger)
      let expired = await rpcError { _ = try await service.client.verifyEmail(.with { $0.token = walt[1] }) }
      #expect(reason(expired) == "INVALID_VERIFICATION_TOKEN")
    }
  }

  @Test func weakPasswordAndBadFieldsAreInvalidArguments() async throws {
    try await withUserService("users_weak") { service in
      let short = await rpcError { _ = try await service.register(email: "carol@example.com", password: "short") }
      #expect(short?.code == .invalidArgument)
      #expect(reason(short) == "WEAK_PASSWORD")
      #expect(fields(short) == ["password"])

      let sameAsEmail = await rpcError {
        _ = try await service.register(email: "carol@example.com", password: "CAROL@example.com")
      }
      #expect(sameAsEmail?.code == .invalidArgument)
      #expect(fields(sameAsEmail) == ["password"])

      let tooLong = await rpcError {
        _ = try await service.register(email: "carol@example.com", password: String(repeating: "x", count: 129))
      }
      #expect(fields(tooLong) == ["password"])

      let several = await rpcError {
        _ = try await service.client.register(
          .with {
            $0.email = "not an email"
            $0.password = defaultPassword
            $0.fullName = ""
            $0.phone = "0821234567"
          })
      }
      #expect(several?.code == .invalidArgument)
      #expect(reason(several) == "VALIDATION_FAILED")
      #expect(fields(several) == ["email", "full_name", "phone"])
      let users = try await service.count("SELECT count(*)::int8 FROM users")
      #expect(users == 0)
    }
  }

  @Test func wrongPasswordAndUnknownEmailGetTheSameAnswer() async throws {
    try await withUserService("users_creds") { service in
      _ = try await service.register(email: "dave@example.com")
      let wrong = await rpcError {
        _ = try await service.client.login(
          .with {
            $0.email = "dave@example.com"
            $0.password = "not the password"
          })
      }
      let unknown = await rpcError {
        _ = try await service.client.login(
          .with {
            $0.email = "nobody@example.com"
            $0.password = "not the password"
          })
      }
      #expect(wrong?.code == .unauthenticated)
      #expect(wrong?.code == unknown?.code)
      #expect(wrong?.message == "invalid email or password")
      #expect(wrong?.message == unknown?.message)
      #expect(reason(wrong) == "INVALID_CREDENTIALS")
      #expect(reason(unknown) == "INVALID_CREDENTIALS")
    }
  }

  @Test func repeatedFailuresLockTheAccount() async throws {
    // Over HTTP/2: the last address counted is the connection's peer, which in-process has none.
    try await withUserService("users_throttle", overHTTP2: true) { service in
      _ = try await service.register(email: "erin@example.com")
      for _ in 0..<5 {
        let error = await rpcError {
          _ = try await service.client.login(
            .with {
              $0.email = "erin@example.com"
              $0.password = "guess guess guess"
            })
        }
        #expect(error?.code == .unauthenticated)
      }
      // Locked now: even the right password is refused, with a time to wait.
      let locked = await rpcError {
        _ = try await service.client.login(
          .with {
            $0.email = "Erin@example.com"
            $0.password = defaultPassword
          })
      }
      #expect(locked?.code == .resourceExhausted)
      #expect(reason(locked) == "RATE_LIMITED")
      let retry = details(locked).compactMap(\.retryInfo).first
      #expect((retry?.delay ?? .zero) > .zero)
      let accountKey = try await service.count(
        "SELECT count(*)::int8 FROM login_failures WHERE key = 'account:erin@example.com' AND failures = 5")
      #expect(accountKey == 1)

      // Failures count against the client address too: the one the gateway vouches for with its
      // token (an IPv6 address by its /64), else the connection's peer. Address headers from a
      // direct caller are ignored, and so is a gateway token from a key that is not the
      // gateway's. Unknown emails are counted alike, so the throttle does not tell which accounts
      // exist.
      var spoofed = try await AuthConfiguration.ephemeral().fromGateway(to: .user, clientAddress: "192.0.2.66")
      spoofed.addString("198.51.100.1", forKey: "x-forwarded-for")
      let attempts: [Metadata] = [
        try await testAuth.fromGateway(to: .user, clientAddress: "203.0.113.7"),
        try await testAuth.fromGateway(to: .user, clientAddress: "2001:db8:1:2:3:4:5:6"),
        ["x-mart-client-ip": "192.0.2.77", "x-forwarded-for": "198.51.100.1"],
        spoofed,
        [:],
      ]
      for metadata in attempts {
        _ = await rpcError {
          _ = try await service.client.login(
            .with {
              $0.email = "nobody@example.com"
              $0.password = "guess guess guess"
            }, metadata: metadata)
        }
      }
      let keys = try await service.strings("SELECT key FROM login_failures ORDER BY key")
      #expect(
        keys == [
          "account:erin@example.com", "account:nobody@example.com", "ip:127.0.0.1", "ip:2001:db8:1:2::/64",
          "ip:203.0.113.7", "pair:erin@example.com|127.0.0.1", "pair:nobody@example.com|127.0.0.1",
          "pair:nobody@example.com|2001:db8:1:2::/64", "pair:nobody@example.com|203.0.113.7",
        ])
    }
  }

  /// Guesses from one address lock that address out of the account, not the owner: the account
  /// itself is only slowed down for addresses it has never signed in from, and the owner's
  /// correct password from an address they have used before goes through at once.
  @Test func someoneElsesGuessesDoNotLockTheOwnerOut() async throws {
    var options = testOptions
    // A long account delay, so that "still slowed down" does not depend on how fast this runs.
    options.loginThrottle.accountDelay = .seconds(600)
    options.loginThrottle.maximumAccountDelay = .seconds(600)
    try await withUserService("users_lockout", options: options) { service in
      _ = try await service.register(email: "owner@example.com")
      func login(from address: String, password: String = defaultPassword) async -> RPCError? {
        await rpcError {
          let viaGateway = try await testAuth.fromGateway(to: .user, clientAddress: address)
          _ = try await service.client.login(
            .with {
              $0.email = "owner@example.com"
              $0.password = password
            }, metadata: viaGateway)
        }
      }
      let home = "203.0.113.1"
      let attacker = "198.51.100.7"
      let cafe = "192.0.2.3"
      #expect(await login(from: home) == nil)
      for _ in 0..<5 {
        #expect(await login(from: attacker, password: "guess guess guess")?.code == .unauthenticated)
      }
      // The attacker's address is locked out of the account, whatever password it brings.
      let attackerLocked = await login(from: attacker)
      #expect(attackerLocked?.code == .resourceExhausted)
      #expect(reason(attackerLocked) == "RATE_LIMITED")
      // A new address waits (a guess from it would too), and is not counted while it waits.
      let cafeWaits = await login(from: cafe)
      #expect(cafeWaits?.code == .resourceExhausted)
      let wait = details(cafeWaits).compactMap(\.retryInfo).first?.delay ?? .zero
      #expect(wait > .zero && wait <= .seconds(600))
      #expect(await login(from: cafe, password: "guess guess guess")?.code == .resourceExhausted)
      // The owner, from home, is let straight in, and that lifts the slow-down...
      #expect(await login(from: home) == nil)
      #expect(await login(from: cafe) == nil)
      // ...but not the attacker's lock.
      #expect(await login(from: attacker)?.code == .resourceExhausted)
      let counts = try await service.strings(
        "SELECT key || '=' || failures FROM login_failures WHERE key LIKE '%owner@example.com%' ORDER BY key")
      #expect(counts == ["pair:owner@example.com|198.51.100.7=5"])
      let known = try await service.strings(
        "SELECT address FROM login_known_addresses WHERE account = 'account:owner@example.com' ORDER BY address")
      #expect(known == [cafe, home])
    }
  }

  /// Parallel guesses at one account from one address: each is counted before its password is
  /// checked, so no more than the pair's threshold of them get an answer about the password; the
  /// rest are refused as if they had come after the lock.
  @Test func parallelGuessesPassThePairLockNoMoreThanItsThreshold() async throws {
    var options = testOptions
    options.loginThrottle.pairThreshold = 3
    // A hash slow enough that all the guesses are in flight at once, and room for all of them.
    options.passwordCost = .init(logN: 14, blockSize: 8, parallelism: 1)
    options.hashingQueue = PasswordHashingQueue(concurrency: 2, maximumWaiting: 20)
    try await withUserService("users_parallel_guesses", options: options) { service in
      _ = try await service.register(email: "ivan@example.com")
      let client = service.client
      let viaGateway = try await testAuth.fromGateway(to: .user, clientAddress: "198.51.100.23")
      let outcomes = await withTaskGroup(of: String.self) { group in
        for _ in 0..<10 {
          group.addTask {
            let error = await rpcError {
              _ = try await client.login(
                .with {
                  $0.email = "ivan@example.com"
                  $0.password = "guess guess guess"
                }, metadata: viaGateway)
            }
            return error.map { "\($0.code) \(reason($0) ?? "")" } ?? "signed in"
          }
        }
        var outcomes: [String] = []
        for await outcome in group { outcomes.append(outcome) }
        return outcomes
      }
      let checked = outcomes.filter { $0 == "unauthenticated INVALID_CREDENTIALS" }.count
      let refused = outcomes.filter { $0 == "resourceExhausted RATE_LIMITED" }.count
      #expect(checked <= 3, "\(outcomes)")
      #expect(checked + refused == 10, "\(outcomes)")
      // Only the guesses that were checked count; the refused ones count nowhere.
      let pair = try await service.count(
        "SELECT failures::int8 FROM login_failures WHERE key = 'pair:ivan@example.com|198.51.100.23'")
      #expect(pair == Int64(checked))
      let address = try await service.count(
        "SELECT failures::int8 FROM login_failures WHERE key = 'ip:198.51.100.23'")
      #expect(address == Int64(checked))
      let account = try await service.count(
        "SELECT failures::int8 FROM login_failures WHERE key = 'account:ivan@example.com'")
      #expect(account == Int64(checked))
    }
  }

  /// The signing keys are stored sealed with the key-encryption key, never in the clear; a key
  /// stored before encryption is sealed at start; and a new KEK put first re-seals every key,
  /// after which the old KEK can go and the same key still signs.
  @Test func signingKeysAreSealedAtRestAndTheKEKRotates() async throws {
    let oldEntry = KeyEncryptionKeys.newEntryText(id: "old")
    let newEntry = KeyEncryptionKeys.newEntryText(id: "new")
    func options(_ entries: String) throws -> UserServiceOptions {
      var options = testOptions
      options.keyEncryption = try KeyEncryptionKeys(
        environment: EnvironmentReader([KeyEncryptionKeys.variable: entries]))
      return options
    }
    @Sendable func rows(_ database: PostgresClient) async throws -> [String: (kek: String?, sealed: Data)] {
      var found: [String: (kek: String?, sealed: Data)] = [:]
      let rows = try await database.query("SELECT kid, kek_id, private_key FROM signing_keys", logger: TestBed.logger)
      for try await (kid, kek, sealed) in rows.decode((String, String?, Data).self) { found[kid] = (kek, sealed) }
      return found
    }
    try await ScratchDatabase.with("users_kek") { database in
      let configuration = ServiceConfiguration(service: .user, port: 0, database: database.configuration)
      func run(_ entries: String, _ body: (any Mart_User_V1_UserService.ClientProtocol) async throws -> Void)
        async throws
      {
        try await withHost(
          UserServiceModule.makeDefinition(options: try options(entries)), configuration: configuration,
          auth: testAuth
        ) { _, grpc in try await body(Mart_User_V1_UserService.Client(wrapping: grpc)) }
      }
      func signIn(_ client: any Mart_User_V1_UserService.ClientProtocol) async throws -> String {
        let tokens = try await client.login(
          .with {
            $0.email = "kek@example.com"
            $0.password = defaultPassword
          }
        ).tokens
        _ = try await client.getMe(.init(), metadata: bearer(tokens.accessToken))
        return try decodeKid(tokens.accessToken)
      }
      var firstKid = ""
      try await run(oldEntry) { client in
        _ = try await client.register(
          .with {
            $0.email = "kek@example.com"
            $0.password = defaultPassword
            $0.fullName = "K"
          })
        firstKid = try await signIn(client)
      }
      let kid = firstKid
      try await withPostgresClient(database.configuration) { postgres in
        let stored = try #require(try await rows(postgres)[kid])
        #expect(stored.kek == "old")
        // Neither PEM nor a raw scalar: nothing in the row signs without the KEK.
        #expect(!String(decoding: stored.sealed, as: UTF8.self).contains("PRIVATE KEY"))
        #expect(stored.sealed.count == 12 + 32 + 16)
        // A key from before encryption, in the clear, retired but still published.
        let legacy = TokenSigningKey.random(kid: "legacy-key")
        let jwk = String(decoding: try JSONEncoder().encode(legacy.publicJWK), as: UTF8.self)
        let pem = Data(legacy.privateKey.pemRepresentation.utf8)
        try await postgres.query(
          """
          INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, retire_after, expires_at, created_at)
          VALUES ('legacy-key', 'ES256', \(pem), \(jwk)::jsonb, now() - interval '1 minute',
                  now() + interval '1 hour', now() - interval '1 day')
          """, logger: TestBed.logger)
      }
      // The new KEK first: every key is sealed under it, the one in the clear too.
      try await run("\(newEntry),\(oldEntry)") { client in
        let signedWith = try await signIn(client)
        #expect(signedWith == kid)
      }
      try await withPostgresClient(database.configuration) { postgres in
        let stored = try await rows(postgres)
        #expect(stored.mapValues(\.kek) == [kid: "new", "legacy-key": "new"])
        let legacySealed = String(decoding: stored["legacy-key"]?.sealed ?? Data(), as: UTF8.self)
        #expect(!legacySealed.isEmpty && !legacySealed.contains("PRIVATE KEY"))
      }
      // The old KEK gone: the same key still signs.
      try await run(newEntry) { client in
        let signedWith = try await signIn(client)
        #expect(signedWith == kid)
      }
      // A KEK that opens nothing: the sealed keys do not sign, a new key does, and only one (the
      // older key it cannot open is passed over, not a reason to make yet another).
      try await run(KeyEncryptionKeys.newEntryText(id: "stranger")) { client in
        let signedWith = try await signIn(client)
        #expect(signedWith != kid)
        let again = try await signIn(client)
        #expect(again == signedWith)
      }
    }
  }

  /// A burst of sign-ins beyond what the hashing queue admits gets UNAVAILABLE (OVERLOADED) with a
  /// time to retry at once, rather than waiting in an unbounded queue.
  @Test func aBurstOfLoginsBeyondTheHashingQueueIsUnavailableWithRetryInfo() async throws {
    var options = testOptions
    options.passwordCost = .init(logN: 14, blockSize: 8, parallelism: 1)
    options.hashingQueue = PasswordHashingQueue(concurrency: 1, maximumWaiting: 1)
    // Attempts are counted before they are hashed, the right ones too until they are decided: a
    // burst at one account past its threshold would be throttled before it reached the queue.
    options.loginThrottle.accountThreshold = 100
    try await withUserService("users_busy", options: options) { service in
      _ = try await service.register(email: "busy@example.com")
      let client = service.client
      let outcomes = await withTaskGroup(of: String.self) { group in
        for _ in 0..<16 {
          group.addTask {
            let error = await rpcError {
              _ = try await client.login(
                .with {
                  $0.email = "busy@example.com"
                  $0.password = defaultPassword
                })
            }
            guard let error else { return "signed in" }
            let delay = details(error).compactMap(\.retryInfo).first?.delay ?? .zero
            return "\(error.code) \(reason(error) ?? "") \(delay > .zero)"
          }
        }
        var outcomes: [String] = []
        for await outcome in group { outcomes.append(outcome) }
        return outcomes
      }
      #expect(outcomes.contains("signed in"))
      #expect(outcomes.contains("unavailable OVERLOADED true"), "\(outcomes)")
      #expect(outcomes.allSatisfy { $0 == "signed in" || $0 == "unavailable OVERLOADED true" }, "\(outcomes)")
      // Every attempt was counted, and every count given back: signed in, or never checked.
      let counts = try await service.count("SELECT count(*)::int8 FROM login_failures")
      #expect(counts == 0)
    }
  }

  @Test func reusedRefreshTokenRevokesItsFamily() async throws {
    try await withUserService("users_reuse") { service in
      let registered = try await service.register(email: "frank@example.com")
      let first = registered.tokens.refreshToken
      let second = try await service.client.refresh(.with { $0.refreshToken = first }).tokens.refreshToken

      let reuse = await rpcError { _ = try await service.client.refresh(.with { $0.refreshToken = first }) }
      #expect(reuse?.code == .unauthenticated)
      #expect(reason(reuse) == "REFRESH_TOKEN_REUSED")

      // The successor was revoked with the family.
      let successor = await rpcError { _ = try await service.client.refresh(.with { $0.refreshToken = second }) }
      #expect(successor?.code == .unauthenticated)
      #expect(reason(successor) == "TOKEN_INVALID")

      let unknown = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = String(repeating: "A", count: 43) })
      }
      #expect(unknown?.code == .unauthenticated)
      let empty = await rpcError { _ = try await service.client.refresh(.init()) }
      #expect(empty?.code == .invalidArgument)
    }
  }

  /// A session ends 30 days after its sign-in however often it is refreshed: a refresh near the
  /// end gets a token that expires at the end, and one after it is refused.
  @Test func aSessionHasAnAbsoluteLifetime() async throws {
    try await withUserService("users_session_end") { service in
      let registered = try await service.register(email: "gina@example.com")
      // The session began 29 days and 23 hours ago: an hour is left.
      try await service.database.query(
        """
        UPDATE refresh_tokens SET created_at = now() - interval '29 days 23 hours'
        WHERE user_id = (SELECT id FROM users WHERE email = 'gina@example.com')
        """, logger: TestBed.logger)
      let refreshed = try await service.client.refresh(.with { $0.refreshToken = registered.tokens.refreshToken })
      let expires = refreshed.tokens.refreshTokenExpireTime.date
      #expect(expires < Date().addingTimeInterval(3700) && expires > Date().addingTimeInterval(3400), "\(expires)")

      // Past the end: refused, and the session is over.
      try await service.database.query(
        """
        UPDATE refresh_tokens SET created_at = now() - interval '31 days'
        WHERE user_id = (SELECT id FROM users WHERE email = 'gina@example.com')
        """, logger: TestBed.logger)
      let ended = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = refreshed.tokens.refreshToken })
      }
      #expect(ended?.code == .unauthenticated)
    }
  }

  @Test func concurrentRefreshOfOneTokenSucceedsOnce() async throws {
    try await withUserService("users_race") { service in
      let registered = try await service.register(email: "grace@example.com")
      let token = registered.tokens.refreshToken
      let client = service.client
      let outcomes = try await withThrowingTaskGroup(of: RPCError.Code?.self) { group in
        for _ in 0..<6 {
          group.addTask {
            await rpcError { _ = try await client.refresh(.with { $0.refreshToken = token }) }?.code
          }
        }
        return try await group.reduce(into: [RPCError.Code?]()) { $0.append($1) }
      }
      #expect(outcomes.filter { $0 == nil }.count == 1)
      #expect(outcomes.filter { $0 == .unauthenticated }.count == 5)
      let issued = try await service.count("SELECT count(*)::int8 FROM refresh_tokens")
      #expect(issued == 2)
    }
  }

  @Test func callsWithoutAValidTokenAreRefused() async throws {
    try await withUserService("users_noauth") { service in
      let none = await rpcError { _ = try await service.client.getMe(.init()) }
      #expect(none?.code == .unauthenticated)
      let garbage = await rpcError { _ = try await service.client.getMe(.init(), metadata: bearer("a.b.c")) }
      #expect(garbage?.code == .unauthenticated)

      let customer = try await service.register(email: "heidi@example.com")
      let denied = await rpcError {
        _ = try await service.client.listUsers(.init(), metadata: bearer(customer.tokens.accessToken))
      }
      #expect(denied?.code == .permissionDenied)
      let getUser = await rpcError {
        _ = try await service.client.getUser(
          .with { $0.userID = customer.user.id }, metadata: bearer(customer.tokens.accessToken))
      }
      #expect(getUser?.code == .permissionDenied)
    }
  }

  @Test func adminsListUsersAndSetRolesButNeverRemoveTheLastAdmin() async throws {
    try await withUserService("users_admin") { service in
      let created = try await UserAdministration.createAdmin(
        database: service.database, email: "Root@Example.com", fullName: "Root", passwordCost: .testing,
        logger: TestBed.logger
      ) { defaultPassword }
      guard case .created(let adminID) = created else {
        Issue.record("expected a new account, got \(created)")
        return
      }
      let customer = try await service.register(email: "ivan@example.com", fullName: "Ivan")
      let admin = try await service.client.login(
        .with {
          $0.email = "root@example.com"
          $0.password = defaultPassword
        })
      #expect(admin.user.roles == [.customer, .admin])
      let auth = bearer(admin.tokens.accessToken)

      let all = try await service.client.listUsers(.init(), metadata: auth)
      #expect(all.users.map(\.email) == ["ivan@example.com", "root@example.com"])
      let paged = try await service.client.listUsers(.with { $0.pageSize = 1 }, metadata: auth)
      #expect(paged.users.map(\.email) == ["ivan@example.com"])
      let rest = try await service.client.listUsers(
        .with {
          $0.pageSize = 1
          $0.pageToken = paged.nextPageToken
        }, metadata: auth)
      #expect(rest.users.map(\.email) == ["root@example.com"])
      #expect(rest.nextPageToken.isEmpty)
      let admins = try await service.client.listUsers(.with { $0.role = .admin }, metadata: auth)
      #expect(admins.users.map(\.email) == ["root@example.com"])
      let byName = try await service.client.listUsers(.with { $0.query = "IVA" }, metadata: auth)
      #expect(byName.users.map(\.email) == ["ivan@example.com"])
      let badToken = await rpcError {
        _ = try await service.client.listUsers(.with { $0.pageToken = "nonsense" }, metadata: auth)
      }
      #expect(fields(badToken) == ["page_token"])

      let fetched = try await service.client.getUser(.with { $0.userID = customer.user.id }, metadata: auth)
      #expect(fetched.email == "ivan@example.com")
      let missing = await rpcError {
        _ = try await service.client.getUser(.with { $0.userID = UUID().uuidString }, metadata: auth)
      }
      #expect(missing?.code == .notFound)

      // The only admin cannot drop the role.
      let last = await rpcError {
        _ = try await service.client.setRoles(
          .with {
            $0.userID = adminID.uuidString
            $0.roles = [.customer]
          }, metadata: auth)
      }
      #expect(last?.code == .failedPrecondition)
      #expect(reason(last) == "LAST_ADMIN")

      // Promote Ivan (CUSTOMER kept though omitted); then the first admin may step down.
      let promoted = try await service.client.setRoles(
        .with {
          $0.userID = customer.user.id
          $0.roles = [.admin]
        }, metadata: auth)
      #expect(promoted.roles == [.customer, .admin])
      let demoted = try await service.client.setRoles(
        .with {
          $0.userID = adminID.uuidString
          $0.roles = []
        }, metadata: auth)
      #expect(demoted.roles == [.customer])

      // create-admin does not promote an account it did not create, unless asked to.
      await #expect(throws: UserAdministration.InvalidInput.self) {
        _ = try await UserAdministration.createAdmin(
          database: service.database, email: "root@example.com", fullName: "Root", passwordCost: .testing,
          logger: TestBed.logger
        ) {
          Issue.record("no password is asked for an account that is refused")
          return ""
        }
      }
      let again = try await UserAdministration.createAdmin(
        database: service.database, email: "root@example.com", fullName: "Root", promoteExisting: true,
        passwordCost: .testing, logger: TestBed.logger
      ) { "a brand new admin password" }
      #expect(again == .promoted(userID: adminID))
    }
  }

  /// Pre-registration takeover: an attacker registers the email an operator is about to make an
  /// admin. create-admin refuses that account; with --promote-existing the attacker's password
  /// and sessions stop working, and only the operator's password signs in as the admin.
  @Test func createAdminDoesNotHandAPreRegisteredAccountToItsRegistrant() async throws {
    try await withUserService("users_takeover") { service in
      let attacker = try await service.register(email: "ops@example.com", fullName: "Not Ops")
      let refused = await #expect(throws: UserAdministration.InvalidInput.self) {
        _ = try await UserAdministration.createAdmin(
          database: service.database, email: "ops@example.com", fullName: "Ops", passwordCost: .testing,
          logger: TestBed.logger
        ) { "the operator's own password" }
      }
      #expect(refused?.description.contains("--promote-existing") == true)
      let stillCustomer = try await service.client.getMe(.init(), metadata: bearer(attacker.tokens.accessToken))
      #expect(stillCustomer.roles == [.customer])

      let promoted = try await UserAdministration.createAdmin(
        database: service.database, email: "ops@example.com", fullName: "Ops", promoteExisting: true,
        passwordCost: .testing, logger: TestBed.logger
      ) { "the operator's own password" }
      #expect(promoted == .promoted(userID: try #require(UUID(uuidString: attacker.user.id))))
      // The attacker's password and refresh token no longer work; the operator's password does.
      let oldPassword = await rpcError {
        _ = try await service.client.login(
          .with {
            $0.email = "ops@example.com"
            $0.password = defaultPassword
          })
      }
      #expect(oldPassword?.code == .unauthenticated)
      let oldSession = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = attacker.tokens.refreshToken })
      }
      #expect(oldSession?.code == .unauthenticated)
      let operatorLogin = try await service.client.login(
        .with {
          $0.email = "ops@example.com"
          $0.password = "the operator's own password"
        })
      #expect(operatorLogin.user.roles == [.customer, .admin])
    }
  }

  @Test func concurrentDemotionsKeepOneAdmin() async throws {
    try await withUserService("users_lastadmin") { service in
      var ids: [UUID] = []
      for name in ["one", "two"] {
        let result = try await UserAdministration.createAdmin(
          database: service.database, email: "\(name)@example.com", fullName: name, passwordCost: .testing,
          logger: TestBed.logger
        ) { defaultPassword }
        if case .created(let id) = result { ids.append(id) }
      }
      #expect(ids.count == 2)
      let token = try await service.client.login(
        .with {
          $0.email = "one@example.com"
          $0.password = defaultPassword
        }
      ).tokens.accessToken
      let client = service.client
      let codes = try await withThrowingTaskGroup(of: RPCError.Code?.self) { group in
        for id in ids {
          group.addTask {
            await rpcError {
              _ = try await client.setRoles(
                .with {
                  $0.userID = id.uuidString
                  $0.roles = [.customer]
                }, metadata: bearer(token))
            }?.code
          }
        }
        return try await group.reduce(into: [RPCError.Code?]()) { $0.append($1) }
      }
      #expect(codes.filter { $0 == nil }.count == 1)
      #expect(codes.filter { $0 == .failedPrecondition }.count == 1)
      let admins = try await service.count("SELECT count(*)::int8 FROM users WHERE 'admin' = ANY (roles)")
      #expect(admins == 1)
    }
  }

  @Test func tokensOfARetiredKeyStillVerifyAndBothKeysArePublished() async throws {
    try await withUserService("users_keys") { service in
      let registered = try await service.register(email: "judy@example.com")
      let oldKid = try decodeKid(registered.tokens.accessToken)

      // Retire the current key (as time would): the next token is signed by a new one.
      try await service.database.query(
        "UPDATE signing_keys SET retire_after = now() WHERE retire_after > now()", logger: TestBed.logger)
      let login = try await service.client.login(
        .with {
          $0.email = "judy@example.com"
          $0.password = defaultPassword
        })
      let newKid = try decodeKid(login.tokens.accessToken)
      #expect(newKid != oldKid)

      for token in [registered.tokens.accessToken, login.tokens.accessToken] {
        let me = try await service.client.getMe(.init(), metadata: bearer(token))
        #expect(me.id == registered.user.id)
      }
      let jwks = try await service.client.getJwks(.init())
      #expect(Set(jwks.keys.map(\.kid)) == [oldKid, newKid])
      #expect(jwks.keys.allSatisfy { $0.kty == "EC" && $0.crv == "P-256" && $0.alg == "ES256" && $0.use == "sig" })

      // An expired key is no longer published, and its tokens no longer verify.
      try await service.database.query(
        """
        UPDATE signing_keys SET expires_at = now() - interval '1 second', retire_after = now() - interval '2 seconds'
        WHERE kid = \(oldKid)
        """, logger: TestBed.logger)
      let stale = await rpcError {
        _ = try await service.client.getMe(.init(), metadata: bearer(registered.tokens.accessToken))
      }
      #expect(stale?.code == .unauthenticated)
      let published = try await service.client.getJwks(.init())
      #expect(published.keys.map(\.kid) == [newKid])
    }
  }

  @Test func aSuccessorKeyIsPublishedBeforeItSigns() async throws {
    try await withUserService("users_prepublish") { service in
      let registered = try await service.register(email: "kim@example.com")
      let first = try decodeKid(registered.tokens.accessToken)
      func loginKid() async throws -> String {
        let login = try await service.client.login(
          .with {
            $0.email = "kim@example.com"
            $0.password = defaultPassword
          })
        return try decodeKid(login.tokens.accessToken)
      }
      // The key is close to retiring: a successor is made, but the old key keeps signing while
      // the new one is too fresh for other services' caches to have seen.
      try await service.database.query(
        """
        UPDATE signing_keys SET created_at = now() - interval '1 day', retire_after = now() + interval '5 seconds'
        WHERE kid = \(first)
        """,
        logger: TestBed.logger)
      #expect(try await loginKid() == first)
      let published = Set(try await service.client.getJwks(.init()).keys.map(\.kid))
      #expect(published.count == 2 && published.contains(first))
      // Once it has been published long enough, the successor signs.
      try await service.database.query(
        "UPDATE signing_keys SET created_at = now() - interval '1 minute' WHERE kid <> \(first)",
        logger: TestBed.logger)
      let next = try await loginKid()
      #expect(next != first && published.contains(next))
    }
  }

  @Test func userRegisteredLandsInTheOutboxOncePerRegistration() async throws {
    try await withUserService("users_outbox") { service in
      let first = try await service.register(email: "kim@example.com")
      let second = try await service.register(email: "lee@example.com")
      _ = await rpcError { _ = try await service.register(email: "KIM@example.com") }
      _ = await rpcError { _ = try await service.register(email: "mo@example.com", password: "short") }
      let rows = try await service.database.query(
        "SELECT aggregate_id, payload FROM outbox WHERE event_type = 'mart.user.v1.UserRegistered' ORDER BY id",
        logger: TestBed.logger)
      var events: [Mart_User_V1_UserRegistered] = []
      var aggregates: [String] = []
      for try await (aggregate, payload) in rows.decode((String, ByteBuffer).self) {
        aggregates.append(aggregate)
        events.append(try Mart_User_V1_UserRegistered(serializedBytes: Array(buffer: payload)))
      }
      #expect(aggregates == [first.user.id, second.user.id])
      #expect(events.map(\.email) == ["kim@example.com", "lee@example.com"])
      #expect(events.allSatisfy { $0.roles == [.customer] && !$0.metadata.eventID.isEmpty })
    }
  }

  /// What the notification service keeps of an account comes from these events: the whole state
  /// and a version that grows with every change, so a copy can refuse an older one.
  @Test func localeAndUserUpdatedCarryTheWholeStateWithAVersion() async throws {
    try await withUserService("users_updated") { service in
      _ = try await service.client.register(
        .with {
          $0.email = "lena@example.com"
          $0.password = defaultPassword
          $0.fullName = "Lena Berg"
          $0.locale = "de_ch"
        })
      let registered = try await service.client.login(
        .with {
          $0.email = "lena@example.com"
          $0.password = defaultPassword
        })
      #expect(registered.user.locale == "de-CH")
      let auth = bearer(registered.tokens.accessToken)
      let badLocale = await rpcError {
        _ = try await service.client.register(
          .with {
            $0.email = "max@example.com"
            $0.password = defaultPassword
            $0.fullName = "Max"
            $0.locale = "german"
          })
      }
      #expect(fields(badLocale) == ["locale"])

      let updated = try await service.client.updateMe(
        .with {
          $0.user.locale = "en"
          $0.user.phone = "+27821234567"
          $0.updateMask = .with { $0.paths = ["locale", "phone"] }
        }, metadata: auth)
      #expect(updated.locale == "en")
      // The same values again change nothing, so no event.
      _ = try await service.client.updateMe(
        .with {
          $0.user.locale = "en"
          $0.updateMask = .with { $0.paths = ["locale"] }
        }, metadata: auth)
      _ = try await UserAdministration.createAdmin(
        database: service.database, email: "root@example.com", fullName: "Root", passwordCost: .testing,
        logger: TestBed.logger
      ) { "correct horse battery staple" }
      let adminToken = try await service.client.login(
        .with {
          $0.email = "root@example.com"
          $0.password = "correct horse battery staple"
        }
      ).tokens.accessToken
      _ = try await service.client.setRoles(
        .with {
          $0.userID = registered.user.id
          $0.roles = [.customer, .admin]
        }, metadata: bearer(adminToken))

      let rows = try await service.database.query(
        """
        SELECT payload FROM outbox WHERE event_type = 'mart.user.v1.UserUpdated' AND aggregate_id = \(registered.user.id)
        ORDER BY id
        """, logger: TestBed.logger)
      var events: [Mart_User_V1_UserUpdated] = []
      for try await payload in rows.decode(ByteBuffer.self) {
        events.append(try Mart_User_V1_UserUpdated(serializedBytes: Array(buffer: payload)))
      }
      #expect(events.map(\.version) == [2, 3])
      #expect(events.first?.locale == "en" && events.first?.phone == "+27821234567")
      #expect(events.first?.previousRoles == [])
      #expect(events.last?.roles == [.customer, .admin] && events.last?.previousRoles == [.customer])
      #expect(events.allSatisfy { $0.email == "lena@example.com" && $0.fullName == "Lena Berg" })
    }
  }

  @Test func profileAndAddressBook() async throws {
    try await withUserService("users_addresses") { service in
      let registered = try await service.register(email: "nina@example.com")
      let auth = bearer(registered.tokens.accessToken)

      let updated = try await service.client.updateMe(
        .with {
          $0.user.fullName = "Nina Simone"
          $0.user.phone = "+27821234567"
          $0.user.email = "ignored@example.com"
          $0.updateMask = .with { $0.paths = ["full_name", "phone"] }
        }, metadata: auth)
      #expect(updated.fullName == "Nina Simone" && updated.phone == "+27821234567")
      #expect(updated.email == "nina@example.com")
      let badPath = await rpcError {
        _ = try await service.client.updateMe(
          .with {
            $0.user.email = "new@example.com"
            $0.updateMask = .with { $0.paths = ["email"] }
          }, metadata: auth)
      }
      #expect(fields(badPath) == ["update_mask"])
      let badPhone = await rpcError {
        _ = try await service.client.updateMe(
          .with {
            $0.user.phone = "12345"
            $0.updateMask = .with { $0.paths = ["phone"] }
          }, metadata: auth)
      }
      #expect(fields(badPhone) == ["user.phone"])

      func address(_ line: String) -> Mart_Common_V1_Address {
        .with {
          $0.recipientName = "Nina"
          $0.lines = [line]
          $0.city = "Cape Town"
          $0.countryCode = "za"
        }
      }
      let home = try await service.client.addAddress(
        .with {
          $0.address = address("1 Long Street")
          $0.label = "Home"
        }, metadata: auth)
      #expect(home.isDefault && home.address.countryCode == "ZA")
      let work = try await service.client.addAddress(.with { $0.address = address("2 Short Street") }, metadata: auth)
      #expect(!work.isDefault)
      let moved = try await service.client.addAddress(
        .with {
          $0.address = address("3 Loop Street")
          $0.setDefault = true
        }, metadata: auth)
      #expect(moved.isDefault)

      let page1 = try await service.client.listMyAddresses(.with { $0.pageSize = 2 }, metadata: auth)
      #expect(page1.addresses.map(\.id) == [moved.id, work.id])
      let page2 = try await service.client.listMyAddresses(
        .with {
          $0.pageSize = 2
          $0.pageToken = page1.nextPageToken
        }, metadata: auth)
      #expect(page2.addresses.map(\.id) == [home.id])
      #expect(page2.nextPageToken.isEmpty)

      let invalid = await rpcError {
        _ = try await service.client.addAddress(
          .with { $0.address = .with { $0.lines = ["x"] } }, metadata: auth)
      }
      #expect(
        fields(invalid) == ["address.recipient_name", "address.city", "address.country_code"])
      let badSize = await rpcError {
        _ = try await service.client.listMyAddresses(.with { $0.pageSize = -1 }, metadata: auth)
      }
      #expect(fields(badSize) == ["page_size"])

      // Someone else's address is not found; deleting the default promotes the newest other one.
      let stranger = try await service.register(email: "oscar@example.com")
      let notTheirs = await rpcError {
        _ = try await service.client.deleteAddress(
          .with { $0.addressID = home.id }, metadata: bearer(stranger.tokens.accessToken))
      }
      #expect(notTheirs?.code == .notFound)
      _ = try await service.client.deleteAddress(.with { $0.addressID = moved.id }, metadata: auth)
      let remaining = try await service.client.listMyAddresses(.init(), metadata: auth)
      #expect(remaining.addresses.map(\.id) == [work.id, home.id])
      #expect(remaining.addresses.first?.isDefault == true)
    }
  }
}

// MARK: - Harness

let defaultPassword = "correct horse battery staple"

/// A running user service and what a test needs to talk to it.
struct UserServiceUnderTest: Sendable {
  /// The generated client's protocol: most tests call in-process, the address throttle's over
  /// HTTP/2.
  let client: any Mart_User_V1_UserService.ClientProtocol
  /// The service's database, for set-up and for looking behind the API.
  let database: PostgresClient

  /// Registers and signs in (Register itself answers with no account and no tokens).
  func register(email: String, password: String = defaultPassword, fullName: String = "Test User") async throws
    -> Mart_User_V1_LoginResponse
  {
    _ = try await client.register(
      .with {
        $0.email = email
        $0.password = password
        $0.fullName = fullName
      })
    return try await client.login(
      .with {
        $0.email = email
        $0.password = password
      })
  }

  /// The verification tokens the outbox holds for this email, oldest first.
  func verificationTokens(_ email: String) async throws -> [String] {
    let rows = try await database.query(
      "SELECT payload FROM outbox WHERE event_type = 'mart.user.v1.EmailVerificationRequested' ORDER BY id",
      logger: TestBed.logger)
    var tokens: [String] = []
    for try await payload in rows.decode(ByteBuffer.self) {
      let event = try Mart_User_V1_EmailVerificationRequested(serializedBytes: Array(buffer: payload))
      if event.email == email { tokens.append(event.token) }
    }
    return tokens
  }

  func strings(_ sql: String) async throws -> [String] {
    let rows = try await database.query(PostgresQuery(unsafeSQL: sql), logger: TestBed.logger)
    var values: [String] = []
    for try await value in rows.decode(String.self) { values.append(value) }
    return values
  }

  func count(_ sql: String) async throws -> Int64 {
    let rows = try await database.query(PostgresQuery(unsafeSQL: sql), logger: TestBed.logger)
    var count: Int64 = 0
    for try await value in rows.decode(Int64.self) { count = value }
    return count
  }
}

/// Cheap hashes (the production cost is for production) and no key caching (tests rotate keys).
let testOptions = UserServiceOptions(passwordCost: .testing, signingKeyCacheTTL: .zero, keyEncryption: testKEK)

/// The key-encryption key of the tests' user services.
let testKEK = KeyEncryptionKeys.random()

/// No verified-token cache either: a test that expires a key expects its tokens to stop at once.
let testAuth: AuthConfiguration = {
  var auth = AuthConfiguration.ephemeral()
  auth.verifiedTokenTTL = .zero
  return auth
}()

/// Runs the user service on a scratch database, in-process unless `overHTTP2` (for what only a
/// connection shows: the caller's address).
func withUserService(
  _ label: String, options: UserServiceOptions = testOptions, overHTTP2: Bool = false,
  _ body: @escaping @Sendable (UserServiceUnderTest) async throws -> Void
) async throws {
  try await ScratchDatabase.with(label) { database in
    let configuration = ServiceConfiguration(
      service: .user, port: 0, database: database.configuration, databaseCheckInterval: .milliseconds(200))
    let definition = UserServiceModule.makeDefinition(options: options)
    let run = { (client: any Mart_User_V1_UserService.ClientProtocol) in
      try await withPostgresClient(database.configuration) { postgres in
        try await body(UserServiceUnderTest(client: client, database: postgres))
      }
    }
    if overHTTP2 {
      try await withHTTP2Host(definition, configuration: configuration, auth: testAuth) { _, grpc in
        try await run(Mart_User_V1_UserService.Client(wrapping: grpc))
      }
    } else {
      try await withHost(definition, configuration: configuration, auth: testAuth) { _, grpc in
        try await run(Mart_User_V1_UserService.Client(wrapping: grpc))
      }
    }
  }
}

func bearer(_ token: String) -> Metadata {
  ["authorization": "Bearer \(token)"]
}

func decodeClaims(_ token: String) throws -> AccessTokenClaims {
  let parts = token.split(separator: ".")
  let payload = try #require(parts.count == 3 ? Base64URL.decode(parts[1]) : nil)
  return try JSONDecoder().decode(AccessTokenClaims.self, from: payload)
}

func decodeKid(_ token: String) throws -> String {
  struct Header: Decodable { var kid: String }
  let parts = token.split(separator: ".")
  let header = try #require(parts.count == 3 ? Base64URL.decode(parts[0]) : nil)
  return try JSONDecoder().decode(Header.self, from: header).kid
}
