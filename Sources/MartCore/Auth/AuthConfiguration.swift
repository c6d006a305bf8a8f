import Crypto
import Foundation

/// Token settings shared by every service and the gateway.
///
/// - `MART_JWT_ISSUER` (default `mart`): the `iss` of user access tokens.
/// - `MART_JWT_AUDIENCE` (default `mart`): the `aud` of every token.
/// - `MART_SERVICE_TOKEN_KEY` (required by `mart serve`): the P-256 private key services sign
///   service tokens with, as a PKCS#8/SEC1 PEM or as the base64 of the 32-byte scalar. Every
///   service holds it; tokens it signs carry role `service` and are accepted only by it. There is
///   no default: a missing key is a configuration error, never a built-in secret.
public struct AuthConfiguration: Sendable {
  public var issuer: String
  public var audience: String
  /// The `iss` of service tokens: kept apart from users' so that one key can never pass for the
  /// other.
  public var serviceIssuer: String
  /// Nil only where no service token is ever minted or checked (the gateway needs none).
  public var serviceKey: TokenSigningKey?
  /// Lifetime of a service token.
  public var serviceTokenLifetime: Duration
  /// How long a verified token is taken on trust before it is checked again (never past its
  /// `exp`). It bounds how long a signing key pulled by hand keeps working, like the key caches.
  public var verifiedTokenTTL: Duration = .seconds(60)

  public init(
    issuer: String = "mart", audience: String = "mart", serviceKey: TokenSigningKey?,
    serviceTokenLifetime: Duration = .seconds(300)
  ) {
    self.issuer = issuer
    self.audience = audience
    self.serviceIssuer = issuer + "/services"
    self.serviceKey = serviceKey
    self.serviceTokenLifetime = serviceTokenLifetime
  }

  public init(environment env: EnvironmentReader, requireServiceKey: Bool = true) throws {
    let variable = "MART_SERVICE_TOKEN_KEY"
    var serviceKey: TokenSigningKey?
    if let text = env.values[variable], !text.isEmpty {
      guard let key = Self.parsePrivateKey(text) else {
        throw ConfigurationError(
          variable: variable, value: "(hidden)",
          reason: "expected a P-256 private key: PEM, or base64 of the 32-byte scalar")
      }
      serviceKey = TokenSigningKey.service(key)
    } else if requireServiceKey {
      throw ConfigurationError(
        variable: variable, value: "",
        reason: "required: the key services sign service tokens with (generate one with `mart keys service`)")
    }
    self.init(
      issuer: env.string("MART_JWT_ISSUER", default: "mart"),
      audience: env.string("MART_JWT_AUDIENCE", default: "mart"),
      serviceKey: serviceKey)
  }

  /// A configuration with a fresh random service key: for `mart dev` (one process, nothing to
  /// share) and for tests.
  public static func ephemeral() -> AuthConfiguration {
    AuthConfiguration(serviceKey: .service(P256.Signing.PrivateKey()))
  }

  /// A new random service key in the form `MART_SERVICE_TOKEN_KEY` takes (base64 of the scalar).
  public static func newServiceKeyText() -> String {
    P256.Signing.PrivateKey().rawRepresentation.base64EncodedString()
  }

  static func parsePrivateKey(_ text: String) -> P256.Signing.PrivateKey? {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if trimmed.hasPrefix("-----BEGIN") {
      return try? P256.Signing.PrivateKey(pemRepresentation: trimmed)
    }
    // Standard base64 (what `mart keys service` prints), or base64url without padding.
    guard let raw = Data(base64Encoded: trimmed) ?? Base64URL.decode(trimmed), raw.count == 32 else { return nil }
    return try? P256.Signing.PrivateKey(rawRepresentation: raw)
  }
}

extension TokenSigningKey {
  /// The service key, with a key id derived from its public half, so that every service names
  /// it alike without configuring a kid.
  public static func service(_ key: P256.Signing.PrivateKey) -> TokenSigningKey {
    let digest = SHA256.hash(data: key.publicKey.x963Representation)
    return TokenSigningKey(kid: "svc-" + Base64URL.encode(Data(digest).prefix(12)), privateKey: key)
  }
}

/// Mints the short-lived tokens a service presents when it calls another service on its own
/// behalf (not a user's): role `service`, subject `service:<name>`. A token is reused until a
/// fifth of its lifetime is left.
public actor ServiceTokenIssuer {
  private let service: MartService
  private let configuration: AuthConfiguration
  private let key: TokenSigningKey
  private var current: (token: String, renewAt: Date)?

  public init?(service: MartService, configuration: AuthConfiguration) {
    guard let key = configuration.serviceKey else { return nil }
    self.service = service
    self.configuration = configuration
    self.key = key
  }

  public func token() throws -> String {
    let now = Date()
    if let current, current.renewAt > now { return current.token }
    let lifetime = configuration.serviceTokenLifetime.components.seconds
    let issued = Int64(now.timeIntervalSince1970)
    let token = try key.sign(
      AccessTokenClaims(
        sub: "service:\(service.rawValue)", roles: [MartRole.service], iss: configuration.serviceIssuer,
        aud: configuration.audience, iat: issued, exp: issued + lifetime))
    current = (token, now.addingTimeInterval(TimeInterval(lifetime) * 0.8))
    return token
  }
}
