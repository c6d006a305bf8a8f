import Crypto
import Foundation

/// One of Mart's own processes, as a token signer: a service, or the gateway. Each has its own
/// P-256 key, so a compromised process can sign only as itself.
public enum Principal: Hashable, Sendable, CustomStringConvertible {
  case service(MartService)
  /// The edge gateway. Its key cannot make a service token: it only vouches for the address of
  /// the client it is serving (`x-mart-gateway`).
  case gateway

  public static let all: [Principal] = MartService.allCases.map(Principal.service) + [.gateway]

  /// `order`, `gateway`: its name in `MART_SERVICE_PUBLIC_KEYS` and in key ids.
  public var name: String {
    switch self {
    case .service(let service): service.rawValue
    case .gateway: "gateway"
    }
  }

  public var description: String { name }

  public init?(name: String) {
    if name == "gateway" {
      self = .gateway
    } else if let service = MartService(rawValue: name) {
      self = .service(service)
    } else {
      return nil
    }
  }

  /// The variable that holds its private key: `MART_ORDER_SERVICE_KEY`, `MART_GATEWAY_KEY`.
  public var keyVariable: String {
    switch self {
    case .service(let service): "\(service.environmentPrefix)_SERVICE_KEY"
    case .gateway: "MART_GATEWAY_KEY"
    }
  }
}

/// The keys of Mart's own processes: the private keys this process signs with (its own only, under
/// `mart serve`; every one under `mart dev` and in tests, where one process is all of them), and
/// every principal's public key, to check who signed a token between services.
public struct ServiceKeys: Sendable {
  /// A principal's public key, under the key id its tokens name.
  public struct PublicKey: Sendable {
    public var principal: Principal
    public var key: P256.Signing.PublicKey
  }

  public private(set) var signing: [Principal: TokenSigningKey]
  /// By key id.
  public private(set) var verifying: [String: PublicKey]

  public static let publicKeysVariable = "MART_SERVICE_PUBLIC_KEYS"

  /// No keys: a process that neither signs nor checks tokens between services.
  public static let none = ServiceKeys(signing: [:], publicKeys: [:])

  public init(signing: [Principal: P256.Signing.PrivateKey], publicKeys: [Principal: P256.Signing.PublicKey]) {
    self.init(signing: signing, publicKeys: publicKeys.map { (principal: $0.key, key: $0.value) })
  }

  /// Every principal's key for `mart dev`, one process that is all of them: the private keys the
  /// environment sets (so that a benchmark can sign as one service of a `mart dev`), and fresh ones
  /// for the others.
  public static func development(environment env: EnvironmentReader) throws -> ServiceKeys {
    var privateKeys: [Principal: P256.Signing.PrivateKey] = [:]
    for principal in Principal.all {
      privateKeys[principal] = try privateKey(principal, env, required: false) ?? P256.Signing.PrivateKey()
    }
    return ServiceKeys(holdingAll: privateKeys)
  }

  /// A process that is every principal: it signs as each, and knows each's public key.
  init(holdingAll privateKeys: [Principal: P256.Signing.PrivateKey]) {
    self.init(signing: privateKeys, publicKeys: privateKeys.mapValues(\.publicKey))
  }

  /// The keys of one process run by `mart serve`: its own private key (required), and, for a
  /// service, every principal's public key from `MART_SERVICE_PUBLIC_KEYS` (required: each of the
  /// seven at least once, its own private key's among its own). The gateway checks no token
  /// between services, so it needs no public keys.
  ///
  /// A name may be listed more than once: during a rotation a principal has two keys, the old one
  /// and the new one, and tokens signed with either verify (a token names its key by a kid
  /// derived from the key). So one principal's key changes without restarting everything at once:
  /// 1. Make a new key pair (`mart keys services` prints a set: take the principal's private key
  ///    and its entry of the public list), add the new public key beside the old one
  ///    (`order:<old>,order:<new>,…`) wherever `MART_SERVICE_PUBLIC_KEYS` is set, and restart the
  ///    services, one at a time if you like: each still verifies the old key too.
  /// 2. Switch the principal's private key (`MART_ORDER_SERVICE_KEY`) to the new one and restart
  ///    its instances: their tokens now name the new key, which every service already knows.
  /// 3. Once no instance signs with the old key and its last tokens have expired
  ///    (`serviceTokenLifetime`, five minutes), remove the old public key everywhere and restart
  ///    again.
  public init(environment env: EnvironmentReader, for principal: Principal) throws {
    guard let own = try Self.privateKey(principal, env, required: true) else {
      throw ConfigurationError(variable: principal.keyVariable, value: "", reason: "required")
    }
    guard case .service = principal else {
      self.init(signing: [principal: own], publicKeys: [:])
      return
    }
    let variable = Self.publicKeysVariable
    guard let text = env.string(variable) else {
      throw ConfigurationError(
        variable: variable, value: "",
        reason: "required: every service's and the gateway's public key (`mart keys services` prints a set)")
    }
    var listed: [(principal: Principal, key: P256.Signing.PublicKey)] = []
    for item in text.split(separator: ",") {
      let parts = item.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
      guard parts.count == 2, let named = Principal(name: parts[0]) else {
        throw ConfigurationError(
          variable: variable, value: String(item),
          reason: "expected <name>:<base64 public key>, name one of "
            + Principal.all.map(\.name).joined(separator: ", "))
      }
      guard let raw = Data(base64Encoded: parts[1]),
        let key = try? P256.Signing.PublicKey(x963Representation: raw)
      else {
        throw ConfigurationError(
          variable: variable, value: String(item), reason: "expected the base64 of an uncompressed P-256 public key")
      }
      listed.append((named, key))
    }
    let missing = Principal.all.filter { principal in !listed.contains { $0.principal == principal } }
    guard missing.isEmpty else {
      throw ConfigurationError(
        variable: variable, value: "(\(listed.count) keys)",
        reason: "no key for \(missing.map(\.name).joined(separator: ", "))")
    }
    let ownPublic = own.publicKey.x963Representation
    guard listed.contains(where: { $0.principal == principal && $0.key.x963Representation == ownPublic }) else {
      throw ConfigurationError(
        variable: variable, value: principal.name,
        reason: "has no key matching \(principal.keyVariable): the two come from different key sets")
    }
    self.init(signing: [principal: own], publicKeys: listed)
  }

