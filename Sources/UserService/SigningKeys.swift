import Crypto
import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// How long signing keys live.
///
/// A key signs new access tokens for `rotation` (then it is retired), and stays published, so
/// that the tokens it signed still verify, for the access-token lifetime plus `publicationMargin`
/// (clock skew, caches) after that.
struct SigningKeyPolicy: Sendable {
  var rotation: Duration
  var accessTokenLifetime: Duration
  var publicationMargin: Duration = .seconds(5 * 60)
  /// How long this instance keeps using the current key without looking for a newer one made by
  /// another instance.
  var cacheTTL: Duration = .seconds(60)
  /// How long a published key is trusted from the cache before it is looked up again (so that a
  /// key deleted by hand stops verifying soon).
  var verificationCacheTTL: Duration = .seconds(60)
}

/// The keys in `signing_keys` that sign access tokens: ensures there is a current one (creating
/// it, under an advisory lock so that concurrent instances make only one, when there is none or
/// the newest one has retired), and caches it. Private keys are stored sealed with the current
/// key-encryption key (`KeyEncryptionKeys`); before it first signs, the ring re-seals every key
/// stored in the clear or under another KEK, so that rotating the KEK is a restart.
actor SigningKeyRing {
  let database: PostgresClient
  let policy: SigningKeyPolicy
  let encryption: KeyEncryptionKeys
  let logger: Logger
  private var current: (key: TokenSigningKey, retireAfter: Date, loadedAt: ContinuousClock.Instant)?
  private var resealed = false

  init(database: PostgresClient, policy: SigningKeyPolicy, encryption: KeyEncryptionKeys, logger: Logger) {
    self.database = database
    self.policy = policy
    self.encryption = encryption
    self.logger = logger
  }

  /// The key new tokens are signed with: the newest one not yet retired.
  func signingKey() async throws -> TokenSigningKey {
    let clock = ContinuousClock()
    if let current, current.retireAfter > Date(), clock.now - current.loadedAt < policy.cacheTTL {
      return current.key
    }
    if !resealed {
      try await resealUnderCurrentKEK()
      resealed = true
    }
    let (key, retireAfter) = try await loadOrCreate()
    current = (key, retireAfter, clock.now)
    return key
  }

  /// Seals every stored key that is in the clear or under another KEK with the current one, in
  /// one transaction under the ring's advisory lock. A key whose KEK is not configured is left as
  /// it is (and logged): it cannot sign here, and another instance may still hold its KEK.
  private func resealUnderCurrentKEK() async throws {
    let encryption = self.encryption
    let logger = self.logger
    try await database.transaction(logger: logger) { connection in
      try await connection.query("SELECT pg_advisory_xact_lock(hashtext('mart.user.signing_keys'))", logger: logger)
      let rows = try await connection.query(
        "SELECT kid, private_key, kek_id FROM signing_keys WHERE kek_id IS DISTINCT FROM \(encryption.currentID)",
        logger: logger)
      var stale: [(String, Data, String?)] = []
      for try await row in rows.decode((String, Data, String?).self) { stale.append(row) }
      for (kid, stored, kekID) in stale {
        let plaintext: Data
        if let kekID {
          guard let opened = try? encryption.open(stored, kekID: kekID, kid: kid) else {
            logger.error(
              "a signing key is sealed under a key-encryption key not configured here",
              metadata: ["kid": "\(kid)", "kek_id": "\(kekID)"])
            continue
          }
          plaintext = opened
        } else {
          plaintext = stored
        }
        let (newKEK, sealed) = try encryption.seal(plaintext, kid: kid)
        try await connection.query(
          "UPDATE signing_keys SET private_key = \(sealed), kek_id = \(newKEK) WHERE kid = \(kid)", logger: logger)
        logger.notice(
          "sealed a signing key under the current key-encryption key",
          metadata: ["kid": "\(kid)", "kek_id": "\(newKEK)", "was": "\(kekID ?? "clear")"])
      }
    }
  }

  /// Every key still published (the current one and those retired but needed for tokens they
  /// signed), newest first, as public JWKs.
  func publishedKeys() async throws -> [JSONWebKeyValue] {
    _ = try await signingKey()
    let rows = try await database.query(
      "SELECT public_jwk::text FROM signing_keys WHERE expires_at > now() ORDER BY created_at DESC, kid",
      logger: logger)
    var keys: [JSONWebKeyValue] = []
    for try await text in rows.decode(String.self) {
      if let jwk = try? JSONDecoder().decode(JSONWebKeyValue.self, from: Data(text.utf8)) { keys.append(jwk) }
    }
    return keys
  }

  /// How long a new key is published before it signs: other services fetch the key set again
  /// on an unknown kid at most every 5 s, so a key published this long ago is one they can get.
  static let prepublication: Duration = .seconds(10)

  /// The key to sign with: the newest active key that has been published for `prepublication`,
  /// else the newest active one. A successor is made ahead of time, once the newest key retires
  /// within a cache lifetime plus `prepublication`, so that a rotation never signs with a key that
  /// other services cannot have seen yet (except the very first key, which has no predecessor).
  private func loadOrCreate() async throws -> (TokenSigningKey, Date) {
    let lead = Self.seconds(min(policy.cacheTTL + Self.prepublication, policy.rotation / 2))
    let encryption = self.encryption
    if let found = try await Self.newestActive(on: database, lead: lead, encryption: encryption, logger: logger),
      !found.needsSuccessor
    {
      return (found.key, found.retireAfter)
    }
    let policy = self.policy
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      // One creator at a time across instances; the loser of the race finds the winner's key.
      try await connection.query("SELECT pg_advisory_xact_lock(hashtext('mart.user.signing_keys'))", logger: logger)
      if let found = try await Self.newestActive(
        on: connection, lead: lead, encryption: encryption, logger: logger), !found.needsSuccessor
      {
        return (found.key, found.retireAfter)
      }
      // Keys expired a while ago verify nothing any more.
      try await connection.query(
        "DELETE FROM signing_keys WHERE expires_at < now() - interval '1 day'", logger: logger)
      let key = TokenSigningKey(kid: Self.newKeyID(), privateKey: P256.Signing.PrivateKey())
      let encoder = JSONEncoder()
      encoder.outputFormatting = .sortedKeys
      let jwk = String(decoding: try encoder.encode(key.publicJWK), as: UTF8.self)
      let (kekID, sealed) = try encryption.seal(key.privateKey.rawRepresentation, kid: key.kid)
      let rotation = Self.seconds(policy.rotation)
      let published = Self.seconds(policy.accessTokenLifetime + policy.publicationMargin)
      let rows = try await connection.query(
        """
        INSERT INTO signing_keys (kid, algorithm, private_key, kek_id, public_jwk, retire_after, expires_at)
        VALUES (\(key.kid), 'ES256', \(sealed), \(kekID), \(jwk)::jsonb, now() + make_interval(secs => \(rotation)),
                now() + make_interval(secs => \(rotation + published)))
        RETURNING retire_after
        """, logger: logger)
      var retireAfter = Date()
      for try await value in rows.decode(Date.self) { retireAfter = value }
      logger.info("created a new token signing key", metadata: ["kid": "\(key.kid)"])
      // The predecessor signs until the new key has been published long enough, if it can.
      if let found = try await Self.newestActive(on: connection, lead: lead, encryption: encryption, logger: logger) {
        return (found.key, found.retireAfter)
      }
      return (key, retireAfter)
    }
  }

  static func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
  }

  struct ActiveKey {
    var key: TokenSigningKey
    var retireAfter: Date
    /// No active key outlives the lead time: make the next one now.
    var needsSuccessor: Bool
  }

  private static func newestActive(
    on connection: PostgresConnection, lead: Double, encryption: KeyEncryptionKeys, logger: Logger
  ) async throws -> ActiveKey? {
    try await decodeNewest(
      connection.query(newestActiveQuery(lead: lead), logger: logger), encryption: encryption, logger: logger)
  }

  private static func newestActive(
    on client: PostgresClient, lead: Double, encryption: KeyEncryptionKeys, logger: Logger
  ) async throws -> ActiveKey? {
    try await decodeNewest(
      client.query(newestActiveQuery(lead: lead), logger: logger), encryption: encryption, logger: logger)
  }

  private static func newestActiveQuery(lead: Double) -> PostgresQuery {
    """
    SELECT kid, private_key, kek_id, retire_after,
           NOT bool_or(retire_after > now() + make_interval(secs => \(lead))) OVER () AS needs_successor
    FROM signing_keys
    WHERE algorithm = 'ES256' AND retire_after > now() AND expires_at > now()
    ORDER BY (created_at <= now() - make_interval(secs => \(seconds(prepublication)))) DESC, created_at DESC, kid
    """
  }

  private static func decodeNewest(_ rows: PostgresRowSequence, encryption: KeyEncryptionKeys, logger: Logger)
    async throws -> ActiveKey?
  {
    // The first, in order of preference, that opens here: a key sealed under a KEK this instance
    // does not hold (mid-rotation) is passed over, not taken as a reason to make a new key.
    var result: ActiveKey?
    for try await (kid, stored, kekID, retireAfter, needsSuccessor) in rows.decode(
      (String, Data, String?, Date, Bool).self) where result == nil
    {
      // Only a sealed key signs: one in the clear is sealed first (`resealUnderCurrentKEK`).
      guard let kekID, let opened = try? encryption.open(stored, kekID: kekID, kid: kid),
        let key = parsePrivateKey(opened)
      else {
        logger.error("unreadable private key in signing_keys", metadata: ["kid": "\(kid)"])
        continue
      }
      result = ActiveKey(
        key: TokenSigningKey(kid: kid, privateKey: key), retireAfter: retireAfter, needsSuccessor: needsSuccessor)
    }
    return result
  }

  /// The 32-byte raw scalar (as this service seals it), or PEM or DER (keys stored before).
  static func parsePrivateKey(_ bytes: Data) -> P256.Signing.PrivateKey? {
    if let pem = String(data: bytes, encoding: .utf8), pem.hasPrefix("-----BEGIN") {
      return try? P256.Signing.PrivateKey(pemRepresentation: pem)
    }
    if bytes.count == 32 { return try? P256.Signing.PrivateKey(rawRepresentation: bytes) }
    return try? P256.Signing.PrivateKey(derRepresentation: bytes)
  }

  /// 16 URL-safe characters (96 random bits).
  static func newKeyID() -> String {
    var generator = SystemRandomNumberGenerator()
    return Base64URL.encode((0..<12).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
  }
}

