import Synchronization

/// Admission control: at most `maximumInFlight` pieces of work at once. Past that, at most
/// `maximumQueued` more wait for a slot, first come first served, each for at most `maximumWait`;
/// anything beyond is refused at once. So an overload costs a quick refusal (503 with Retry-After
/// at the gateway) instead of a queue that grows until every request misses its deadline, and the
/// work that is admitted keeps its latency. Memory stays bounded by the two limits.
public final class AdmissionLimiter: Sendable {
  public struct Limits: Sendable, Equatable {
    public var maximumInFlight: Int
    public var maximumQueued: Int
    public var maximumWait: Duration

    public init(maximumInFlight: Int, maximumQueued: Int, maximumWait: Duration) {
      self.maximumInFlight = max(1, maximumInFlight)
      self.maximumQueued = max(0, maximumQueued)
      self.maximumWait = maximumWait
    }
  }

  /// Refused: the queue was full, or the wait for a slot ran out.
  public struct Refused: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable { case queueFull, waitExpired }
    public var reason: Reason
    /// A hint for Retry-After: the longest a queued request may wait, a second at least.
    public var retryAfter: Duration

    public init(reason: Reason, retryAfter: Duration) {
      self.reason = reason
      self.retryAfter = retryAfter
    }

    public var description: String {
      switch reason {
      case .queueFull: "over capacity: the admission queue is full"
      case .waitExpired: "over capacity: no slot came free in time"
      }
    }
  }

  private struct Waiter {
    var id: UInt64
    var continuation: CheckedContinuation<Void, any Error>
  }

  private struct State {
    var inFlight = 0
    var queue: [Waiter] = []
    var nextID: UInt64 = 0
    var refused = 0
    /// Waiters given an id that have not been handed a slot or refused yet.
    var unsettled: Set<UInt64> = []
    /// Of those, the ones whose wait ran out or whose task was cancelled before they joined the
    /// queue: they must not join it.
    var abandoned: [UInt64: any Error] = [:]
  }

  public let limits: Limits
  private let state = Mutex(State())

  public init(_ limits: Limits) {
    self.limits = limits
  }

  /// Work running now, requests waiting for a slot, and requests refused so far.
  public var snapshot: (inFlight: Int, queued: Int, refused: Int) {
    state.withLock { ($0.inFlight, $0.queue.count, $0.refused) }
  }

  /// Runs `body` once admitted; `Refused` when over capacity. The slot is held until `body`
  /// returns or throws.
  public func withAdmission<T>(_ body: () async throws -> T) async throws -> T {
    try await acquire()
    defer { release() }
    return try await body()
  }

  private enum Entry {
    case admitted
    case queued(UInt64)
    case refused(Refused)
  }

  private var retryAfter: Duration { max(.seconds(1), limits.maximumWait) }

  func acquire() async throws {
    let entry = state.withLock { state -> Entry in
      if state.inFlight < limits.maximumInFlight {
        state.inFlight += 1
        return .admitted
      }
      guard state.queue.count < limits.maximumQueued else {
        state.refused += 1
        return .refused(Refused(reason: .queueFull, retryAfter: retryAfter))
      }
      state.nextID += 1
      state.unsettled.insert(state.nextID)
      return .queued(state.nextID)
    }
    switch entry {
    case .admitted: return
    case .refused(let refusal): throw refusal
    case .queued(let id): try await wait(id)
    }
  }

  /// Waits in the queue as `id` until `release` hands over a slot, the wait runs out, or the task
  /// is cancelled (both of which take the waiter out of the queue).
  private func wait(_ id: UInt64) async throws {
    let timeout = Task { [limits] in
      try await Task.sleep(for: limits.maximumWait)
      self.abandon(id, with: Refused(reason: .waitExpired, retryAfter: self.retryAfter))
    }
    defer { timeout.cancel() }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let outcome = state.withLock { state -> Result<Bool, any Error> in
          if let error = state.abandoned.removeValue(forKey: id) {
            state.unsettled.remove(id)
            return .failure(error)
          }
          // A slot may have come free between the first look and now.
          if state.inFlight < limits.maximumInFlight {
            state.inFlight += 1
            state.unsettled.remove(id)
            return .success(true)
          }
          state.queue.append(Waiter(id: id, continuation: continuation))
          return .success(false)
        }
        switch outcome {
        case .success(true): continuation.resume()
        case .success(false): break
        case .failure(let error): continuation.resume(throwing: error)
        }
      }
    } onCancel: {
      abandon(id, with: CancellationError())
    }
  }

  /// Takes waiter `id` out of the queue and resumes it with `error`; if it has not joined the
  /// queue yet, it fails as it tries to. Nothing when it was already handed a slot.
  private func abandon(_ id: UInt64, with error: any Error) {
    let waiter = state.withLock { state -> Waiter? in
      guard state.unsettled.contains(id) else { return nil }
      if error is Refused { state.refused += 1 }
      if let index = state.queue.firstIndex(where: { $0.id == id }) {
        state.unsettled.remove(id)
        return state.queue.remove(at: index)
      }
      state.abandoned[id] = error
      return nil
    }
    waiter?.continuation.resume(throwing: error)
  }

  /// Gives the slot to the longest waiting request, or frees it.
  func release() {
    let next = state.withLock { state -> Waiter? in
      guard !state.queue.isEmpty else {
        state.inFlight -= 1
        return nil
      }
      let next = state.queue.removeFirst()
      state.unsettled.remove(next.id)
      return next
    }
    next?.continuation.resume()
  }
}
