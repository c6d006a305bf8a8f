import Crypto
import Foundation

// JSON Web Tokens (RFC 7519) signed with ES256 (ECDSA P-256 + SHA-256, RFC 7518 §3.4), written
// over swift-crypto so that the whole verification path is ours to read: one algorithm on an
// allow-list, the header's `alg` never trusted to pick one, and a signature in the raw 64-byte
// R‖S form that JWS mandates (not DER).

/// The one algorithm Mart signs and accepts. `alg: none`, HS256 (the public-key-as-HMAC-secret
/// attack) and everything else are refused before any key is looked at.
public let martTokenAlgorithm = "ES256"

/// The claims of a Mart access token (user or service).
public struct AccessTokenClaims: Codable, Sendable, Equatable {
  /// The user's id, or `service:<name>` for a service token.
  public var sub: String
  /// `customer`, `admin`, or `service` (service tokens only).
  public var roles: [String]
  public var iss: String
  /// The audiences. Mart issues one; RFC 7519 §4.1.3 allows a string or an array, and both are read.
  public var aud: [String]
  /// Issued at, expiry and not-before: seconds since 1970 (NumericDate).
  public var iat: Int64
  public var exp: Int64
  public var nbf: Int64?
  /// Unique token id.
  public var jti: String
  /// Whether the user's email was verified when the token was issued (OpenID Connect's
  /// `email_verified`); nil in service tokens.
  public var emailVerified: Bool?

  public init(
    sub: String, roles: [String], iss: String, aud: String, iat: Int64, exp: Int64, nbf: Int64? = nil,
    jti: String = UUID().uuidString.lowercased(), emailVerified: Bool? = nil
  ) {
    self.emailVerified = emailVerified
    self.sub = sub
    self.roles = roles
    self.iss = iss
    self.aud = [aud]
    self.iat = iat
    self.exp = exp
    self.nbf = nbf
    self.jti = jti
  }

  enum CodingKeys: String, CodingKey {
    case sub, roles, iss, aud, iat, exp, nbf, jti
    case emailVerified = "email_verified"
  }

  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    sub = try container.decode(String.self, forKey: .sub)
    roles = try container.decodeIfPresent([String].self, forKey: .roles) ?? []
    iss = try container.decode(String.self, forKey: .iss)
    if let single = try? container.decode(String.self, forKey: .aud) {
      aud = [single]
    } else {
      aud = try container.decode([String].self, forKey: .aud)
    }
    iat = try container.decode(Int64.self, forKey: .iat)
    exp = try container.decode(Int64.self, forKey: .exp)
    nbf = try container.decodeIfPresent(Int64.self, forKey: .nbf)
    jti = try container.decodeIfPresent(String.self, forKey: .jti) ?? ""
    emailVerified = try container.decodeIfPresent(Bool.self, forKey: .emailVerified)
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(sub, forKey: .sub)
    try container.encode(roles, forKey: .roles)
    try container.encode(iss, forKey: .iss)
    if aud.count == 1 {
      try container.encode(aud[0], forKey: .aud)
    } else {
      try container.encode(aud, forKey: .aud)
    }
    try container.encode(iat, forKey: .iat)
    try container.encode(exp, forKey: .exp)
    try container.encodeIfPresent(nbf, forKey: .nbf)
    try container.encode(jti, forKey: .jti)
    try container.encodeIfPresent(emailVerified, forKey: .emailVerified)
  }
}

/// The JOSE header of a token.
struct JOSEHeader: Codable {
  var alg: String
  var kid: String?
  var typ: String?
  /// Extensions the token says a verifier must understand (RFC 7515 4.1.11); Mart's tokens have
  /// none, and a verifier that ignored one would accept what it does not understand.
  var crit: [String]?

  init(alg: String, kid: String?, typ: String?) {
    self.alg = alg
    self.kid = kid
    self.typ = typ
  }

  /// The token types an access token may declare: JWT (RFC 7519) or at+jwt (RFC 9068), with or
  /// without the `application/` prefix, in any case. RFC 7519 makes `typ` optional, but every
  /// token Mart signs carries it, so one without it was not made by Mart for access (RFC 8725
  /// 3.11: explicit typing keeps one kind of JWT from being used as another).
  var hasAccessTokenType: Bool {
    guard let typ else { return false }
    let type = typ.lowercased()
    return ["jwt", "at+jwt", "application/jwt", "application/at+jwt"].contains(type)
  }
}

