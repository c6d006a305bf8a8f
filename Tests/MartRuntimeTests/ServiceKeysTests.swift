import Crypto
import Foundation
import MartRuntime
import Testing

/// `MART_SERVICE_PUBLIC_KEYS` as `mart serve` reads it, with one principal's key being rotated:
/// the old and the new public key listed under one name.
@Suite struct ServiceKeysTests {
  /// The key set every process starts from.
  let set = ServiceKeys.ephemeral()
  /// The order service's next key.
  let next = P256.Signing.PrivateKey()

  /// The public list of `set`, plus `extra` entries.
  func publicList(adding extra: [String] = []) -> String {
    let list = set.environment(for: .gateway)[ServiceKeys.publicKeysVariable] ?? ""
    return ([list] + extra).joined(separator: ",")
  }

  func entry(_ name: String, _ key: P256.Signing.PrivateKey) -> String {
    "\(name):\(key.publicKey.x963Representation.base64EncodedString())"
  }

  /// The keys of `principal`'s process, with `privateKey` as its own (else its key from `set`).
  func keys(
    of principal: Principal, privateKey: P256.Signing.PrivateKey? = nil, publicKeys: String
  ) throws -> ServiceKeys {
    let own = privateKey ?? set.signing[principal]?.privateKey
    let environment = EnvironmentReader([
      principal.keyVariable: own?.rawRepresentation.base64EncodedString() ?? "",
      ServiceKeys.publicKeysVariable: publicKeys,
    ])
    return try ServiceKeys(environment: environment, for: principal)
  }

  /// A token for the inventory service from the order service signing with `orderKey`.
  func orderToken(signedWith orderKey: P256.Signing.PrivateKey) async throws -> String {
    let order = AuthConfiguration(keys: ServiceKeys(signing: [.service(.order): orderKey], publicKeys: [:]))
    let issuer = try #require(ServiceTokenIssuer(.service(.order), configuration: order))
    return try await issuer.token(for: .inventory)
  }

  /// The inventory service, trusting `publicKeys`, verifies `token`.
  func inventoryAccepts(_ token: String, publicKeys: String) async throws -> Caller {
    let inventory = AuthConfiguration(keys: try keys(of: .service(.inventory), publicKeys: publicKeys))
    let verifier = TokenVerifier(configuration: inventory, userKeys: StaticKeyProvider([:]), service: .inventory)
    return try await verifier.verify(token)
  }

  /// During a rotation both keys of the order service verify everywhere, so it can switch to the
  /// new one while the others run on; the list goes round `environment(for:)` unchanged.
  @Test func aPrincipalListedTwiceVerifiesWithEitherKey() async throws {
    let rotating = publicList(adding: [entry("order", next)])
    let old = try #require(set.signing[.service(.order)]?.privateKey)
    // The order service starts with either key against the list with both.
    _ = try keys(of: .service(.order), privateKey: old, publicKeys: rotating)
    _ = try keys(of: .service(.order), privateKey: next, publicKeys: rotating)
    let oldToken = try await orderToken(signedWith: old)
    let newToken = try await orderToken(signedWith: next)
    let withOld = try await inventoryAccepts(oldToken, publicKeys: rotating)
    #expect(withOld.service == .order)
    let withNew = try await inventoryAccepts(newToken, publicKeys: rotating)
    #expect(withNew.service == .order)

    let inventory = try keys(of: .service(.inventory), publicKeys: rotating)
    let orderKeys = inventory.verifying.values.filter { $0.principal == .service(.order) }
    #expect(orderKeys.count == 2)
    let again = inventory.environment(for: .service(.inventory))[ServiceKeys.publicKeysVariable] ?? ""
    #expect(again.split(separator: ",").filter { $0.hasPrefix("order:") }.count == 2)
    let reread = try keys(of: .service(.inventory), publicKeys: again)
    #expect(Set(reread.verifying.keys) == Set(inventory.verifying.keys))

    // After the rotation the old key is gone from the list, and its tokens with it.
    let withoutOld = publicList().split(separator: ",").filter { !$0.hasPrefix("order:") }.map(String.init)
    let rotated = (withoutOld + [entry("order", next)]).joined(separator: ",")
    _ = try await inventoryAccepts(newToken, publicKeys: rotated)
    await #expect(throws: TokenError.self) {
      _ = try await inventoryAccepts(oldToken, publicKeys: rotated)
    }
  }

  /// A process's own private key must be one of the keys listed under its own name: a key listed
  /// under another name, or not at all, means the two variables come from different key sets.
  @Test func theOwnKeyMustMatchOneOfItsListedKeys() throws {
    let rotating = publicList(adding: [entry("order", next)])
    _ = try keys(of: .service(.order), privateKey: next, publicKeys: rotating)
    let stranger = P256.Signing.PrivateKey()
    #expect(throws: ConfigurationError.self) {
      _ = try keys(of: .service(.order), privateKey: stranger, publicKeys: rotating)
    }
    let underAnotherName = publicList(adding: [entry("payment", stranger)])
    #expect(throws: ConfigurationError.self) {
      _ = try keys(of: .service(.order), privateKey: stranger, publicKeys: underAnotherName)
    }
  }

  /// Every principal still needs a key, however many another one has; malformed entries are still
  /// refused.
  @Test func aPrincipalWithNoKeyIsStillRefused() throws {
    let withoutGateway = publicList(adding: [entry("order", next)]).split(separator: ",")
      .filter { !$0.hasPrefix("gateway:") }.joined(separator: ",")
    var refusal: ConfigurationError?
    do {
      _ = try keys(of: .service(.inventory), publicKeys: withoutGateway)
    } catch let error as ConfigurationError {
      refusal = error
    }
    #expect(refusal?.variable == ServiceKeys.publicKeysVariable)
    #expect(refusal?.reason == "no key for gateway")
    #expect(throws: ConfigurationError.self) {
      _ = try keys(of: .service(.inventory), publicKeys: publicList(adding: ["orders:AAAA"]))
    }
    #expect(throws: ConfigurationError.self) {
      _ = try keys(of: .service(.inventory), publicKeys: publicList(adding: ["order:AAAA"]))
    }
  }
}
