import Logging
import MartCore
import PostgresNIO
import Synchronization

/// A level-triggered wake-up between tasks: `signal()` any number of times; `wait(upTo:)` returns
/// at once if signalled since the last wait, otherwise on the next signal or after the timeout.
package final class Wakeup: Sendable {
  private let pending = Atomic<Bool>(false)
  private let signalled = AsyncCondition()

  package init() {}

  package func signal() {
    pending.store(true, ordering: .releasing)
    signalled.broadcast()
  }

  /// Waits for a signal, at most `timeout`. Only one task may wait at a time.
  ///
  /// The signal is consumed before the caller looks at what it announces, so a signal that comes
  /// after this returns is kept for the next wait and nothing committed meanwhile is overlooked.
  package func wait(upTo timeout: Duration) async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.signalled.wait { self.pending.load(ordering: .acquiring) } }
      group.addTask { try? await Task.sleep(for: timeout) }
      await group.next()
      group.cancelAll()
    }
    pending.store(false, ordering: .releasing)
  }
}

extension Wakeup {
  /// Signals `wakeup` on every PostgreSQL notification on `channel` (see `listen(on:...)`).
  package static func listen(
    on channel: String, database: PostgresClient, wakeup: Wakeup, maximumBackoff: Duration, logger: Logger
  ) async {
    await listen(on: channel, database: database, maximumBackoff: maximumBackoff, logger: logger) { _ in
      wakeup.signal()
    }
  }

  /// Calls `notified` with the payload of every PostgreSQL notification on `channel` (a
  /// `NOTIFY` is delivered at commit, so a listener hears of committed work only), and with nil
  /// whenever the LISTEN connection is (re)established, which stands for whatever was committed
  /// while there was none. Keeps the connection open, re-establishing it after failures, until
  /// cancelled.
  package static func listen(
    on channel: String, database: PostgresClient, maximumBackoff: Duration, logger: Logger,
    notified: @escaping @Sendable (String?) -> Void
  ) async {
    var failures = 0
    while !Task.isCancelled {
      do {
        try await database.withConnection { connection in
          try await connection.listen(on: channel) { notifications in
            failures = 0
            notified(nil)
            for try await notification in notifications { notified(notification.payload) }
          }
        }
      } catch {
        if Task.isCancelled { return }
        failures += 1
        logger.debug(
          "listener lost", metadata: ["channel": "\(channel)", "error": "\(APIStatus.redactedDescription(of: error))"])
      }
      try? await Task.sleep(for: min(.milliseconds(100) * (1 << min(max(failures, 1) - 1, 16)), maximumBackoff))
    }
  }
}
