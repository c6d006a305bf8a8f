import Foundation
import Logging
import MartRuntime
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Tells WatchOrder streams in this process that an order's timeline grew: every timeline entry
/// is written with a `NOTIFY` on `channel` carrying the order id (delivered at commit, whichever
/// process committed it), and `OrderTimelineListener` LISTENs and wakes the streams watching
/// that order.
final class OrderTimelineSignals: Sendable {
  static let channel = "mart_order_timeline"
  /// Bumped for an order on each of its notifications; `nil` key: the listener (re)connected,
  /// which may have hidden any order's, so every watcher looks again.
  private let generations = Mutex<(all: UInt64, byOrder: [String: UInt64])>((0, [:]))
  private let changed = AsyncCondition()

  /// A notification: `orderID`'s timeline grew, or (nil) anything may have.
  func notify(_ orderID: String?) {
    generations.withLock { generations in
      if let orderID {
        generations.byOrder[orderID, default: 0] &+= 1
      } else {
        generations.all &+= 1
      }
    }
    changed.broadcast()
  }

  /// Where `orderID`'s notifications stand now; pass it to `wait`.
  func mark(_ orderID: UUID) -> UInt64 {
    generations.withLock { $0.all &+ ($0.byOrder[orderID.lowercasedString] ?? 0) }
  }

  /// Returns once `orderID` has had a notification since `mark`, or after `timeout` (a safety
  /// net: a watcher then looks at the database anyway).
  func wait(for orderID: UUID, since mark: UInt64, upTo timeout: Duration) async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.changed.wait { self.mark(orderID) != mark } }
      group.addTask { try? await Task.sleep(for: timeout) }
      await group.next()
      group.cancelAll()
    }
  }

  /// Forgets an order's count when no stream watches it any more (kept small for long-running
  /// processes; a stale count only costs a spurious look).
  func forget(_ orderID: UUID) {
    _ = generations.withLock { $0.byOrder.removeValue(forKey: orderID.lowercasedString) }
  }
}

/// The LISTEN side of `OrderTimelineSignals`, run by the host with the service's database.
struct OrderTimelineListener: Service {
  let signals: OrderTimelineSignals
  let database: PostgresClient
  let logger: Logger

  func run() async throws {
    await cancelWhenGracefulShutdown {
      await Wakeup.listen(
        on: OrderTimelineSignals.channel, database: database, maximumBackoff: .seconds(10), logger: logger
      ) { [signals] orderID in signals.notify(orderID) }
    }
  }
}
