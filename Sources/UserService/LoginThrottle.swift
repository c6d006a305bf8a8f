import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// Slows down password guessing, per account and per client address, with the `login_failures`
/// table (so that every instance of the service shares the counts).
///
/// Each failed login counts against `account:<email>` (known or not, so the throttle does not
/// reveal which emails exist) and `ip:<address>` (an IPv6 address by its /64). Once a key has
/// `threshold` failures in its window, every further failure locks it for `baseLock`, doubling
/// with each failure up to `maximumLock`; while locked, logins for it are refused
/// (RESOURCE_EXHAUSTED with RetryInfo) without looking at the password. The count starts over when
/// the window is older than `window` and the last lock ended more than `window` ago, so a locked
/// key cannot reset itself by waiting out a short window. A successful login clears the account's
/// count (not the address's).
struct LoginThrottle: Sendable {
  struct Policy: Sendable, Equatable {
    var window: Duration
    var accountThreshold: Int
    /// Higher than the account's: many people can share one address (NAT, offices).
    var addressThreshold: Int
    var baseLock: Duration
    var maximumLock: Duration

    static let standard = Policy(
      window: .seconds(15 * 60), accountThreshold: 5, addressThreshold: 20, baseLock: .seconds(30),
      maximumLock: .seconds(15 * 60))
  }

  let policy: Policy
  let database: PostgresClient
  let logger: Logger

  static func accountKey(_ email: String) -> String {
    "account:" + String(email.lowercased().prefix(300))
  }

  static func addressKey(_ address: String) -> String {
    "ip:" + address
  }

  /// How long the longest lock on any of these keys still lasts; nil if none is locked.
  func lockedFor(_ keys: [String]) async throws -> Duration? {
    let rows = try await database.query(
      """
      SELECT coalesce(max(extract(epoch FROM locked_until - now())), 0)::float8
      FROM login_failures WHERE key = ANY (\(keys)) AND locked_until > now()
      """, logger: logger)
    var remaining = 0.0
    for try await seconds in rows.decode(Double.self) { remaining = seconds }
    return remaining > 0 ? .milliseconds(Int64((remaining * 1000).rounded(.up))) : nil
  }

  /// Counts a failed login against the account and the address, locking them at the threshold.
  func recordFailure(account: String, address: String?) async throws {
    try await count(account, threshold: policy.accountThreshold)
    if let address { try await count(address, threshold: policy.addressThreshold) }
  }

  private func count(_ key: String, threshold: Int) async throws {
    let window = Double(policy.window.components.seconds)
    let base = Double(policy.baseLock.components.seconds)
    let maximum = Double(policy.maximumLock.components.seconds)
    let threshold = Int32(threshold)
    try await database.query(
      """
      INSERT INTO login_failures AS f (key, window_start, failures, updated_at)
      VALUES (\(key), now(), 1, now())
      ON CONFLICT (key) DO UPDATE SET
        window_start = CASE WHEN f.window_start < now() - make_interval(secs => \(window))
                             AND coalesce(f.locked_until, '-infinity') < now() - make_interval(secs => \(window))
                            THEN now() ELSE f.window_start END,
        failures = CASE WHEN f.window_start < now() - make_interval(secs => \(window))
                         AND coalesce(f.locked_until, '-infinity') < now() - make_interval(secs => \(window))
                        THEN 1 ELSE f.failures + 1 END,
        updated_at = now()
      """, logger: logger)
    // The lock follows from the new count: base × 2^(failures − threshold), at most the maximum.
    try await database.query(
      """
      UPDATE login_failures SET locked_until = now() + make_interval(
        secs => least(\(maximum), \(base) * power(2, least(failures - \(threshold), 30))))
      WHERE key = \(key) AND failures >= \(threshold)
      """, logger: logger)
  }

  /// A successful login: the account starts with a clean slate.
  func clear(account: String) async throws {
    try await database.query("DELETE FROM login_failures WHERE key = \(account)", logger: logger)
  }
}

/// The address a call came from: the client's, when the gateway vouches for it
/// (`ForwardedClient`), else the peer of the connection. Address headers from anyone else are
/// ignored: a direct caller that could name its address could spread its guesses over made-up
/// ones, or lock others out by naming theirs. An IPv6 address is reduced to its /64 (one
/// subscriber usually holds a whole /64). Nil if neither is an IP address.
enum ClientAddress {
  static func resolve(forwarded: IPAddress?, peer: String) -> String? {
    forwarded.map(key) ?? normalize(fromPeer: peer)
  }

  /// `ipv4:127.0.0.1:31415` or `ipv6:[::1]:443` (grpc-swift's peer descriptions).
  static func normalize(fromPeer peer: String) -> String? {
    for scheme in ["ipv4:", "ipv6:"] where peer.hasPrefix(scheme) {
      return IPAddress(hostPort: peer.dropFirst(scheme.count)).map(key)
    }
    return nil
  }

  static func key(_ address: IPAddress) -> String { IPNetwork.subscriberKey(address) }
}