  /// A process that signs as `signing`'s principals and verifies every key of `publicKeys`, where
  /// a principal may have several (a rotation).
  init(
    signing: [Principal: P256.Signing.PrivateKey], publicKeys: [(principal: Principal, key: P256.Signing.PublicKey)]
  ) {
    self.signing = signing.reduce(into: [:]) { $0[$1.key] = Self.signingKey($1.value, of: $1.key) }
    self.verifying = publicKeys.reduce(into: [:]) { keys, entry in
      keys[Self.keyID(entry.key, of: entry.principal)] = PublicKey(principal: entry.principal, key: entry.key)
    }
  }

  /// The variables of a whole new key set, one `NAME=value` a line, as `mart keys services` prints
  /// them: every private key, in `Principal.all`'s order, then the public list.
  public static func newSetText() -> String {
    let keys = ephemeral()
    let privateKeys = Principal.all.compactMap { principal in
      keys.environment(for: principal)[principal.keyVariable].map { "\(principal.keyVariable)=\($0)" }
    }
    return (privateKeys + ["\(publicKeysVariable)=\(keys.publicKeysText)"]).joined(separator: "\n")
  }

  /// What `mart serve` of `principal` needs to trust this key set (tests that start a service as
  /// a process): its private key and every public key.
  public func environment(for principal: Principal) -> [String: String] {
    var values = [Self.publicKeysVariable: publicKeysText]
    if let own = signing[principal] {
      values[principal.keyVariable] = own.privateKey.rawRepresentation.base64EncodedString()
    }
    return values
  }

  /// `MART_SERVICE_PUBLIC_KEYS`'s form: `<name>:<base64 of the uncompressed key>`, comma-separated
  /// (a principal with two keys during a rotation is listed twice).
  private var publicKeysText: String {
    verifying.values.map { "\($0.principal.name):\($0.key.x963Representation.base64EncodedString())" }.sorted()
      .joined(separator: ",")
  }

  static func privateKey(_ principal: Principal, _ env: EnvironmentReader, required: Bool) throws
    -> P256.Signing.PrivateKey?
  {
    let variable = principal.keyVariable
    guard let text = env.string(variable) else {
      guard required else { return nil }
      throw ConfigurationError(
        variable: variable, value: "",
        reason: "required: the \(principal.name)'s own signing key (`mart keys services` prints a set)")
    }
    guard let key = parsePrivateKey(text) else {
      throw ConfigurationError(
        variable: variable, value: "(hidden)",
        reason: "expected a P-256 private key: PEM, or base64 of the 32-byte scalar")
    }
    return key
  }

  static func parsePrivateKey(_ text: String) -> P256.Signing.PrivateKey? {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if trimmed.hasPrefix("-----BEGIN") {
      return try? P256.Signing.PrivateKey(pemRepresentation: trimmed)
    }
    // Standard base64 (what `mart keys services` prints), or base64url without padding.
    guard let raw = Data(base64Encoded: trimmed) ?? Base64URL.decode(trimmed), raw.count == 32 else { return nil }
    return try? P256.Signing.PrivateKey(rawRepresentation: raw)
  }

  /// `<name>-<12 bytes of the SHA-256 of the public key>`: derived, so that no process configures
  /// a kid, and named, so that a log line says whose key a token claimed.
  static func keyID(_ key: P256.Signing.PublicKey, of principal: Principal) -> String {
    principal.name + "-" + Base64URL.encode(Data(SHA256.hash(data: key.x963Representation)).prefix(12))
  }

