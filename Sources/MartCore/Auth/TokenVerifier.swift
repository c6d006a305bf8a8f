import Crypto
import Foundation
import Synchronization

/// Why a token was not accepted. Everything but `keysUnavailable` is the caller's fault
/// (401 / UNAUTHENTICATED); `keysUnavailable` is ours (503 / UNAVAILABLE): a token must not be
/// called invalid because the keys to check it could not be fetched.
public enum TokenError: Error, Sendable, Equatable, CustomStringConvertible {
  case missing
  case malformed(String)
  case unsupportedAlgorithm(String)
  case unknownKey(String)
  case badSignature
  case expired
  case notYetValid
  case wrongIssuer
  case wrongAudience
  case invalidClaims(String)
  case keysUnavailable(String)

  public var description: String {
    switch self {
    case .missing: "no bearer token"
    case .malformed(let why): "malformed token: \(why)"
    case .unsupportedAlgorithm(let alg): "token algorithm \(alg.debugDescription) is not accepted"
    case .unknownKey(let kid): "token signed with unknown key \(kid.debugDescription)"
    case .badSignature: "token signature does not verify"
    case .expired: "token has expired"
    case .notYetValid: "token is not valid yet"
    case .wrongIssuer: "token issuer is not accepted"
    case .wrongAudience: "token audience is not accepted"
    case .invalidClaims(let why): "token claims are invalid: \(why)"
    case .keysUnavailable(let why): "token signing keys are unavailable: \(why)"
    }
  }
}

/// Where the public keys that verify user tokens come from: the user service's JWKS (fetched and
/// cached), or, inside the user service, its own key table.
public protocol VerificationKeyProvider: Sendable {
  /// The key with this id; nil if there is none. Throws `.keysUnavailable` if that cannot be known.
  func key(for kid: String) async throws(TokenError) -> P256.Signing.PublicKey?
}

/// Who made a call, from a verified token.
public struct Caller: Sendable, Equatable {
  public enum Kind: Sendable, Equatable {
    /// A signed-in person: `subject` is their user id.
    case user
    /// Another Mart service: `subject` is `service:<name>`.
    case service
  }

  public var kind: Kind
  public var subject: String
  public var roles: Set<String>
  /// The bearer token itself, so that calls made on the caller's behalf can pass it on.
  public var token: String
  public var claims: AccessTokenClaims

  public var isAdmin: Bool { kind == .user && roles.contains(MartRole.admin) }
  public var isService: Bool { kind == .service }
  /// Which service is calling; nil for a user.
  public var service: MartService? {
    guard kind == .service, subject.hasPrefix("service:") else { return nil }
    return MartService(rawValue: String(subject.dropFirst("service:".count)))
  }

  /// The caller of the current RPC, bound by `ServerAuthInterceptor`; nil on public RPCs called
  /// without a token, and outside RPCs (event consumers).
  @TaskLocal public static var current: Caller?
}

/// The address of the client the gateway is serving, as the gateway vouches for it: bound by
/// `ServerAuthInterceptor` from `x-mart-client-ip` only when the call also carries a token signed
/// with the gateway's key for this service (`x-mart-gateway`). Nil for any other call, whatever
/// headers it sent: a direct caller's claim about its address is worth nothing, and its own
/// address is the connection's peer.
public enum ForwardedClient {
  @TaskLocal public static var address: IPAddress?

  /// The client of the current call: the address the gateway vouches for, else the connection's
  /// peer (`ServerContext.remotePeer`). What a service counts or checks a client by.
  public static func clientAddress(peer: String) -> IPAddress? {
    address ?? IPAddress(grpcPeer: peer)
  }

  /// The metadata keys: the gateway's token, and the address it vouches for.
  public static let tokenKey = "x-mart-gateway"
  public static let addressKey = "x-mart-client-ip"
}

/// Role names as they appear in tokens and in the users table.
public enum MartRole {
  public static let customer = "customer"
  public static let admin = "admin"
  public static let service = "service"
  /// Roles a user token may carry. `service` is only ever accepted from a service's key.
  public static let userRoles: Set<String> = [customer, admin]
}

