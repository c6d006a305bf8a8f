import Crypto
import CryptoExtras
import Foundation
import Synchronization

/// Memory-hard password hashing with scrypt (RFC 7914), stored as a PHC string:
/// `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (salt and hash in base64 without padding, as PHC says).
///
/// A stored hash carries its own parameters, so hashes made with another cost still verify (and
/// `needsRehash` tells when one should be replaced after a successful login). The work runs on a
/// dedicated queue (`PasswordHashingQueue`), at most a few at a time, with at most a few more
/// waiting: one hash at the production cost takes 128 MiB and a few hundred ms of CPU, which must
/// neither block the cooperative pool nor exhaust memory under a burst of logins. Past that, a
/// hash is refused at once (`PasswordHashingQueue.Busy`, UNAVAILABLE with RetryInfo).
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

    /// N = 2^17, r = 8, p = 1 (128 MiB per hash): OWASP's minimum for scrypt (Password Storage
    /// Cheat Sheet). Hashes made with a lower cost are replaced at the next successful login.
    public static let production = Cost(logN: 17, blockSize: 8, parallelism: 1)

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
  let queue: PasswordHashingQueue
  /// A well-formed hash of nothing: what a login for an unknown email is checked against, so that
  /// it costs as much as a wrong password for a known one.
  let dummyHash: String

  public init(cost: Cost = .production, queue: PasswordHashingQueue = .shared) {
    self.cost = cost
    self.queue = queue
    self.dummyHash = Self.format(cost: cost, salt: Self.randomBytes(Self.saltByteCount), hash: Self.randomBytes(32))
  }

  /// A new salted hash of `password`. Throws `PasswordHashingQueue.Busy` when the queue is full.
  public func hash(_ password: String) async throws -> String {
    let cost = self.cost
    let salt = Self.randomBytes(Self.saltByteCount)
    let derived = try await queue.run {
      try Self.derive(password, salt: salt, cost: cost, byteCount: Self.hashByteCount)
    }
    return Self.format(cost: cost, salt: salt, hash: derived)
  }

  /// Whether `password` matches `stored` (constant-time comparison). False for a malformed hash.
  /// Throws `PasswordHashingQueue.Busy` when the queue is full.
  public func verify(_ password: String, against stored: String) async throws(PasswordHashingQueue.Busy) -> Bool {
    guard let parsed = Self.parse(stored) else {
      // Still spend the usual time, so that a malformed row is not a timing oracle.
      _ = try await verify(password, against: dummyHash)
      return false
    }
    do {
      let derived = try await queue.run {
        try Self.derive(password, salt: parsed.salt, cost: parsed.cost, byteCount: parsed.hash.count)
      }
      return Self.constantTimeEquals(derived, parsed.hash)
    } catch let busy as PasswordHashingQueue.Busy {
      throw busy
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
}

/// Where password hashes are computed: at most `concurrency` at once on threads of its own (off
/// the cooperative pool), and at most `maximumWaiting` more waiting for one. Beyond that a hash is
/// refused at once with `Busy`, rather than queued for ever: memory stays bounded (128 MiB per
/// running hash at the production cost) and a burst of logins gets a quick UNAVAILABLE with a
/// time to retry, not a slow timeout.
public final class PasswordHashingQueue: Sendable {
  /// The queue is full; retry after `retryAfter`.
  public struct Busy: Error, Sendable, CustomStringConvertible {
    public var retryAfter: Duration
    public var description: String { "the password-hashing queue is full" }
  }

  /// The process's queue: one hash per core (at least two), and four more per core waiting.
  public static let shared = PasswordHashingQueue(
    concurrency: max(2, ProcessInfo.processInfo.activeProcessorCount),
    maximumWaiting: 4 * max(2, ProcessInfo.processInfo.activeProcessorCount))

  public let concurrency: Int
  public let maximumWaiting: Int
  private let operations: OperationQueue
  private let admitted = Mutex(0)

  public init(concurrency: Int, maximumWaiting: Int) {
    self.concurrency = concurrency
    self.maximumWaiting = maximumWaiting
    let operations = OperationQueue()
    operations.name = "mart.user.password-hashing"
    operations.maxConcurrentOperationCount = concurrency
    operations.qualityOfService = .userInitiated
    self.operations = operations
  }

  /// Runs `work` on the queue's threads; `Busy` at once if `concurrency + maximumWaiting` are
  /// already admitted.
  func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    let limit = concurrency + maximumWaiting
    let isAdmitted = admitted.withLock { count -> Bool in
      guard count < limit else { return false }
      count += 1
      return true
    }
    guard isAdmitted else {
      // About how long the work already admitted takes to drain, a second at least.
      throw Busy(retryAfter: .seconds(max(1, limit / concurrency)))
    }
    defer { admitted.withLock { $0 -= 1 } }
    return try await withCheckedThrowingContinuation { continuation in
      operations.addOperation {
        continuation.resume(with: Result { try work() })
      }
    }
  }
}
