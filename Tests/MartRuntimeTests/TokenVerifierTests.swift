import Crypto
import Foundation
import MartRuntime
import Synchronization
import Testing

/// The verifier against forged and broken tokens. Each forgery is built the way an attacker would
/// build it, so a verifier that trusted the header, skipped a claim or compared loosely fails here.
@Suite struct TokenVerifierTests {
  let userKey = TokenSigningKey(kid: "user-key-1", privateKey: P256.Signing.PrivateKey())
  let auth = AuthConfiguration.ephemeral()
  let userID = UUID().uuidString.lowercased()

  var verifier: TokenVerifier {
    verifier(of: .inventory)
  }

  /// The verifier of `service`'s calls; nil: the gateway's.
  func verifier(of service: MartService?) -> TokenVerifier {
    TokenVerifier(
      configuration: auth, userKeys: StaticKeyProvider([userKey.kid: userKey.privateKey.publicKey]), service: service)
  }

  func claims(
    iss: String? = nil, aud: String? = nil, roles: [String] = ["customer"], iatOffset: Int64 = 0,
    expOffset: Int64 = 900, nbfOffset: Int64? = nil
  ) -> AccessTokenClaims {
    let now = Int64(Date().timeIntervalSince1970)
    return AccessTokenClaims(
      sub: userID, roles: roles, iss: iss ?? auth.issuer, aud: aud ?? auth.audience, iat: now + iatOffset,
      exp: now + expOffset, nbf: nbfOffset.map { now + $0 })
  }

  /// A token with any header and payload and an HMAC-SHA256 signature under `secret`.
  func hmacToken(header: String, payload: AccessTokenClaims, secret: Data) throws -> String {
    let body = Base64URL.encode(Data(header.utf8)) + "." + Base64URL.encode(try JSONEncoder().encode(payload))
    let mac = HMAC<SHA256>.authenticationCode(for: Data(body.utf8), using: SymmetricKey(data: secret))
    return body + "." + Base64URL.encode(Data(mac))
  }

  @Test func aGenuineUserTokenVerifies() async throws {
    let caller = try await verifier.verify(try userKey.sign(claims(roles: ["customer", "admin"])))
    #expect(caller.kind == .user)
    #expect(caller.subject == userID)
    #expect(caller.isAdmin)
  }

  @Test func aServiceTokenFromItsOwnKeyForThisServiceVerifies() async throws {
    let issuer = try #require(ServiceTokenIssuer(.service(.order), configuration: auth))
    let caller = try await verifier.verify(try await issuer.token(for: .inventory))
    #expect(caller.kind == .service)
    #expect(caller.subject == "service:order")
    #expect(caller.service == .order)
    #expect(caller.isService && !caller.isAdmin)
  }

  /// A token names the one service it is for: the order service's token for the product service
  /// cannot be replayed against inventory, and the gateway accepts no service token at all.
  @Test func aServiceTokenForAnotherServiceIsRefused() async throws {
    let issuer = try #require(ServiceTokenIssuer(.service(.order), configuration: auth))
    let forProduct = try await issuer.token(for: .product)
    await #expect(throws: TokenError.wrongAudience) { try await verifier.verify(forProduct) }
    _ = try await verifier(of: .product).verify(forProduct)
    await #expect(throws: TokenError.self) { try await verifier(of: nil).verify(forProduct) }
  }