/// The user service verifies its own tokens from its own key table, not through its JWKS RPC:
/// keys are looked up by kid and cached (a key never changes; its expiry is remembered, and it is
/// looked up again after `verificationCacheTTL`). A kid that is not in the table is remembered as
/// unknown for a few seconds, so that made-up key ids cost at most one lookup each that often.
actor DatabaseKeyProvider: VerificationKeyProvider {
  private struct Entry {
    var key: P256.Signing.PublicKey?
    var expiresAt: Date
    var checkedAt: ContinuousClock.Instant
  }

  let database: PostgresClient
  let logger: Logger
  let cacheTTL: Duration
  let unknownTTL: Duration
  private var entries: [String: Entry] = [:]

  init(database: PostgresClient, logger: Logger, cacheTTL: Duration = .seconds(60), unknownTTL: Duration = .seconds(5))
  {
    self.database = database
    self.logger = logger
    self.cacheTTL = cacheTTL
    self.unknownTTL = unknownTTL
  }

  func key(for kid: String) async throws(TokenError) -> P256.Signing.PublicKey? {
    let clock = ContinuousClock()
    if let entry = entries[kid] {
      let age = clock.now - entry.checkedAt
      if let key = entry.key, age < cacheTTL {
        return entry.expiresAt > Date() ? key : nil
      }
      if entry.key == nil, age < unknownTTL { return nil }
    }
    var found: (P256.Signing.PublicKey, Date)?
    do {
      let rows = try await database.query(
        "SELECT public_jwk::text, expires_at FROM signing_keys WHERE kid = \(kid) AND expires_at > now()",
        logger: logger)
      for try await (text, expiresAt) in rows.decode((String, Date).self) {
        if let jwk = try? JSONDecoder().decode(JSONWebKeyValue.self, from: Data(text.utf8)), let key = jwk.publicKey {
          found = (key, expiresAt)
        }
      }
    } catch {
      // A key already known still verifies what it signed while the database is away.
      if let entry = entries[kid], let key = entry.key, entry.expiresAt > Date() { return key }
      throw .keysUnavailable("cannot read signing_keys: \(String(describing: error))")
    }
    if entries.count > 1000 { entries = entries.filter { $0.value.key != nil } }
    entries[kid] = Entry(key: found?.0, expiresAt: found?.1 ?? .distantPast, checkedAt: clock.now)
    return found?.0
  }
}
