import Crypto
import Hummingbird
import MartCore

// /metrics and the per-service detail of /readyz tell an outsider which services are down and how
// the mart is used, so only an operator holding the admin token reads them. The token is sent as
// `Authorization: Bearer <token>`, which a Prometheus scrape job sends with its `authorization`
// setting. There is no default: without a token configured nobody reads them through the gateway.

/// The operator's bearer token for the gateway's admin endpoints (`MART_GATEWAY_ADMIN_TOKEN`).
public struct AdminToken: Sendable {
  public static let variable = "MART_GATEWAY_ADMIN_TOKEN"
  /// Short enough to type, long enough that guessing it over HTTP is hopeless (`openssl rand -hex 32`
  /// gives 64 characters).
  public static let minimumLength = 32

  /// Only the token's SHA-256 is kept: comparing digests of equal length is what makes the
  /// comparison take the same time whatever was presented.
  private let digest: [UInt8]

  /// Throws `ConfigurationError` (exit 2) for a token too short to be a secret.
  public init(_ token: String) throws {
    guard token.count >= Self.minimumLength else {
      // The value is a secret: the error names the variable and the rule, never the value.
      throw ConfigurationError(
        variable: Self.variable, value: "(hidden)", reason: "at least \(Self.minimumLength) characters")
    }
    digest = Array(SHA256.hash(data: Array(token.utf8)))
  }

  /// The token from the environment; nil when unset or empty (the admin endpoints are then closed).
  public init?(environment env: EnvironmentReader) throws {
    guard let token = env.string(Self.variable), !token.isEmpty else { return nil }
    try self.init(token)
  }

  /// Whether `request` carries the token. Both sides are hashed and every byte compared, so the
  /// time taken says nothing about how much of a guess was right.
  func admits(_ request: Request) -> Bool {
    guard let presented = ServerAuthInterceptor.bearerToken(fromAuthorization: request.headers[.authorization])
    else { return false }
    let presentedDigest = Array(SHA256.hash(data: Array(presented.utf8)))
    var difference: UInt8 = 0
    for (expected, given) in zip(digest, presentedDigest) { difference |= expected ^ given }
    return difference == 0
  }
}