/// Verifies Mart access tokens: ES256 only; user tokens against the user service's keys; service
/// tokens against the key of the service they name, and only when addressed to this service;
/// expiry and not-before with bounded clock skew; issuer and audience.
public struct TokenVerifier: Sendable {
  public let configuration: AuthConfiguration
  public let userKeys: any VerificationKeyProvider
  /// The service this verifier checks calls to; nil at the gateway, which accepts no service token.
  public let service: MartService?
  /// Clock skew tolerated on `exp`, `nbf` and `iat`.
  public let leeway: Int64
  private let now: @Sendable () -> Date
  private let verified: VerifiedTokens<Caller>
  private let vouched: VerifiedTokens<Bool>

  public init(
    configuration: AuthConfiguration, userKeys: any VerificationKeyProvider, service: MartService?,
    leeway: Duration = .seconds(60), cacheCapacity: Int = 10_000, now: @escaping @Sendable () -> Date = Date.init
  ) {
    self.configuration = configuration
    self.userKeys = userKeys
    self.service = service
    self.leeway = leeway.components.seconds
    self.now = now
    let capacity = configuration.verifiedTokenTTL > .zero ? cacheCapacity : 0
    let ttl = configuration.verifiedTokenTTL.components.seconds
    self.verified = VerifiedTokens(capacity: capacity, timeToLive: ttl)
    self.vouched = VerifiedTokens(capacity: min(capacity, 16), timeToLive: ttl)
  }

  /// The caller a token proves, or why it proves nothing.
  public func verify(_ token: String) async throws(TokenError) -> Caller {
    let now = Int64(self.now().timeIntervalSince1970)
    if let caller = verified.value(for: token, at: now) { return caller }
    let (signer, claims) = try await verifySignature(token, now: now)
    let roles = Set(claims.roles)
    let kind: Caller.Kind
    switch signer {
    case .user:
      // A user key can never mint a service identity, whatever the token says.
      guard roles.isSubset(of: MartRole.userRoles), roles.contains(MartRole.customer),
        UUID(uuidString: claims.sub) != nil
      else { throw .invalidClaims("roles or subject not valid for a user token") }
      kind = .user
    case .principal(.service(let signedBy)):
      // The key names the service: a service signs only as itself.
      guard roles == [MartRole.service], claims.sub == "service:\(signedBy.rawValue)" else {
        throw .invalidClaims("roles or subject not valid for a token signed with the \(signedBy.rawValue) key")
      }
      kind = .service
    case .principal(.gateway):
      throw .invalidClaims("a gateway token vouches for a client address; it is not a caller's token")
    }
    let caller = Caller(kind: kind, subject: claims.sub, roles: roles, token: token, claims: claims)
    verified.remember(caller, token: token, expiresAt: claims.exp + leeway, at: now)
    return caller
  }

  /// Whether `token` is the gateway's, for this service: then the client address beside it is the
  /// gateway's word.
  public func verifyGateway(_ token: String) async throws(TokenError) {
    let now = Int64(self.now().timeIntervalSince1970)
    if vouched.value(for: token, at: now) != nil { return }
    let (signer, claims) = try await verifySignature(token, now: now)
    guard case .principal(.gateway) = signer, claims.sub == "gateway", claims.roles.isEmpty else {
      throw .invalidClaims("not a token signed with the gateway's key")
    }
    vouched.remember(true, token: token, expiresAt: claims.exp + leeway, at: now)
  }

  private enum Signer {
    case user
    case principal(Principal)
  }