  /// Each key signs only as its own principal: the order service's key cannot say it is the
  /// payment service, the gateway's cannot make any service token, and a key from another key set
  /// is nobody's.
  @Test func aKeySignsOnlyAsItsOwner() async throws {
    let now = Int64(Date().timeIntervalSince1970)
    func serviceClaims(_ subject: String) -> AccessTokenClaims {
      AccessTokenClaims(
        sub: subject, roles: [MartRole.service], iss: auth.serviceIssuer, aud: auth.audience(of: .inventory), iat: now,
        exp: now + 300)
    }
    let orderKey = try #require(auth.keys.signing[.service(.order)])
    let gatewayKey = try #require(auth.keys.signing[.gateway])
    await #expect(throws: TokenError.self) {
      try await verifier.verify(try orderKey.sign(serviceClaims("service:payment")))
    }
    await #expect(throws: TokenError.self) {
      try await verifier.verify(try gatewayKey.sign(serviceClaims("service:order")))
    }
    let gatewayToken = try #require(ServiceTokenIssuer(.gateway, configuration: auth))
    await #expect(throws: TokenError.self) { try await verifier.verify(try await gatewayToken.token(for: .inventory)) }
    let stranger = try #require(ServiceKeys.ephemeral().signing[.service(.order)])
    await #expect(throws: TokenError.unknownKey(stranger.kid)) {
      try await verifier.verify(try stranger.sign(serviceClaims("service:order")))
    }
  }

  @Test func onlyTheGatewaysTokenForThisServiceVouchesForAClientAddress() async throws {
    let gateway = try #require(ServiceTokenIssuer(.gateway, configuration: auth))
    try await verifier.verifyGateway(try await gateway.token(for: .inventory))
    await #expect(throws: TokenError.wrongAudience) {
      try await verifier.verifyGateway(try await gateway.token(for: .user))
    }
    let order = try #require(ServiceTokenIssuer(.service(.order), configuration: auth))
    await #expect(throws: TokenError.self) { try await verifier.verifyGateway(try await order.token(for: .inventory)) }
    await #expect(throws: TokenError.self) { try await verifier.verifyGateway(try userKey.sign(claims())) }
  }

  @Test func algNoneIsRefused() async throws {
    let payload = Base64URL.encode(try JSONEncoder().encode(claims()))
    for header in [#"{"alg":"none","kid":"user-key-1"}"#, #"{"alg":"None","kid":"user-key-1"}"#] {
      let token = Base64URL.encode(Data(header.utf8)) + "." + payload + "."
      await #expect(throws: TokenError.unsupportedAlgorithm(header.contains("none") ? "none" : "None")) {
        try await verifier.verify(token)
      }
    }
  }

  /// Signed with the real key, but declaring another type of token, or extensions the verifier
  /// must understand: refused. JWT and at+jwt pass.
  @Test func anotherTokenTypeOrACriticalExtensionIsRefused() async throws {
    func signed(header: String) throws -> String {
      let body = Base64URL.encode(Data(header.utf8)) + "." + Base64URL.encode(try JSONEncoder().encode(claims()))
      let signature = try userKey.privateKey.signature(for: Data(body.utf8)).rawRepresentation
      return body + "." + Base64URL.encode(signature)
    }
    for header in [
      #"{"alg":"ES256","kid":"user-key-1","typ":"logout+jwt"}"#,
      #"{"alg":"ES256","kid":"user-key-1","typ":"JWT","crit":["exp"]}"#,
      // No type at all: Mart's tokens always declare one.
      #"{"alg":"ES256","kid":"user-key-1"}"#,
    ] {
      await #expect(throws: TokenError.self, "\(header)") { try await verifier.verify(try signed(header: header)) }
    }
    for header in [
      #"{"alg":"ES256","kid":"user-key-1","typ":"at+jwt"}"#, #"{"alg":"ES256","kid":"user-key-1","typ":"JWT"}"#,
      #"{"alg":"ES256","kid":"user-key-1","typ":"application/at+jwt"}"#,
    ] {
      #expect(try await verifier.verify(try signed(header: header)).subject == userID, "\(header)")
    }
  }

  @Test func hs256SignedWithThePublicKeyIsRefused() async throws {
    // The classic confusion attack: the published public key used as an HMAC secret.
    let publicKey = userKey.privateKey.publicKey
    for secret in [publicKey.x963Representation, Data(publicKey.pemRepresentation.utf8)] {
      let token = try hmacToken(header: #"{"alg":"HS256","kid":"user-key-1"}"#, payload: claims(), secret: secret)
      await #expect(throws: TokenError.unsupportedAlgorithm("HS256")) { try await verifier.verify(token) }
    }
  }

  @Test func anUnknownKeyIsRefused() async throws {
    let stranger = TokenSigningKey(kid: "not-ours", privateKey: P256.Signing.PrivateKey())
    await #expect(throws: TokenError.unknownKey("not-ours")) { try await verifier.verify(try stranger.sign(claims())) }
  }

  @Test func aKnownKidWithAnotherKeysSignatureIsRefused() async throws {
    let impostor = TokenSigningKey(kid: userKey.kid, privateKey: P256.Signing.PrivateKey())
    await #expect(throws: TokenError.badSignature) { try await verifier.verify(try impostor.sign(claims())) }
  }

  @Test func expiredAndNotYetValidAreRefusedBeyondTheLeeway() async throws {
    await #expect(throws: TokenError.expired) {
      try await verifier.verify(try userKey.sign(claims(iatOffset: -1000, expOffset: -61)))
    }
    await #expect(throws: TokenError.notYetValid) {
      try await verifier.verify(try userKey.sign(claims(nbfOffset: 120)))
    }
    await #expect(throws: TokenError.notYetValid) {
      try await verifier.verify(try userKey.sign(claims(iatOffset: 120, expOffset: 900)))
    }
    // Within 60 s of skew both ways: accepted.
    _ = try await verifier.verify(try userKey.sign(claims(iatOffset: -1000, expOffset: -30)))
    _ = try await verifier.verify(try userKey.sign(claims(nbfOffset: 30)))
  }

  @Test func wrongIssuerAndAudienceAreRefused() async throws {
    await #expect(throws: TokenError.wrongIssuer) { try await verifier.verify(try userKey.sign(claims(iss: "evil"))) }
    await #expect(throws: TokenError.wrongAudience) {
      try await verifier.verify(try userKey.sign(claims(aud: "another-app")))
    }
    // A user token must not pass with the service issuer either.
    await #expect(throws: TokenError.wrongIssuer) {
      try await verifier.verify(try userKey.sign(claims(iss: auth.serviceIssuer)))
    }
  }

  @Test func aTamperedPayloadIsRefused() async throws {
    let token = try userKey.sign(claims())
    let parts = token.split(separator: ".").map(String.init)
    let promoted = Base64URL.encode(try JSONEncoder().encode(claims(roles: ["customer", "admin"])))
    await #expect(throws: TokenError.badSignature) {
      try await verifier.verify([parts[0], promoted, parts[2]].joined(separator: "."))
    }
  }

  @Test func aUserKeyCannotMintAServiceIdentity() async throws {
    await #expect(throws: TokenError.invalidClaims("roles or subject not valid for a user token")) {
      try await verifier.verify(try userKey.sign(claims(roles: ["service"])))
    }
  }

  @Test func garbageIsMalformed() async {
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", String(repeating: "x", count: 10_000)] {
      await #expect {
        try await verifier.verify(token)
      } throws: { error in
        if case .malformed = error as? TokenError { return true }
        return error as? TokenError == .badSignature
      }
    }
  }

  @Test func aVerifiedTokenIsCheckedOnceAndStillExpiresOnTime() async throws {
    let keys = CountingKeyProvider([userKey.kid: userKey.privateKey.publicKey])
    let clock = ManualDate(Date())
    let verifier = TokenVerifier(configuration: auth, userKeys: keys, service: .inventory, now: { clock.now })
    let token = try userKey.sign(claims(expOffset: 300))
    for _ in 0..<5 { _ = try await verifier.verify(token) }
    #expect(await keys.lookups == 1)
    // After a minute of trust it is checked again (a key pulled by hand stops working)...
    clock.advance(by: 61)
    _ = try await verifier.verify(token)
    #expect(await keys.lookups == 2)
    // ...and past exp plus the 60 s leeway, the cached verification is worth nothing.
    clock.advance(by: 300)
    await #expect(throws: TokenError.expired) { try await verifier.verify(token) }
  }

  /// While the user service is away, the set it gave last keeps verifying its keys for the
  /// grace, and then no longer: UNAVAILABLE rather than trusting a withdrawn key for ever.
  @Test func aStaleKeySetIsTrustedForABoundedTimeOnly() async throws {
    let published = Published([userKey.publicJWK])
    let clock = ManualInstant()
    let provider = JWKSKeyProvider(
      maxAge: .seconds(300), staleGrace: .seconds(600), minRefetchInterval: .seconds(5), now: { clock.now }
    ) { try await published.keys() }
    #expect(try await provider.key(for: userKey.kid) != nil)
    await published.fail()
    clock.advance(by: .seconds(400))
    #expect(try await provider.key(for: userKey.kid) != nil, "stale, within the grace")
    clock.advance(by: .seconds(600))
    await #expect(throws: TokenError.self) { try await provider.key(for: self.userKey.kid) }
    // Too soon to fetch again, and still too old.
    await #expect(throws: TokenError.self) { try await provider.key(for: self.userKey.kid) }
    await published.set([userKey.publicJWK])
    await published.succeed()
    clock.advance(by: .seconds(10))
    #expect(try await provider.key(for: userKey.kid) != nil, "fresh again once the user service is back")
  }

  @Test func callersArrivingDuringTheFirstFetchShareIt() async throws {
    // Found by the gateway benchmark: 32 requests at once on a cold cache, and all but the first
    // were told the keys were unavailable while the first fetch was still running.
    let published = Published([userKey.publicJWK], delay: .milliseconds(200))
    let provider = JWKSKeyProvider { try await published.keys() }
    let kid = userKey.kid
    let found = try await withThrowingTaskGroup(of: Bool.self) { group in
      for _ in 0..<32 {
        group.addTask { try await provider.key(for: kid) != nil }
      }
      return try await group.reduce(into: 0) { count, ok in count += ok ? 1 : 0 }
    }
    #expect(found == 32)
    #expect(await published.fetches == 1)
  }

  @Test func jwksProviderRefetchesOnAnUnknownKidAndReportsUnavailability() async throws {
    let rotated = TokenSigningKey(kid: "user-key-2", privateKey: P256.Signing.PrivateKey())
    let published = Published([userKey.publicJWK])
    let provider = JWKSKeyProvider(minRefetchInterval: .zero) { try await published.keys() }
    #expect(try await provider.key(for: userKey.kid) != nil)
    #expect(try await provider.key(for: rotated.kid) == nil)
    await published.set([userKey.publicJWK, rotated.publicJWK])
    #expect(try await provider.key(for: rotated.kid) != nil)
    await published.fail()
    // A key already held still verifies; a new kid cannot be decided: unavailable, not invalid.
    #expect(try await provider.key(for: userKey.kid) != nil)
    await #expect(throws: TokenError.self) { try await provider.key(for: "user-key-3") }
    let cold = JWKSKeyProvider { try await published.keys() }
    await #expect {
      try await cold.key(for: userKey.kid)
    } throws: { error in
      if case .keysUnavailable = error as? TokenError { return true }
      return false
    }
  }
}

