import Synchronization

/// Open while the service's database is reachable and migrated. Work that needs the schema (the
/// outbox relay, the event consumers) waits here instead of failing, and so never dead-letters
/// an event because the database was briefly away.
public final class ReadinessGate: Sendable {
  private struct State {
    var isOpen = false
    var nextID = 0
    var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
  }

  private let state = Mutex(State())

  public init() {}

  public var isOpen: Bool { state.withLock { $0.isOpen } }

  public func set(open: Bool) {
    let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
      state.isOpen = open
      guard open else { return [] }
      defer { state.waiters = [:] }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume() }
  }

  /// Returns once the gate is open, at once if it is; throws CancellationError if cancelled first.
  public func waitUntilOpen() async throws {
    let id = state.withLock { state -> Int in
      state.nextID += 1
      return state.nextID
    }
    await withTaskCancellationHandler {
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumeNow = state.withLock { state -> Bool in
          if state.isOpen || Task.isCancelled { return true }
          state.waiters[id] = continuation
          return false
        }
        if resumeNow { continuation.resume() }
      }
    } onCancel: {
      state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
    }
    try Task.checkCancellation()
  }
}
