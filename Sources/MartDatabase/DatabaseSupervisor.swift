import Logging
import MartCore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Keeps a service's health in step with its database.
///
/// Until the database is reachable and migrated the service reports NOT_SERVING; an unreachable
/// database is retried with capped exponential backoff and logged, never a crash loop. Once
/// SERVING, it re-checks every `checkInterval` and turns NOT_SERVING while the database is gone.
/// A database at a newer schema version than this build stops the process.
///
/// Between checks, a call that has waited long for the database asks `confirmReachable()`: a
/// probe on a connection of its own (`DatabaseProbe`) that, when the database is gone, turns the
/// service NOT_SERVING at once and wakes the loop, which then retries as after a failed check.
public struct DatabaseSupervisor: Service {
  public let client: PostgresClient
  public let migrations: MigrationRunner
  public let autoMigrate: Bool
  public let checkInterval: Duration
  public let onHealthChange: @Sendable (Bool) -> Void
  let logger: Logger
  /// How long a health query may take before the database counts as unavailable.
  public let queryTimeout: Duration
  /// Checks the database on demand, outside the pool; nil: `confirmReachable()` always says yes.
  public let probe: DatabaseProbe?
  var initialBackoff: Duration = .milliseconds(200)
  var maximumBackoff: Duration = .seconds(10)
  private let shared = Shared()

  /// What the loop and `confirmReachable()` (called from RPCs) both see.
  private final class Shared: Sendable {
    let healthy = Atomic<Bool>(false)
    /// Set by a failed probe, taken by the loop.
    let lost = Atomic<Bool>(false)
    let changed = AsyncCondition()
  }

  /// The database a probe found gone.
  struct ProbeFailed: Error, CustomStringConvertible {
    var description: String { "the database did not answer a probe" }
  }

  public init(
    client: PostgresClient, migrations: MigrationRunner, autoMigrate: Bool, checkInterval: Duration,
    queryTimeout: Duration = .seconds(5), probe: DatabaseProbe? = nil, logger: Logger,
    onHealthChange: @escaping @Sendable (Bool) -> Void
  ) {
    self.client = client
    self.probe = probe
    self.migrations = migrations
    self.autoMigrate = autoMigrate
    self.checkInterval = checkInterval
    self.queryTimeout = queryTimeout
    self.logger = logger
    self.onHealthChange = onHealthChange
  }

  public func run() async throws {
    // Graceful shutdown cancels the loop, which wakes it from its sleeps.
    try await cancelWhenGracefulShutdown { try await supervise() }
  }

  /// Whether the database answers now, asked by a call that has waited for it. If it does not,
  /// the service turns NOT_SERVING at once (later calls are refused without waiting) and the loop
  /// retries it with backoff until it is back.
  public func confirmReachable() async -> Bool {
    guard let probe else { return true }
    if await probe.isReachable() { return true }
    if shared.healthy.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged {
      logger.warning("database unavailable; not serving until it is back")
      onHealthChange(false)
    }
    shared.lost.store(true, ordering: .releasing)
    shared.changed.broadcast()
    return false
  }

  private func supervise() async throws {
    var failures = 0
    while !Task.isCancelled {
      var healthy: Bool { shared.healthy.load(ordering: .acquiring) }
      do {
        if shared.lost.exchange(false, ordering: .acquiringAndReleasing) { throw ProbeFailed() }
        // Reachable within the timeout? Checked before migrating too: the pool keeps a query
        // waiting while it retries a refused connection, so without this an unreachable
        // database at startup would hold the first migration attempt, unlogged, for minutes.
        try await withTimeout(queryTimeout) {
          _ = try await client.query("SELECT 1", logger: logger)
        }
        if !healthy {
          // (Re)connected: make sure the schema is the one this build expects before serving.
          try await ensureSchema()
        }
        if !healthy {
          logger.info("database ready", metadata: ["attempts": "\(failures + 1)"])
          shared.healthy.store(true, ordering: .releasing)
          onHealthChange(true)
        }
        failures = 0
        await pause(checkInterval)
      } catch let error as MigrationError {
        if shared.healthy.exchange(false, ordering: .acquiringAndReleasing) { onHealthChange(false) }
        logger.critical("refusing to serve: \(error)")
        throw error
      } catch {
        // Shutdown cancelled the check: not an unavailable database, and nothing to retry.
        if Task.isCancelled { return }
        if shared.healthy.exchange(false, ordering: .acquiringAndReleasing) { onHealthChange(false) }
        failures += 1
        let delay = backoff(after: failures)
        logger.warning(
          error is SchemaNotReady ? "waiting for migrations; not serving" : "database unavailable; retrying",
          metadata: [
            "error": "\(APIStatus.redactedDescription(of: error))", "attempt": "\(failures)",
            "retry_in": "\(delay)",
          ])
        try? await Task.sleep(for: delay)
      }
    }
  }

