import Logging
import MartCore
import NIOCore
import PostgresNIO
import Synchronization

/// Answers "does the database answer right now?" within a time limit, on a connection of its own.
///
/// Not through the pool: a call that has waited long is most likely waiting in the pool's queue
/// (all connections busy, or the pool retrying a refused connection with backoff), and a probe
/// queued behind it would say nothing. A refused or reset connection answers at once; a database
/// that accepts no login (shutting down, starting up, too many connections) answers with its
/// error; a black hole takes `limit`. Concurrent callers share one probe, and an answer younger
/// than `limit` is reused, so that a burst of slow calls costs one connection, not one each.
public final class DatabaseProbe: Sendable {
  let configuration: PostgresConnection.Configuration
  let limit: Duration
  let logger: Logger

  private struct State {
    var running: Task<Bool, Never>?
    var last: (at: ContinuousClock.Instant, reachable: Bool)?
  }

  private let state = Mutex(State())

  public init(configuration: PostgresConnection.Configuration, limit: Duration, logger: Logger) {
    var configuration = configuration
    let milliseconds = limit.components.seconds * 1000 + limit.components.attoseconds / 1_000_000_000_000_000
    configuration.options.connectTimeout = .milliseconds(max(1, milliseconds))
    self.configuration = configuration
    self.limit = limit
    self.logger = logger
  }

  /// Whether the database answered `SELECT 1` on a new connection within the limit.
  public func isReachable() async -> Bool {
    let probe = state.withLock { state -> Task<Bool, Never> in
      if let running = state.running { return running }
      if let last = state.last, last.at.duration(to: .now) < limit {
        let reachable = last.reachable
        return Task { reachable }
      }
      let task = Task { [configuration, limit, logger] in
        await Self.probe(configuration: configuration, limit: limit, logger: logger)
      }
      state.running = task
      return task
    }
    let reachable = await probe.value
    state.withLock { state in
      if state.running == probe {
        state.running = nil
        state.last = (.now, reachable)
      }
    }
    return reachable
  }

  private static func probe(
    configuration: PostgresConnection.Configuration, limit: Duration, logger: Logger
  ) async -> Bool {
    do {
      try await withTimeout(limit) {
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        do {
          _ = try await connection.query("SELECT 1", logger: logger)
        } catch {
          try? await connection.close()
          throw error
        }
        try? await connection.close()
      }
      return true
    } catch {
      logger.debug("database probe failed", metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      return false
    }
  }
}
