import MartCore
import Synchronization

/// A counting semaphore for tasks: `acquire()` waits while `limit` permits are out.
final class AsyncLimiter: Sendable {
  private struct State {
    var available: Int
    var nextID = 0
    var waiters: [(id: Int, continuation: CheckedContinuation<Void, any Error>)] = []
  }

  private let state: Mutex<State>

  init(limit: Int) {
    state = Mutex(State(available: max(1, limit)))
  }

  func acquire() async throws {
    let id = state.withLock { state -> Int in
      state.nextID += 1
      return state.nextID
    }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let outcome = state.withLock { state -> Bool? in
          if Task.isCancelled { return nil }
          if state.available > 0 {
            state.available -= 1
            return true
          }
          state.waiters.append((id, continuation))
          return false
        }
        switch outcome {
        case .none: continuation.resume(throwing: CancellationError())
        case .some(true): continuation.resume()
        case .some(false): break
        }
      }
    } onCancel: {
      let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
        guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
        return state.waiters.remove(at: index).continuation
      }
      waiter?.resume(throwing: CancellationError())
    }
  }

  func release() {
    let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
      guard !state.waiters.isEmpty else {
        state.available += 1
        return nil
      }
      // The permit passes straight to the next waiter.
      return state.waiters.removeFirst().continuation
    }
    waiter?.resume()
  }
}

/// The records of one partition waiting for their lane, taken in batches.
final class LaneQueue: Sendable {
  private struct State {
    var records: [ReceivedRecord] = []
    var finished = false
  }

  private let state = Mutex(State())
  private let changed = AsyncCondition()

  func append(_ record: ReceivedRecord) {
    state.withLock { $0.records.append(record) }
    changed.broadcast()
  }

  /// No more records will come; the lane ends once it has taken the rest.
  func finish() {
    state.withLock { $0.finished = true }
    changed.broadcast()
  }

  /// Up to `limit` records, waiting while there are none; empty once finished.
  /// Only the lane's own task takes.
  func takeBatch(upTo limit: Int) async throws -> [ReceivedRecord] {
    await changed.wait { state.withLock { !$0.records.isEmpty || $0.finished } }
    try Task.checkCancellation()
    return state.withLock { state in
      let batch = Array(state.records.prefix(limit))
      state.records.removeFirst(batch.count)
      return batch
    }
  }
}
