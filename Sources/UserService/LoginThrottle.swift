import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// Slows down password guessing without letting anyone lock an account's owner out, with the
/// `login_failures` table (so that every instance of the service shares the counts).
///
/// Each failed login counts against three keys, for unknown emails as for known ones (so the
/// throttle does not reveal which accounts exist):
/// - `pair:<email>|<address>`, the guesses at one account from one client address (an IPv6
///   address by its /64). At `pairThreshold` failures the pair is locked: logins for that account
///   from that address are refused (RESOURCE_EXHAUSTED with RetryInfo) without looking at the
///   password, for `baseLock`, doubling with each further failure up to `maximumLock`.
/// - `ip:<address>`, the guesses from one address at any account, locked the same way at
///   `addressThreshold` (higher: many people share one address behind NAT or in an office).
/// - `account:<email>`, the guesses at one account from anywhere. This key only slows down: past
///   `accountThreshold`, an address the account has never signed in from waits `accountDelay`,
///   doubling up to `maximumAccountDelay`, between attempts, and an address it has signed in from
///   before (`login_known_addresses`) is not slowed at all. So guesses spread over many addresses
///   get one try per delay, and nobody's guesses keep the owner out.
///
/// A count starts over when its window is older than `window` and its last lock ended more than
/// `window` ago, so a locked key cannot reset itself by waiting out a short window. A successful
/// login clears the account's and the pair's counts (not the address's) and remembers the address.
public struct LoginThrottle: Sendable {
  /// The thresholds and locks (`UserServiceOptions.loginThrottle`).
  public struct Policy: Sendable, Equatable {
    public var window: Duration
    public var pairThreshold: Int
    /// Higher than the pair's: many people can share one address (NAT, offices).
    public var addressThreshold: Int
    public var baseLock: Duration
    public var maximumLock: Duration
    public var accountThreshold: Int
    public var accountDelay: Duration
    public var maximumAccountDelay: Duration

    public init(
      window: Duration, pairThreshold: Int, addressThreshold: Int, baseLock: Duration, maximumLock: Duration,
      accountThreshold: Int, accountDelay: Duration, maximumAccountDelay: Duration
    ) {
      self.window = window
      self.pairThreshold = pairThreshold
      self.addressThreshold = addressThreshold
      self.baseLock = baseLock
      self.maximumLock = maximumLock
      self.accountThreshold = accountThreshold
      self.accountDelay = accountDelay
      self.maximumAccountDelay = maximumAccountDelay
    }

    public static let standard = Policy(
      window: .seconds(15 * 60), pairThreshold: 5, addressThreshold: 20, baseLock: .seconds(30),
      maximumLock: .seconds(15 * 60), accountThreshold: 5, accountDelay: .seconds(2),
      maximumAccountDelay: .seconds(60))
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

  static func pairKey(account: String, address: String) -> String {
    "pair:" + account.dropFirst("account:".count) + "|" + address
  }

  /// How long a login for `account` from `address` must still wait; nil if it may go ahead. The
  /// pair's and the address's locks always count; the account's only for an address it has never
  /// signed in from.
  func wait(account: String, address: String?) async throws -> Duration? {
    let hardKeys = address.map { [Self.pairKey(account: account, address: $0), Self.addressKey($0)] } ?? []
    let rows = try await database.query(
      """
      SELECT coalesce(max(extract(epoch FROM f.locked_until - now())), 0)::float8
      FROM login_failures f
      WHERE f.locked_until > now()
        AND (f.key = ANY (\(hardKeys))
             OR (f.key = \(account) AND NOT EXISTS (
                   SELECT 1 FROM login_known_addresses k WHERE k.account = \(account) AND k.address = \(address))))
      """, logger: logger)
    var remaining = 0.0
    for try await seconds in rows.decode(Double.self) { remaining = seconds }
    return remaining > 0 ? .milliseconds(Int64((remaining * 1000).rounded(.up))) : nil
  }

  /// Counts a failed login against the pair, the address and the account.
  func recordFailure(account: String, address: String?) async throws {
    if let address {
      try await count(
        Self.pairKey(account: account, address: address), threshold: policy.pairThreshold, base: policy.baseLock,
        maximum: policy.maximumLock)
      try await count(
        Self.addressKey(address), threshold: policy.addressThreshold, base: policy.baseLock,
        maximum: policy.maximumLock)
    }
    try await count(
      account, threshold: policy.accountThreshold, base: policy.accountDelay, maximum: policy.maximumAccountDelay)
  }

  private func count(_ key: String, threshold: Int, base: Duration, maximum: Duration) async throws {
    let window = Double(policy.window.components.seconds)
    let base = Double(base.components.seconds)
    let maximum = Double(maximum.components.seconds)
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

  /// A successful login: the account and this pair start with a clean slate, and the address is
  /// one the account has signed in from.
  func recordSuccess(account: String, address: String?) async throws {
    var keys = [account]
    if let address { keys.append(Self.pairKey(account: account, address: address)) }
    try await database.query("DELETE FROM login_failures WHERE key = ANY (\(keys))", logger: logger)
    guard let address else { return }
    try await database.query(
      """
      INSERT INTO login_known_addresses (account, address) VALUES (\(account), \(address))
      ON CONFLICT (account, address) DO UPDATE SET last_success_at = now()
      """, logger: logger)
  }
}

/// The key the login throttle counts a client address by: an IPv6 address by its /64 (one
/// subscriber usually holds a whole /64). The address itself is `ForwardedClient.clientAddress`:
/// the gateway's word, else the connection's peer, never a direct caller's claim.
enum ClientAddress {
  static func key(_ address: IPAddress) -> String { IPNetwork.subscriberKey(address) }
}

/// Fixed-window request quotas in `request_quotas`, shared by every instance: Register per email
/// and ResendVerificationEmail per email. A key counts whether or not an account has that email,
/// so that being refused tells nothing about which emails do.
struct RequestQuota: Sendable {
  let database: PostgresClient
  let logger: Logger

  /// Counts one request for `key`; how long until the window ends if that makes more than
  /// `limit`, else nil.
  func take(_ key: String, limit: Int, per window: Duration) async throws -> Duration? {
    let seconds = Double(window.components.seconds)
    let rows = try await database.query(
      """
      INSERT INTO request_quotas AS q (key, window_start, requests) VALUES (\(key), now(), 1)
      ON CONFLICT (key) DO UPDATE SET
        window_start = CASE WHEN q.window_start <= now() - make_interval(secs => \(seconds))
                            THEN now() ELSE q.window_start END,
        requests = CASE WHEN q.window_start <= now() - make_interval(secs => \(seconds))
                        THEN 1 ELSE q.requests + 1 END
      RETURNING requests,
        extract(epoch FROM window_start + make_interval(secs => \(seconds)) - now())::float8
      """, logger: logger)
    for try await (requests, remaining) in rows.decode((Int32, Double).self) where requests > limit {
      return .milliseconds(Int64(max(remaining, 0.001) * 1000))
    }
    return nil
  }
}
