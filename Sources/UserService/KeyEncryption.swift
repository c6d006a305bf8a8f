import Crypto
import Foundation
import MartRuntime

/// The key-encryption keys (KEKs) that keep the JWT signing keys encrypted at rest: a backup or a
/// copy of the user database alone cannot forge tokens. `MART_USER_KEY_ENCRYPTION_KEYS` is
/// `<id>:<base64 of 32 random bytes>,…`: the first encrypts, every one decrypts. Each private key
/// is sealed with AES-256-GCM, its kid as authenticated data (a sealed key moved to another row
/// does not open), and the id of its KEK is stored beside it (`signing_keys.kek_id`).
///
/// Rotating the KEK: put a new one first and keep the old ones after it; each instance re-seals
/// every key under the new one when it first signs (`SigningKeyRing`); once every instance has
/// run with the new list, drop the old KEK.
public struct KeyEncryptionKeys: Sendable {
  public let currentID: String
  let keys: [String: SymmetricKey]

  public static let variable = "MART_USER_KEY_ENCRYPTION_KEYS"

  public struct DecryptionFailed: Error, CustomStringConvertible {
    public var description: String
  }

  /// `keys` in order of preference: the first encrypts.
  public init(_ keys: [(id: String, key: SymmetricKey)]) throws {
    guard let first = keys.first else { throw DecryptionFailed(description: "no key-encryption key") }
    currentID = first.id
    self.keys = Dictionary(keys.map { ($0.id, $0.key) }, uniquingKeysWith: { first, _ in first })
  }

  /// A fresh random KEK, for tests.
  public static func random(id: String = "test") -> KeyEncryptionKeys {
    KeyEncryptionKeys(currentID: id, keys: [id: SymmetricKey(size: .bits256)])
  }

  private init(currentID: String, keys: [String: SymmetricKey]) {
    self.currentID = currentID
    self.keys = keys
  }

  /// From `MART_USER_KEY_ENCRYPTION_KEYS`; required: there is no built-in key.
  public init(environment env: EnvironmentReader) throws {
    let variable = Self.variable
    guard let text = env.string(variable) else {
      throw ConfigurationError(
        variable: variable, value: "",
        reason: "required: the key that encrypts the JWT signing keys at rest (`mart keys kek` prints one)")
    }
    var parsed: [(id: String, key: SymmetricKey)] = []
    for item in text.split(separator: ",") {
      let parts = item.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
      guard parts.count == 2, Self.isValidID(parts[0]), let raw = Data(base64Encoded: parts[1]), raw.count == 32
      else {
        throw ConfigurationError(
          variable: variable, value: "(hidden)",
          reason: "expected <id>:<base64 of 32 bytes>,… (id: letters, digits, '.', '_', '-')")
      }
      guard !parsed.contains(where: { $0.id == parts[0] }) else {
        throw ConfigurationError(variable: variable, value: parts[0], reason: "the same id twice")
      }
      parsed.append((parts[0], SymmetricKey(data: raw)))
    }
    try self.init(parsed)
  }

  /// A new KEK entry, `<id>:<base64>`, as `mart keys kek` prints it.
  public static func newEntryText(id: String) -> String {
    let key = SymmetricKey(size: .bits256)
    return id + ":" + key.withUnsafeBytes { Data($0).base64EncodedString() }
  }

  static func isValidID(_ id: String) -> Bool {
    !id.isEmpty && id.utf8.count <= 64
      && id.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) }
      && id.allSatisfy(\.isASCII)
  }

  /// `plaintext` sealed under the current KEK, bound to `kid`.
  func seal(_ plaintext: Data, kid: String) throws -> (kekID: String, sealed: Data) {
    guard let key = keys[currentID] else { throw DecryptionFailed(description: "no current key-encryption key") }
    let box = try AES.GCM.seal(plaintext, using: key, authenticating: Data(kid.utf8))
    guard let combined = box.combined else { throw DecryptionFailed(description: "AES-GCM gave no combined form") }
    return (currentID, combined)
  }

  /// What `seal` sealed under the KEK `kekID` for `kid`.
  public func open(_ sealed: Data, kekID: String, kid: String) throws -> Data {
    guard let key = keys[kekID] else {
      throw DecryptionFailed(description: "key-encryption key \(kekID.debugDescription) is not configured")
    }
    do {
      return try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key, authenticating: Data(kid.utf8))
    } catch {
      throw DecryptionFailed(description: "the key sealed under \(kekID.debugDescription) does not open")
    }
  }
}