  /// Sleeps for `duration`, or less if a probe finds the database gone.
  private func pause(_ duration: Duration) async {
    let shared = shared
    await withTaskGroup(of: Void.self) { group in
      group.addTask { try? await Task.sleep(for: duration) }
      group.addTask { await shared.changed.wait { shared.lost.load(ordering: .acquiring) } }
      await group.next()
      group.cancelAll()
    }
  }

  private func ensureSchema() async throws {
    if autoMigrate {
      let report = try await withTimeout(.seconds(120)) { try await migrations.migrate(client) }
      if !report.applied.isEmpty {
        logger.info("migrated", metadata: ["applied": "\(report.applied)", "version": "\(report.currentVersion)"])
      }
    } else {
      let pending = try await withTimeout(queryTimeout) { try await migrations.pending(client) }
      if let first = pending.first {
        throw SchemaNotReady(pendingVersion: first.version)
      }
    }
  }

  func backoff(after failures: Int) -> Duration {
    let exponent = min(failures - 1, 16)
    return min(initialBackoff * (1 << exponent), maximumBackoff)
  }
}

/// The database lacks migrations and this process may not apply them (`MART_AUTO_MIGRATE=false`).
struct SchemaNotReady: Error, CustomStringConvertible {
  var pendingVersion: Int
  var description: String { "migration \(pendingVersion) is pending: run `mart migrate`" }
}

public struct TimeoutError: Error, CustomStringConvertible {
  public var limit: Duration
  public var description: String { "no answer within \(limit)" }
}

/// Runs `operation`, throwing ``TimeoutError`` if it has not finished within `limit`.
///
/// The operation runs in a task of its own, which is cancelled on timeout but not waited for: a
/// structured task group would wait for it, and a database call that ignores cancellation (seen
/// with a connection to a database that was dropped under it) then held the supervisor's check,
/// so the service never turned NOT_SERVING and never shut down. Cancelling the caller ends the
/// wait at once too.
public func withTimeout<Value: Sendable>(
  _ limit: Duration, _ operation: @escaping @Sendable () async throws -> Value
) async throws -> Value {
  let race = FirstOutcome<Value>()
  let work = Task {
    do {
      race.settle(.success(try await operation()))
    } catch {
      race.settle(.failure(error))
    }
  }
  let timer = Task {
    try? await Task.sleep(for: limit)
    if race.settle(.failure(TimeoutError(limit: limit))) { work.cancel() }
  }
  defer { timer.cancel() }
  return try await withTaskCancellationHandler {
    try await withCheckedThrowingContinuation { race.await($0) }
  } onCancel: {
    if race.settle(.failure(CancellationError())) { work.cancel() }
  }
}

/// The first of several outcomes, handed to one waiting continuation.
private final class FirstOutcome<Value: Sendable>: Sendable {
  private struct State {
    var outcome: Result<Value, any Error>?
    var waiter: CheckedContinuation<Value, any Error>?
  }

  private let state = Mutex(State())

  /// Records `outcome` unless one was recorded already; returns whether this one won.
  @discardableResult
  func settle(_ outcome: Result<Value, any Error>) -> Bool {
    let (won, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Value, any Error>?) in
      guard state.outcome == nil else { return (false, nil) }
      state.outcome = outcome
      defer { state.waiter = nil }
      return (true, state.waiter)
    }
    waiter?.resume(with: outcome)
    return won
  }

  func await(_ continuation: CheckedContinuation<Value, any Error>) {
    let outcome = state.withLock { state -> Result<Value, any Error>? in
      if state.outcome == nil { state.waiter = continuation }
      return state.outcome
    }
    if let outcome { continuation.resume(with: outcome) }
  }
}
