import Synchronization

/// Lets tasks wait for state kept elsewhere (under its own lock) to change: the changer calls
/// `broadcast()` after each change; a waiter passes a `ready` check of that state.
///
/// No wake-up is lost: a waiter takes the generation before it checks, and sleeps only while no
/// broadcast has come since, so a change between its check and its sleep wakes it at once.
/// Cancellation wakes a waiter too; it then returns and its caller looks at `Task.isCancelled`.
package final class AsyncCondition: Sendable {
  private struct State {
    var generation = 0
    var nextID = 0
    var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
  }

  private let state = Mutex(State())

  package init() {}

  /// Wakes every waiter; call it after changing the state they check.
  package func broadcast() {
    let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
      state.generation += 1
      defer { state.waiters = [:] }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume() }
  }

  /// Returns once `ready()` holds (checked again after every broadcast), or the task is cancelled.
  package func wait(until ready: () -> Bool) async {
    while !Task.isCancelled {
      let (generation, id) = state.withLock { state -> (Int, Int) in
        state.nextID += 1
        return (state.generation, state.nextID)
      }
      if ready() { return }
      await withTaskCancellationHandler {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
          let resumeNow = state.withLock { state -> Bool in
            if state.generation != generation || Task.isCancelled { return true }
            state.waiters[id] = continuation
            return false
          }
          if resumeNow { continuation.resume() }
        }
      } onCancel: {
        state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
      }
    }
  }
}
