import Foundation
import Logging
import MartRuntime
import PostgresNIO
import ServiceLifecycle

/// Deletes what the user service no longer needs, now and then, so that its bookkeeping tables do
/// not grow without bound:
/// - `login_failures` whose window and lock both ended more than the throttle's window ago (a
///   failure counted on such a row would start it over anyway);
/// - `login_known_addresses` not signed in from for `knownAddressLifetime`;
/// - `request_quotas` whose window ended (`RequestQuota.longestWindow` ago);
/// - `email_verifications` and `password_resets` that expired or were used more than `retention`
///   ago;
/// - `refresh_tokens` of a family whose every token expired or was revoked more than `retention`
///   ago. A family with a token still live keeps all its rows: presenting one of its spent tokens
///   is how reuse is detected (`UserStore.rotate`), and a missing row would only say "invalid".
///
/// Safe with several instances: each batch deletes at most `batchSize` rows it could lock at once
/// (skipping rows another instance or a request holds), so no round holds long locks. Errors (the
/// database away, the schema not migrated yet) are logged and the round is tried again next time.
public struct UserHousekeeping: Service {
  /// How often and how much (`UserServiceOptions.housekeeping`).
  public struct Settings: Sendable, Equatable {
    /// Time between rounds.
    public var interval: Duration
    /// Rows deleted per statement, at most.
    public var batchSize: Int
    /// How long an address an account signed in from stays known without another sign-in.
    public var knownAddressLifetime: Duration
    /// How long a spent or expired verification link, and a refresh-token family that has ended,
    /// are kept (to look into what happened) before they go.
    public var retention: Duration

    public init(
      interval: Duration = .seconds(10 * 60), batchSize: Int = 1000,
      knownAddressLifetime: Duration = .seconds(180 * 24 * 3600), retention: Duration = .seconds(24 * 3600)
    ) {
      self.interval = interval
      self.batchSize = max(1, batchSize)
      self.knownAddressLifetime = knownAddressLifetime
      self.retention = retention
    }

    public static let standard = Settings()
  }

  /// What one round deleted, per table.
  public struct Report: Sendable, Equatable {
    public var loginFailures = 0
    public var knownAddresses = 0
    public var requestQuotas = 0
    public var emailVerifications = 0
    public var passwordResets = 0
    /// Families (a sign-in and its refreshes), each one or more rows.
    public var refreshTokenFamilies = 0

    public var total: Int {
      loginFailures + knownAddresses + requestQuotas + emailVerifications + passwordResets
        + refreshTokenFamilies
    }
  }

  let database: PostgresClient
  let settings: Settings
  /// The login throttle's window: a count older than it (and its lock ended as long ago) is over.
  let throttleWindow: Duration
  let logger: Logger

  public init(database: PostgresClient, settings: Settings, throttleWindow: Duration, logger: Logger) {
    self.database = database
    self.settings = settings
    self.throttleWindow = throttleWindow
    var logger = logger
    logger[metadataKey: "component"] = "user-housekeeping"
    self.logger = logger
  }

  public func run() async throws {
    await repeatUntilShutdown(
      every: settings.interval, logger: logger, failure: "housekeeping failed; retrying next round"
    ) {
      let report = try await sweep()
      guard report.total > 0 else { return }
      logger.debug(
        "housekeeping deleted stale rows",
        metadata: [
          "login_failures": "\(report.loginFailures)", "login_known_addresses": "\(report.knownAddresses)",
          "request_quotas": "\(report.requestQuotas)", "email_verifications": "\(report.emailVerifications)",
          "password_resets": "\(report.passwordResets)", "refresh_token_families": "\(report.refreshTokenFamilies)",
        ])
    }
  }

  /// One round: every table, batch after batch, until a batch comes back short.
  @discardableResult
  public func sweep() async throws -> Report {
    var report = Report()
    report.loginFailures = try await batches(Self.loginFailures, seconds(throttleWindow))
    report.knownAddresses = try await batches(Self.knownAddresses, seconds(settings.knownAddressLifetime))
    report.requestQuotas = try await batches(Self.requestQuotas, seconds(RequestQuota.longestWindow))
    report.emailVerifications = try await batches(Self.emailVerifications, seconds(settings.retention))
    report.passwordResets = try await batches(Self.passwordResets, seconds(settings.retention))
    report.refreshTokenFamilies = try await batches(Self.refreshTokens, seconds(settings.retention))
    return report
  }