  /// Checks everything but what the claims grant: algorithm, header, key, signature, times, issuer
  /// and audience.
  private func verifySignature(_ token: String, now: Int64) async throws(TokenError) -> (Signer, AccessTokenClaims) {
    let jws = try CompactJWS(token)
    // The allow-list comes before any key lookup, so `none` and HS256 never reach a key.
    guard jws.header.alg == martTokenAlgorithm else { throw .unsupportedAlgorithm(jws.header.alg) }
    // Another kind of JWT (an ID token, a logout token) is not an access token, whoever signed it.
    guard jws.header.hasAccessTokenType else {
      throw .malformed("the token type (typ) is missing or not JWT or at+jwt")
    }
    guard jws.header.crit == nil else { throw .malformed("the token names critical extensions (crit)") }
    guard let kid = jws.header.kid, !kid.isEmpty, kid.utf8.count <= 128 else {
      throw .malformed("no key id (kid) in the header")
    }
    guard jws.signature.count == 64 else { throw .badSignature }

    let signer: Signer
    let key: P256.Signing.PublicKey
    let expectedIssuer: String
    let expectedAudience: String
    if let peer = configuration.keys.verifying[kid] {
      // A token between Mart's processes is addressed to one service; the gateway checks none.
      guard let service else { throw .unknownKey(kid) }
      signer = .principal(peer.principal)
      key = peer.key
      expectedIssuer = peer.principal == .gateway ? configuration.gatewayIssuer : configuration.serviceIssuer
      expectedAudience = configuration.audience(of: service)
    } else {
      guard let userKey = try await userKeys.key(for: kid) else { throw .unknownKey(kid) }
      signer = .user
      key = userKey
      expectedIssuer = configuration.issuer
      expectedAudience = configuration.audience
    }
    guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: jws.signature),
      key.isValidSignature(signature, for: jws.signingInput)
    else { throw .badSignature }

    let claims: AccessTokenClaims
    do {
      claims = try JSONDecoder().decode(AccessTokenClaims.self, from: jws.payload)
    } catch {
      throw .invalidClaims("the payload is not a Mart claims set")
    }
    guard claims.exp + leeway > now else { throw .expired }
    if let nbf = claims.nbf, nbf - leeway > now { throw .notYetValid }
    guard claims.iat - leeway <= now else { throw .notYetValid }
    guard claims.iss == expectedIssuer else { throw .wrongIssuer }
    guard claims.aud.contains(expectedAudience) else { throw .wrongAudience }
    guard !claims.sub.isEmpty else { throw .invalidClaims("no subject") }
    return (signer, claims)
  }
}

/// Tokens already verified. A client uses its access token for its whole lifetime, so without this
/// every call would pay for a signature check and two JSON decodings of the same bytes; with it, a
/// token costs that about once a minute per process. An entry is only ever a token that passed
/// every check; it is trusted until its `exp` (plus leeway) or for `timeToLive`, whichever comes
/// first, so that a signing key pulled by hand stops working within that time here too. Bounded:
/// when full, stale entries go, then everything.
final class VerifiedTokens<Value: Sendable>: Sendable {
  private struct Entry {
    var value: Value
    var trustedUntil: Int64
  }

  private let entries = Mutex<[String: Entry]>([:])
  private let capacity: Int
  private let timeToLive: Int64

  init(capacity: Int, timeToLive: Int64) {
    self.capacity = capacity
    self.timeToLive = timeToLive
  }

  func value(for token: String, at now: Int64) -> Value? {
    guard capacity > 0 else { return nil }
    return entries.withLock { entries in
      guard let entry = entries[token] else { return nil }
      guard entry.trustedUntil > now else {
        entries[token] = nil
        return nil
      }
      return entry.value
    }
  }

  /// Remembers what `token` proved until it expires (`expiresAt`, leeway included) or for the time
  /// to live, whichever comes first.
  func remember(_ value: Value, token: String, expiresAt: Int64, at now: Int64) {
    guard capacity > 0 else { return }
    let entry = Entry(value: value, trustedUntil: min(expiresAt, now + timeToLive))
    entries.withLock { entries in
      if entries.count >= capacity {
        entries = entries.filter { $0.value.trustedUntil > now }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
      }
      entries[token] = entry
    }
  }
}