  static func signingKey(_ key: P256.Signing.PrivateKey, of principal: Principal) -> TokenSigningKey {
    TokenSigningKey(kid: keyID(key.publicKey, of: principal), privateKey: key)
  }
}

/// Token settings shared by every service and the gateway.
///
/// - `MART_JWT_ISSUER` (default `mart`): the `iss` of user access tokens.
/// - `MART_JWT_AUDIENCE` (default `mart`): the `aud` of user tokens; a token between Mart's
///   processes has `<audience>/<target service>`.
/// - `MART_<SERVICE>_SERVICE_KEY`, `MART_GATEWAY_KEY`, `MART_SERVICE_PUBLIC_KEYS`: each process's
///   own key, and every one's public key (`ServiceKeys`). There are no defaults: a missing key is a
///   configuration error, never a built-in secret.
public struct AuthConfiguration: Sendable {
  public var issuer: String
  public var audience: String
  /// The `iss` of service tokens: kept apart from users' so that one key can never pass for the
  /// other.
  public var serviceIssuer: String
  /// The `iss` of the gateway's tokens, which vouch for a client's address and nothing else.
  public var gatewayIssuer: String
  public var keys: ServiceKeys
  /// Lifetime of a token between Mart's processes.
  public var serviceTokenLifetime: Duration
  /// How long a verified token is taken on trust before it is checked again (never past its
  /// `exp`). It bounds how long a signing key pulled by hand keeps working, like the key caches.
  public var verifiedTokenTTL: Duration = .seconds(60)

  public init(
    issuer: String = "mart", audience: String = "mart", keys: ServiceKeys,
    serviceTokenLifetime: Duration = .seconds(300)
  ) {
    self.issuer = issuer
    self.audience = audience
    self.serviceIssuer = issuer + "/services"
    self.gatewayIssuer = issuer + "/gateway"
    self.keys = keys
    self.serviceTokenLifetime = serviceTokenLifetime
  }

  /// The settings of a process that is `principal` (nil: one that holds no key of its own).
  public init(environment env: EnvironmentReader, for principal: Principal?) throws {
    self.init(
      issuer: env.string("MART_JWT_ISSUER", default: "mart"),
      audience: env.string("MART_JWT_AUDIENCE", default: "mart"),
      keys: try principal.map { try ServiceKeys(environment: env, for: $0) } ?? .none)
  }

  /// This configuration with other keys.
  public func with(keys: ServiceKeys) -> AuthConfiguration {
    var copy = self
    copy.keys = keys
    return copy
  }

  /// A configuration with a fresh key for every service and the gateway, for tests.
  public static func ephemeral() -> AuthConfiguration {
    AuthConfiguration(keys: .ephemeral())
  }

  /// The audience of a token for `target`, e.g. `mart/inventory`: a token one service holds for
  /// another cannot be replayed against a third.
  public func audience(of target: MartService) -> String { "\(audience)/\(target.rawValue)" }
}

extension ServiceKeys {
  /// Every principal's key, fresh.
  public static func ephemeral() -> ServiceKeys {
    ServiceKeys(holdingAll: Principal.all.reduce(into: [:]) { $0[$1] = P256.Signing.PrivateKey() })
  }
}

/// Mints the short-lived tokens one of Mart's processes presents to a service, signed with its own
/// key and addressed to that service alone (`aud` `<audience>/<target>`). A service's token has
/// role `service` and subject `service:<name>`, and is what it calls with on its own behalf (not
/// a user's). The gateway's has no role and subject `gateway`: it is never a caller, only the
/// gateway's word for the client address beside it. A token is reused until a fifth of its
/// lifetime is left.
public actor ServiceTokenIssuer {
  private let principal: Principal
  private let configuration: AuthConfiguration
  private let key: TokenSigningKey
  private var current: [MartService: (token: String, renewAt: Date)] = [:]

  /// Nil when the configuration holds no key for `principal`.
  public init?(_ principal: Principal, configuration: AuthConfiguration) {
    guard let key = configuration.keys.signing[principal] else { return nil }
    self.principal = principal
    self.configuration = configuration
    self.key = key
  }

  public func token(for target: MartService) throws -> String {
    let now = Date()
    if let cached = current[target], cached.renewAt > now { return cached.token }
    let lifetime = configuration.serviceTokenLifetime.components.seconds
    let issued = Int64(now.timeIntervalSince1970)
    let (subject, roles, issuer) =
      switch principal {
      case .service(let service): ("service:\(service.rawValue)", [MartRole.service], configuration.serviceIssuer)
      case .gateway: ("gateway", [String](), configuration.gatewayIssuer)
      }
    let token = try key.sign(
      AccessTokenClaims(
        sub: subject, roles: roles, iss: issuer, aud: configuration.audience(of: target), iat: issued,
        exp: issued + lifetime))
    current[target] = (token, now.addingTimeInterval(TimeInterval(lifetime) * 0.8))
    return token
  }
}
