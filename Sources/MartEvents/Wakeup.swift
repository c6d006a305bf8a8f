import MartCore
import Synchronization

/// A level-triggered wake-up between tasks: `signal()` any number of times; `wait(upTo:)` returns
/// at once if signalled since the last wait, otherwise on the next signal or after the timeout.
final class Wakeup: Sendable {
  private let pending = Atomic<Bool>(false)
  private let signalled = AsyncCondition()

  init() {}

  func signal() {
    pending.store(true, ordering: .releasing)
    signalled.broadcast()
  }

  /// Waits for a signal, at most `timeout`. Only one task may wait at a time.
  ///
  /// The signal is consumed before the caller looks at what it announces, so a signal that comes
  /// after this returns is kept for the next wait and nothing committed meanwhile is overlooked.
  func wait(upTo timeout: Duration) async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.signalled.wait { self.pending.load(ordering: .acquiring) } }
      group.addTask { try? await Task.sleep(for: timeout) }
      await group.next()
      group.cancelAll()
    }
    pending.store(false, ordering: .releasing)
  }
}