/// A fixed set of keys (tests, and services that were handed their keys).
public struct StaticKeyProvider: VerificationKeyProvider {
  public let keys: [String: P256.Signing.PublicKey]

  public init(_ keys: [String: P256.Signing.PublicKey]) {
    self.keys = keys
  }

  public func key(for kid: String) async throws(TokenError) -> P256.Signing.PublicKey? {
    keys[kid]
  }
}

/// The user service's public keys, fetched as a JWK set and cached. The set is fetched again when
/// it is older than `maxAge`, and when a token names a key that is not in it (a rotation), but at
/// most once per `minRefetchInterval`, so that tokens with made-up key ids cannot make every
/// request a fetch. Concurrent callers share one fetch. While the user service cannot be reached,
/// the set it last gave keeps verifying for `staleGrace` past `maxAge`, and no longer: a key the
/// user service has since withdrawn must not verify for ever, so after that the answer is
/// `keysUnavailable` (UNAVAILABLE, 503), not a guess.
public actor JWKSKeyProvider: VerificationKeyProvider {
  public typealias Fetch = @Sendable () async throws -> [JSONWebKeyValue]

  private let fetch: Fetch
  private let maxAge: Duration
  private let staleGrace: Duration
  private let minRefetchInterval: Duration
  private let now: @Sendable () -> ContinuousClock.Instant
  private var keys: [String: P256.Signing.PublicKey] = [:]
  private var fetchedAt: ContinuousClock.Instant?
  private var attemptedAt: ContinuousClock.Instant?
  private var inFlight: Task<[String: P256.Signing.PublicKey], any Error>?

  public init(
    maxAge: Duration = .seconds(300), staleGrace: Duration = .seconds(600), minRefetchInterval: Duration = .seconds(5),
    now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }, fetch: @escaping Fetch
  ) {
    self.fetch = fetch
    self.maxAge = maxAge
    self.staleGrace = staleGrace
    self.minRefetchInterval = minRefetchInterval
    self.now = now
  }

  public func key(for kid: String) async throws(TokenError) -> P256.Signing.PublicKey? {
    let age = fetchedAt.map { now() - $0 }
    let stale = age.map { $0 > maxAge } ?? true
    if let key = keys[kid], !stale { return key }
    // Joining a fetch already under way costs nothing: callers that arrive while the first fetch
    // runs wait for it rather than being told the keys are unavailable.
    let mayRefetch = inFlight != nil || (attemptedAt.map { now() - $0 >= minRefetchInterval } ?? true)
    guard mayRefetch else {
      // Too soon to ask again: answer from what we have, if it is not too old.
      try usable()
      return keys[kid]
    }
    do {
      try await refresh()
    } catch {
      // A key we already hold still verifies the tokens it signed, for a while; only an unknown
      // kid is undecidable, and that is unavailability, not a bad token.
      if let key = keys[kid], (try? usable()) != nil { return key }
      throw error
    }
    return keys[kid]
  }

  /// Throws unless the set held was fetched, and not more than `maxAge + staleGrace` ago.
  private func usable() throws(TokenError) {
    guard let fetchedAt else { throw .keysUnavailable("the last fetch of the key set failed") }
    guard now() - fetchedAt <= maxAge + staleGrace else {
      throw .keysUnavailable("the key set could not be fetched again and is too old to trust")
    }
  }

  private func refresh() async throws(TokenError) {
    let task: Task<[String: P256.Signing.PublicKey], any Error>
    if let inFlight {
      task = inFlight
    } else {
      attemptedAt = now()
      let fetch = self.fetch
      task = Task {
        var keys: [String: P256.Signing.PublicKey] = [:]
        for jwk in try await fetch() {
          if let key = jwk.publicKey { keys[jwk.kid] = key }
        }
        return keys
      }
      inFlight = task
    }
    do {
      let fetched = try await task.value
      if inFlight == task {
        inFlight = nil
        keys = fetched
        fetchedAt = now()
      }
    } catch {
      if inFlight == task { inFlight = nil }
      throw .keysUnavailable(String(describing: error))
    }
  }
}
