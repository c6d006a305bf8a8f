import Crypto
import CryptoExtras
import Foundation

/// Memory-hard password hashing with scrypt (RFC 7914), stored as a PHC string:
/// `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (salt and hash in base64 without padding, as PHC says).
///
/// A stored hash carries its own parameters, so hashes made with another cost still verify (and
/// `needsRehash` tells when one should be replaced after a successful login). The work runs on a
/// dedicated operation queue, at most a few at a time: one hash at the production cost takes
/// 32 MiB and ~100 ms of CPU, which must neither block the cooperative pool nor exhaust memory
/// under a burst of logins.
public struct PasswordHasher: Sendable {
  /// scrypt's cost parameters: N = 2^logN, block size r, parallelism p.
  public struct Cost: Sendable, Equatable, CustomStringConvertible {
    public var logN: Int
    public var blockSize: Int
    public var parallelism: Int

    public init(logN: Int, blockSize: Int, parallelism: Int) {
      self.logN = logN
      self.blockSize = blockSize
      self.parallelism = parallelism
    }

    /// N = 2^15, r = 8, p = 1 (32 MiB per hash): the production cost.
    public static let production = Cost(logN: 15, blockSize: 8, parallelism: 1)

    /// For tests only: fast, and far too weak for real passwords.
    public static let testing = Cost(logN: 10, blockSize: 8, parallelism: 1)

    public var description: String { "ln=\(logN),r=\(blockSize),p=\(parallelism)" }

    /// Parameters a stored hash may name: bounded so that a corrupted row cannot make one
    /// verification take gigabytes.
    var isAcceptable: Bool {
      (1...20).contains(logN) && (1...32).contains(blockSize) && (1...16).contains(parallelism)
    }
  }

  public static let saltByteCount = 16
  public static let hashByteCount = 32

  public let cost: Cost
  /// A well-formed hash of nothing: what a login for an unknown email is checked against, so that
  /// it costs as much as a wrong password for a known one.
  let dummyHash: String

  public init(cost: Cost = .production) {
    self.cost = cost
    self.dummyHash = Self.format(cost: cost, salt: Self.randomBytes(Self.saltByteCount), hash: Self.randomBytes(32))
  }

  /// A new salted hash of `password`.
  public func hash(_ password: String) async throws -> String {
    let cost = self.cost
    let salt = Self.randomBytes(Self.saltByteCount)
    let derived = try await Self.offloaded {
      try Self.derive(password, salt: salt, cost: cost, byteCount: Self.hashByteCount)
    }
    return Self.format(cost: cost, salt: salt, hash: derived)
  }

  /// Whether `password` matches `stored` (constant-time comparison). False for a malformed hash.
  public func verify(_ password: String, against stored: String) async -> Bool {
    guard let parsed = Self.parse(stored) else {
      // Still spend the usual time, so that a malformed row is not a timing oracle.
      _ = await verify(password, against: dummyHash)
      return false
    }
    do {
      let derived = try await Self.offloaded {
        try Self.derive(password, salt: parsed.salt, cost: parsed.cost, byteCount: parsed.hash.count)
      }
      return Self.constantTimeEquals(derived, parsed.hash)
    } catch {
      return false
    }
  }

  /// Whether a stored hash was made with other parameters than this hasher's.
  public func needsRehash(_ stored: String) -> Bool {
    guard let parsed = Self.parse(stored) else { return true }
    return parsed.cost != cost || parsed.hash.count != Self.hashByteCount
  }

  // MARK: - PHC strings

  static func format(cost: Cost, salt: [UInt8], hash: [UInt8]) -> String {
    "$scrypt$\(cost)$\(phcBase64(salt))$\(phcBase64(hash))"
  }

  static func parse(_ stored: String) -> (cost: Cost, salt: [UInt8], hash: [UInt8])? {
    let parts = stored.split(separator: "$", omittingEmptySubsequences: false)
    guard parts.count == 5, parts[0].isEmpty, parts[1] == "scrypt" else { return nil }
    var values: [String: Int] = [:]
    for item in parts[2].split(separator: ",") {
      let pair = item.split(separator: "=", maxSplits: 1)
      guard pair.count == 2, let value = Int(pair[1]) else { return nil }
      values[String(pair[0])] = value
    }
    guard values.count == 3, let logN = values["ln"], let r = values["r"], let p = values["p"] else { return nil }
    let cost = Cost(logN: logN, blockSize: r, parallelism: p)
    guard cost.isAcceptable, let salt = phcDecode(parts[3]), let hash = phcDecode(parts[4]), !salt.isEmpty,
      (16...64).contains(hash.count)
    else { return nil }
    return (cost, salt, hash)
  }

  static func phcBase64(_ bytes: [UInt8]) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "=", with: "")
  }

  static func phcDecode(_ text: Substring) -> [UInt8]? {
    guard text.utf8.count % 4 != 1 else { return nil }
    let padded = String(text) + String(repeating: "=", count: (4 - text.utf8.count % 4) % 4)
    return Data(base64Encoded: padded).map { [UInt8]($0) }
  }

  // MARK: - Work

  static func derive(_ password: String, salt: [UInt8], cost: Cost, byteCount: Int) throws -> [UInt8] {
    let key = try KDF.Scrypt.deriveKey(
      from: Array(password.utf8), salt: salt, outputByteCount: byteCount, rounds: 1 << cost.logN,
      blockSize: cost.blockSize, parallelism: cost.parallelism)
    return key.withUnsafeBytes { [UInt8]($0) }
  }

  static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
  }

  static func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
  }

  /// Hashes in progress at once: bounds CPU and memory (32 MiB each at the production cost).
  /// Waiting work waits in the queue, not on a blocked thread.
  private static let queue: OperationQueue = {
    let queue = OperationQueue()
    queue.name = "mart.user.password-hashing"
    queue.maxConcurrentOperationCount = max(2, ProcessInfo.processInfo.activeProcessorCount)
    queue.qualityOfService = .userInitiated
    return queue
  }()

  /// Runs CPU-heavy work off the cooperative thread pool.
  static func offloaded<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
      queue.addOperation {
        continuation.resume(with: Result { try work() })
      }
    }
  }
}