/// A P-256 private key with its key id: what signs tokens.
public struct TokenSigningKey: Sendable {
  public let kid: String
  public let privateKey: P256.Signing.PrivateKey

  public init(kid: String, privateKey: P256.Signing.PrivateKey) {
    self.kid = kid
    self.privateKey = privateKey
  }

  /// A new random key under `kid`.
  public static func random(kid: String) -> TokenSigningKey {
    TokenSigningKey(kid: kid, privateKey: P256.Signing.PrivateKey())
  }

  /// A signed compact JWS: `base64url(header).base64url(claims).base64url(R‖S)`.
  public func sign(_ claims: AccessTokenClaims) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let header = try encoder.encode(JOSEHeader(alg: martTokenAlgorithm, kid: kid, typ: "JWT"))
    let payload = try encoder.encode(claims)
    let signingInput = Base64URL.encode(header) + "." + Base64URL.encode(payload)
    let signature = try privateKey.signature(for: Data(signingInput.utf8))
    return signingInput + "." + Base64URL.encode(signature.rawRepresentation)
  }

  /// The public half as a JWK (RFC 7517/7518 §6.2): what GetJwks publishes.
  public var publicJWK: JSONWebKeyValue { JSONWebKeyValue(kid: kid, publicKey: privateKey.publicKey) }
}

/// A public EC P-256 JSON Web Key, independent of any protobuf type.
public struct JSONWebKeyValue: Sendable, Equatable, Codable {
  public var kty: String
  public var use: String
  public var kid: String
  public var alg: String
  public var crv: String
  public var x: String
  public var y: String

  public init(kid: String, publicKey: P256.Signing.PublicKey) {
    // x963: 0x04 ‖ X (32 bytes) ‖ Y (32 bytes).
    let point = publicKey.x963Representation
    self.kty = "EC"
    self.use = "sig"
    self.kid = kid
    self.alg = martTokenAlgorithm
    self.crv = "P-256"
    self.x = Base64URL.encode(point.dropFirst().prefix(32))
    self.y = Base64URL.encode(point.dropFirst(33))
  }

  public init(kty: String, use: String, kid: String, alg: String, crv: String, x: String, y: String) {
    self.kty = kty
    self.use = use
    self.kid = kid
    self.alg = alg
    self.crv = crv
    self.x = x
    self.y = y
  }

  /// The verification key, or nil for a key Mart cannot use (another type, curve or algorithm,
  /// or coordinates that are not a point on P-256).
  public var publicKey: P256.Signing.PublicKey? {
    guard kty == "EC", crv == "P-256", alg == martTokenAlgorithm || alg.isEmpty, use == "sig" || use.isEmpty,
      let x = Base64URL.decode(x), let y = Base64URL.decode(y), x.count == 32, y.count == 32
    else { return nil }
    return try? P256.Signing.PublicKey(x963Representation: [0x04] + x + y)
  }
}

/// The parts of a compact JWS, checked for shape but not yet for signature or claims.
struct CompactJWS {
  var header: JOSEHeader
  var payload: Data
  var signingInput: Data
  var signature: Data

  init(_ token: String) throws(TokenError) {
    // Bound the work done on hostile input before any parsing.
    guard token.utf8.count <= 8192 else { throw .malformed("token too long") }
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3 else { throw .malformed("not a compact JWS (three dot-separated parts)") }
    guard let headerBytes = Base64URL.decode(parts[0]), let payload = Base64URL.decode(parts[1]),
      let signature = Base64URL.decode(parts[2])
    else { throw .malformed("a part is not base64url") }
    guard let header = try? JSONDecoder().decode(JOSEHeader.self, from: headerBytes) else {
      throw .malformed("the header is not a JOSE header")
    }
    self.header = header
    self.payload = payload
    self.signature = signature
    self.signingInput = Data(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
  }
}

/// Base64url without padding (RFC 7515 §2).
public enum Base64URL {
  public static func encode(_ bytes: some DataProtocol) -> String {
    Data(bytes).base64EncodedString()
      .replacingOccurrences(of: "+", with: "-")
      .replacingOccurrences(of: "/", with: "_")
      .replacingOccurrences(of: "=", with: "")
  }

  /// Strict: only the URL-safe alphabet, no padding, no whitespace.
  public static func decode(_ text: some StringProtocol) -> Data? {
    guard
      text.utf8.allSatisfy({ byte in
        (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
          || byte == 0x2D || byte == 0x5F
      }), text.utf8.count % 4 != 1
    else { return nil }
    var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
    return Data(base64Encoded: base64)
  }
}
