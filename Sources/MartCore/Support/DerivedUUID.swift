import Crypto
import Foundation

extension UUID {
  /// A name-based UUID (RFC 9562 version 5: SHA-1 of a namespace and the name): the same name
  /// gives the same id on every run, which makes a command that records ids (an idempotency
  /// key, a request id) safe to run twice.
  public init(deriving name: String, namespace: UUID = UUID.martNamespace) {
    var bytes = withUnsafeBytes(of: namespace.uuid) { Array($0) }
    bytes += Array(name.utf8)
    var digest = Array(Insecure.SHA1.hash(data: bytes).prefix(16))
    digest[6] = (digest[6] & 0x0F) | 0x50  // version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  // RFC variant
    self = UUID(uuid: digest.withUnsafeBytes { $0.loadUnaligned(as: uuid_t.self) })
  }

  /// The namespace of the names Mart derives ids from.
  public static let martNamespace = UUID(
    uuid: (0x6d, 0x61, 0x72, 0x74, 0x2d, 0x6e, 0x61, 0x6d, 0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x21, 0x01))
}