/// Counts how often the verifier asks for a key.
actor CountingKeyProvider: VerificationKeyProvider {
  let keys: [String: P256.Signing.PublicKey]
  private(set) var lookups = 0

  init(_ keys: [String: P256.Signing.PublicKey]) { self.keys = keys }

  func key(for kid: String) async throws(TokenError) -> P256.Signing.PublicKey? {
    lookups += 1
    return keys[kid]
  }
}

/// A wall clock the test moves.
final class ManualDate: Sendable {
  private let current: Mutex<Date>
  init(_ start: Date) { current = Mutex(start) }
  var now: Date { current.withLock { $0 } }
  func advance(by seconds: TimeInterval) { current.withLock { $0 += seconds } }
}

/// A monotonic clock a test moves by hand.
final class ManualInstant: Sendable {
  private let current = Mutex(ContinuousClock.now)
  var now: ContinuousClock.Instant { current.withLock { $0 } }
  func advance(by duration: Duration) { current.withLock { $0 = $0.advanced(by: duration) } }
}

/// A JWK set that a test can change or make unreachable.
actor Published {
  private var set: [JSONWebKeyValue]
  private var failing = false
  private let delay: Duration
  private(set) var fetches = 0

  init(_ set: [JSONWebKeyValue], delay: Duration = .zero) {
    self.set = set
    self.delay = delay
  }
  func set(_ keys: [JSONWebKeyValue]) { set = keys }
  func fail() { failing = true }
  func succeed() { failing = false }
  func keys() async throws -> [JSONWebKeyValue] {
    fetches += 1
    if delay > .zero { try await Task.sleep(for: delay) }
    if failing { throw CancellationError() }
    return set
  }
}
