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
/// `window` ago, so a locked key cannot reset itself by waiting out a short window.
///
/// An attempt is counted *before* its password is checked (`admit`), in one statement that also
/// answers whether it must wait: parallel attempts queue on the counters' rows, so however many
/// guesses arrive at once, no more than a threshold of them reach the password check. A key whose
/// lock is in force is not counted: a refused attempt counts nowhere, and one from a known address
/// while the account is slowed down counts against its pair and address only. What turns out not
/// to be a guess gives its counts back. A successful login clears the account's and the pair's
/// counts, takes its own count off the address's, and remembers the address (`succeeded`). The
/// right password of a disabled account, a full hashing queue, or a lock that a parallel attempt
/// set between the look and the count give every count back (`withdraw`). A count given back
/// takes back the lock it set. So a burst of more simultaneous logins than a threshold, right
/// passwords included, is refused until those in flight are decided: one client does not sign in
/// to one account that many times at once.
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

  /// A login attempt counted against its keys before its password is checked.
  struct Attempt: Sendable {
    let account: String
    let address: String?
    /// The keys this attempt counted against, each with its count right after.
    let counts: [String: Int32]
  }

  enum Admission: Sendable {
    /// Counted: check the password, then settle (`succeeded`, `withdraw`, or nothing on a wrong one).
    case admitted(Attempt)
    /// Refused without a look at the password, and counted nowhere.
    case refused(wait: Duration)
  }

  /// One of the keys an attempt counts against, with its thresholds in seconds.
  private struct Counter {
    var key: String
    var threshold: Int32
    var base: Double
    var maximum: Double
    /// The account's key: its lock does not hold back an address the account has signed in from.
    var slowsOnly: Bool
  }

  /// The attempt's keys in one order, the same in every statement, so that two statements never
  /// wait for each other's rows in opposite orders.
  private func counters(account: String, address: String?) -> [Counter] {
    var counters = [
      Counter(
        key: account, threshold: Int32(policy.accountThreshold), base: Self.seconds(policy.accountDelay),
        maximum: Self.seconds(policy.maximumAccountDelay), slowsOnly: true)
    ]
    if let address {
      for (key, threshold) in [
        (Self.pairKey(account: account, address: address), policy.pairThreshold),
        (Self.addressKey(address), policy.addressThreshold),
      ] {
        counters.append(
          Counter(
            key: key, threshold: Int32(threshold), base: Self.seconds(policy.baseLock),
            maximum: Self.seconds(policy.maximumLock), slowsOnly: false))
      }
    }
    return counters.sorted { $0.key < $1.key }
  }

  /// Counts a login for `account` from `address` against its keys, unless a lock that holds it
  /// back is in force: then how long it must wait. One round trip, two when a lock set by a
  /// parallel attempt turns up only while counting (the counts made are then given back).
  func admit(account: String, address: String?) async throws -> Admission {
    let counters = counters(account: account, address: address)
    let window = Self.seconds(policy.window)
    // `blocking` looks at the locks as the statement began; the upsert then counts each key on
    // its newest row version (queued behind parallel attempts), skipping a key whose lock is in
    // force by then. A new count's lock is base × 2^(count − threshold), at most the maximum.
    let rows = try await database.query(
      """
      WITH attempt AS (
        SELECT * FROM unnest(\(counters.map(\.key))::text[], \(counters.map(\.threshold))::int4[],
                             \(counters.map(\.base))::float8[], \(counters.map(\.maximum))::float8[],
                             \(counters.map(\.slowsOnly))::bool[])
          AS a(key, threshold, base, maximum, slows_only)
      ), known AS (
        SELECT EXISTS (
          SELECT 1 FROM login_known_addresses WHERE account = \(account) AND address = \(address)) AS yes
      ), blocking AS (
        SELECT f.locked_until FROM login_failures f JOIN attempt a ON a.key = f.key
        WHERE f.locked_until > now() AND NOT (a.slows_only AND (SELECT yes FROM known))
      ), counted AS (
        INSERT INTO login_failures AS f (key, window_start, failures, locked_until, updated_at)
        SELECT a.key, now(), 1,
               CASE WHEN a.threshold <= 1 THEN now() + make_interval(secs => least(a.maximum, a.base)) END, now()
        FROM attempt a
        WHERE NOT EXISTS (SELECT 1 FROM blocking)
        ORDER BY a.key
        ON CONFLICT (key) DO UPDATE SET
          window_start = CASE WHEN greatest(f.window_start, f.locked_until) < now() - make_interval(secs => \(window))
                              THEN now() ELSE f.window_start END,
          failures = CASE WHEN greatest(f.window_start, f.locked_until) < now() - make_interval(secs => \(window))
                          THEN 1 ELSE f.failures + 1 END,
          locked_until = (
            SELECT CASE WHEN n.failures >= a.threshold
                        THEN now() + make_interval(
                          secs => least(a.maximum, a.base * power(2, least(n.failures - a.threshold, 30))))
                        ELSE f.locked_until END
            FROM attempt a, LATERAL (
              SELECT CASE WHEN greatest(f.window_start, f.locked_until) < now() - make_interval(secs => \(window))
                          THEN 1 ELSE f.failures + 1 END AS failures) n
            WHERE a.key = f.key),
          updated_at = now()
        WHERE coalesce(f.locked_until, '-infinity') <= now()
        RETURNING f.key, f.failures
      )
      SELECT (SELECT yes FROM known),
             (SELECT coalesce(max(extract(epoch FROM locked_until - now())), 0)::float8 FROM blocking),
             coalesce((SELECT array_agg(key ORDER BY key) FROM counted), '{}'::text[]),
             coalesce((SELECT array_agg(failures ORDER BY key) FROM counted), '{}'::int4[])
      """, logger: logger)
    var known = false
    var wait = 0.0
    var counts: [String: Int32] = [:]
    for try await (isKnown, seconds, keys, failures) in rows.decode((Bool, Double, [String], [Int32]).self) {
      known = isKnown
      wait = seconds
      counts = Dictionary(zip(keys, failures), uniquingKeysWith: { first, _ in first })
    }
    if wait > 0 { return .refused(wait: Self.duration(wait)) }
    let attempt = Attempt(account: account, address: address, counts: counts)
    // Not counted because a lock landed between the look and the count: refused after all.
    let lockedAfterAll = counters.filter { counts[$0.key] == nil && !($0.slowsOnly && known) }.map(\.key)
    guard lockedAfterAll.isEmpty else {
      let remaining = try await settle(
        attempt, clearing: [], givingBack: counts, remember: false, waitingFor: lockedAfterAll)
      return .refused(wait: Self.duration(max(remaining, 0.001)))
    }
    return .admitted(attempt)
  }

  /// A successful login: the account and this pair start with a clean slate, the address gets
  /// this attempt's count back, and the address is one the account has signed in from.
  func succeeded(_ attempt: Attempt) async throws {
    var clearing = [attempt.account]
    var givingBack: [String: Int32] = [:]
    if let address = attempt.address {
      clearing.append(Self.pairKey(account: attempt.account, address: address))
      let key = Self.addressKey(address)
      givingBack[key] = attempt.counts[key]
    }
    _ = try await settle(attempt, clearing: clearing, givingBack: givingBack, remember: true, waitingFor: [])
  }

  /// An attempt that was no guess after all (the password was never checked, or it was right
  /// for a disabled account): every count it made is given back.
  func withdraw(_ attempt: Attempt) async throws {
    _ = try await settle(attempt, clearing: [], givingBack: attempt.counts, remember: false, waitingFor: [])
  }

  /// In one statement: deletes the `clearing` keys' counts; takes one off each `givingBack` key
  /// (given with the count the attempt left it at), deleting a count that comes to nothing;
  /// remembers the address if asked; answers how long the `waitingFor` keys are still locked.
  ///
  /// A count given back below its threshold drops its lock: below a threshold, a lock can only be
  /// one that ended a window ago, which counts the same as none. At or above, when nobody counted
  /// since, the lock this attempt set ends now (a key is only counted when no lock of it is in
  /// force); otherwise it is left to the later counts that set it.
  private func settle(
    _ attempt: Attempt, clearing: [String], givingBack: [String: Int32], remember: Bool, waitingFor: [String]
  ) async throws -> Double {
    let thresholds = Dictionary(
      uniqueKeysWithValues: counters(account: attempt.account, address: attempt.address).map {
        ($0.key, $0.threshold)
      })
    let back = givingBack.keys.sorted()
    let rows = try await database.query(
      """
      WITH back AS (
        SELECT * FROM unnest(\(back)::text[], \(back.map { givingBack[$0] ?? 0 })::int4[],
                             \(back.map { thresholds[$0] ?? 1 })::int4[]) AS b(key, ours, threshold)
      ), locked AS (
        SELECT key FROM login_failures
        WHERE key = ANY (\(clearing)::text[]) OR key IN (SELECT key FROM back)
        ORDER BY key FOR UPDATE
      ), cleared AS (
        DELETE FROM login_failures f USING locked l
        WHERE f.key = l.key
          AND (f.key = ANY (\(clearing)::text[]) OR (f.failures <= 1 AND f.key IN (SELECT key FROM back)))
      ), given AS (
        UPDATE login_failures f SET
          failures = f.failures - 1,
          locked_until = CASE WHEN f.failures - 1 < b.threshold THEN NULL
                              WHEN f.failures = b.ours THEN least(f.locked_until, now())
                              ELSE f.locked_until END
        FROM back b, locked l
        WHERE f.key = b.key AND l.key = b.key AND f.failures > 1 AND NOT (f.key = ANY (\(clearing)::text[]))
      ), remembered AS (
        INSERT INTO login_known_addresses (account, address)
        SELECT \(attempt.account), \(attempt.address) WHERE \(remember) AND \(attempt.address)::text IS NOT NULL
        ON CONFLICT (account, address) DO UPDATE SET last_success_at = now()
      )
      SELECT coalesce(max(extract(epoch FROM f.locked_until - now())), 0)::float8
      FROM login_failures f WHERE f.key = ANY (\(waitingFor)::text[]) AND f.locked_until > now()
      """, logger: logger)
    var remaining = 0.0
    for try await seconds in rows.decode(Double.self) { remaining = seconds }
    return remaining
  }

  static func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
  }

  static func duration(_ seconds: Double) -> Duration {
    .milliseconds(Int64((seconds * 1000).rounded(.up)))
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

  /// The longest window any quota is taken over: a row whose window began longer ago than this
  /// is over whatever its key, and `UserHousekeeping` deletes it.
  static let longestWindow: Duration = .seconds(3600)

  /// Uncounts one request for `key` (one that was refused for the service's own load).
  func giveBack(_ key: String) async throws {
    try await database.query(
      "UPDATE request_quotas SET requests = greatest(requests - 1, 0) WHERE key = \(key)", logger: logger)
  }

  /// Counts one request for `key`; how long until the window ends if that makes more than
  /// `limit`, else nil.
  func take(_ key: String, limit: Int, per window: Duration) async throws -> Duration? {
    assert(window <= Self.longestWindow, "a quota window longer than RequestQuota.longestWindow")
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