  /// Runs `statement` (age in seconds, batch size → rows deleted) until it deletes fewer than a
  /// batch: the last one, or one whose rows other instances hold.
  private func batches(
    _ statement: (Double, Int) -> PostgresQuery, _ age: Double
  ) async throws -> Int {
    var deleted = 0
    while true {
      try Task.checkCancellation()
      let rows = try await database.query(statement(age, settings.batchSize), logger: logger)
      var thisBatch = 0
      for try await count in rows.decode(Int64.self) { thisBatch = Int(count) }
      deleted += thisBatch
      if thisBatch < settings.batchSize { return deleted }
    }
  }

  private func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
  }

  // Each statement picks a batch by an index, locks it skipping locked rows, checks the
  // condition again on what it locked, deletes, and answers how many rows went.

  static func loginFailures(_ window: Double, _ limit: Int) -> PostgresQuery {
    """
    WITH gone AS (
      DELETE FROM login_failures WHERE key IN (
          SELECT key FROM login_failures
          WHERE updated_at < now() - make_interval(secs => \(window))
            AND greatest(window_start, locked_until) < now() - make_interval(secs => \(window))
          ORDER BY updated_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        AND greatest(window_start, locked_until) < now() - make_interval(secs => \(window))
      RETURNING 1)
    SELECT count(*)::int8 FROM gone
    """
  }

  static func knownAddresses(_ lifetime: Double, _ limit: Int) -> PostgresQuery {
    """
    WITH gone AS (
      DELETE FROM login_known_addresses WHERE (account, address) IN (
          SELECT account, address FROM login_known_addresses
          WHERE last_success_at < now() - make_interval(secs => \(lifetime))
          ORDER BY last_success_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        AND last_success_at < now() - make_interval(secs => \(lifetime))
      RETURNING 1)
    SELECT count(*)::int8 FROM gone
    """
  }

  static func requestQuotas(_ window: Double, _ limit: Int) -> PostgresQuery {
    """
    WITH gone AS (
      DELETE FROM request_quotas WHERE key IN (
          SELECT key FROM request_quotas
          WHERE window_start <= now() - make_interval(secs => \(window))
          ORDER BY window_start LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        AND window_start <= now() - make_interval(secs => \(window))
      RETURNING 1)
    SELECT count(*)::int8 FROM gone
    """
  }

  static func emailVerifications(_ retention: Double, _ limit: Int) -> PostgresQuery {
    spentLinks("email_verifications", retention, limit)
  }

  static func passwordResets(_ retention: Double, _ limit: Int) -> PostgresQuery {
    spentLinks("password_resets", retention, limit)
  }

  /// Emailed single-use links (`email_verifications`, `password_resets`: the same columns) that
  /// expired or were used more than `retention` ago.
  private static func spentLinks(_ table: String, _ retention: Double, _ limit: Int) -> PostgresQuery {
    """
    WITH gone AS (
      DELETE FROM \(unescaped: table) WHERE token_hash IN (
          SELECT token_hash FROM \(unescaped: table)
          WHERE least(expires_at, used_at) < now() - make_interval(secs => \(retention))
          ORDER BY least(expires_at, used_at) LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        AND least(expires_at, used_at) < now() - make_interval(secs => \(retention))
      RETURNING 1)
    SELECT count(*)::int8 FROM gone
    """
  }

  /// Whole families at a time, found by their heads (migration 0008's index), and only when no
  /// token of the family ended recently or is still live: then no token of it can be presented
  /// to any effect, reuse detection included. Answers how many families went.
  static func refreshTokens(_ retention: Double, _ limit: Int) -> PostgresQuery {
    """
    WITH heads AS (
      SELECT family_id FROM refresh_tokens
      WHERE replaced_by IS NULL AND least(expires_at, revoked_at) < now() - make_interval(secs => \(retention))
      ORDER BY least(expires_at, revoked_at) LIMIT \(limit) FOR UPDATE SKIP LOCKED
    ), ended AS (
      SELECT h.family_id FROM heads h
      WHERE NOT EXISTS (
        SELECT 1 FROM refresh_tokens t
        WHERE t.family_id = h.family_id
          AND least(t.expires_at, t.revoked_at) >= now() - make_interval(secs => \(retention)))
    ), gone AS (
      DELETE FROM refresh_tokens t USING ended e WHERE t.family_id = e.family_id
      RETURNING (t.replaced_by IS NULL) AS head
    )
    SELECT count(*) FILTER (WHERE head)::int8 FROM gone
    """
  }
}
