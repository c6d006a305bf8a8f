import Synchronization

/// A level-triggered wake-up between tasks: `signal()` any number of times; `wait(upTo:)` returns
/// at once if signalled since the last wait, otherwise on the next signal or after the timeout.
final class Wakeup: Sendable {
  private struct State {
    var pending = false
    var waiter: CheckedContinuation<Void, Never>?
  }

  private let state = Mutex(State())

  init() {}

  func signal() {
    let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
      guard let waiter = state.waiter else {
        state.pending = true
        return nil
      }
      state.waiter = nil
      return waiter
    }
    waiter?.resume()
  }

  /// Waits for a signal, at most `timeout`. Only one task may wait at a time.
  func wait(upTo timeout: Duration) async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.waitForSignal() }
      group.addTask { try? await Task.sleep(for: timeout) }
      await group.next()
      // Whichever finished first, release the other (a cancelled wait may leave one spurious
      // wake-up behind, which costs the relay one empty look at its outbox).
      group.cancelAll()
    }
  }

  private func waitForSignal() async {
    await withTaskCancellationHandler {
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumeNow = state.withLock { state -> Bool in
          if state.pending || Task.isCancelled {
            state.pending = false
            return true
          }
          state.waiter = continuation
          return false
        }
        if resumeNow { continuation.resume() }
      }
    } onCancel: {
      self.signal()
    }
  }
}
