import Synchronization

/// Admission control: at most `maximumInFlight` pieces of work at once. Past that, at most
/// `maximumQueued` more wait for a slot, first come first served; anything beyond is refused at
/// once. So an overload costs a quick refusal (503 with Retry-After at the gateway) instead of a
/// queue that grows until every request misses its deadline. Memory stays bounded by the two
/// limits.
///
/// How long a request may wait follows CoDel, as Facebook's servers use it ("Fail at scale",
/// ACM Queue 2015): a queue that has been empty within the last `sustainedAfter` (100 ms) is
/// absorbing a burst, and a request waits up to `maximumWait`; a queue that has not is a standing
/// one, the sign of sustained overload, and a request waits only `maximumWaitUnderLoad`. Under
/// sustained overload the queue then drains to almost nothing: what is admitted keeps its
/// latency instead of each request first spending `maximumWait` in line.
///
/// Work marked `priority` (the gateway's `priorityOperations`: what finishes an order already
/// taken, such as paying for it or watching it) may use every slot and is served first from the
/// queue; other work may use only three quarters of the slots. So when the shop is saturated by
/// new visitors, those already in the middle of an order still get through: shedding new work
/// first is what Google's criticality and Stripe's load shedders do.
public final class AdmissionLimiter: Sendable {
  public struct Limits: Sendable, Equatable {
    public var maximumInFlight: Int
    public var maximumQueued: Int
    public var maximumWait: Duration
    /// The wait while the queue has not been empty for `sustainedAfter`.
    public var maximumWaitUnderLoad: Duration

    /// A queue not empty for this long is a standing queue (CoDel's interval).
    public static let sustainedAfter = Duration.milliseconds(100)

    /// The slots work without priority may use: all but a quarter (at least one).
    public var ordinaryInFlight: Int { max(1, maximumInFlight - maximumInFlight / 4) }

    func limit(priority: Bool) -> Int { priority ? maximumInFlight : ordinaryInFlight }

    public init(
      maximumInFlight: Int, maximumQueued: Int, maximumWait: Duration,
      maximumWaitUnderLoad: Duration = .milliseconds(10)
    ) {
      self.maximumInFlight = max(1, maximumInFlight)
      self.maximumQueued = max(0, maximumQueued)
      self.maximumWait = maximumWait
      self.maximumWaitUnderLoad = min(maximumWait, maximumWaitUnderLoad)
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

  /// Waiters with priority, and the others; the former are served first.
  private struct Queues {
    var priority: [Waiter] = []
    var ordinary: [Waiter] = []

    var count: Int { priority.count + ordinary.count }
    var isEmpty: Bool { priority.isEmpty && ordinary.isEmpty }

    mutating func remove(_ id: UInt64) -> Waiter? {
      if let index = priority.firstIndex(where: { $0.id == id }) { return priority.remove(at: index) }
      if let index = ordinary.firstIndex(where: { $0.id == id }) { return ordinary.remove(at: index) }
      return nil
    }
  }

  private struct State {
    var inFlight = 0
    var queue = Queues()
    var nextID: UInt64 = 0
    var refused = 0
    /// When the queue was last seen empty (CoDel: a queue empty within `sustainedAfter` is a
    /// burst being absorbed, not a standing queue).
    var lastEmpty = ContinuousClock.now
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
  /// returns or throws. `priority` work may use every slot and is served first from the queue.
  public func withAdmission<T>(priority: Bool = false, _ body: () async throws -> T) async throws -> T {
    try await acquire(priority: priority)
    defer { release() }
    return try await body()
  }

  private enum Entry {
    case admitted
    case queued(UInt64, wait: Duration)
    case refused(Refused)
  }

  private var retryAfter: Duration { max(.seconds(1), limits.maximumWait) }

  func acquire(priority: Bool) async throws {
    let entry = state.withLock { state -> Entry in
      if state.inFlight < limits.limit(priority: priority) {
        state.inFlight += 1
        return .admitted
      }
      guard state.queue.count < limits.maximumQueued else {
        state.refused += 1
        return .refused(Refused(reason: .queueFull, retryAfter: retryAfter))
      }
      let now = ContinuousClock.now
      if state.queue.isEmpty { state.lastEmpty = now }
      state.nextID += 1
      state.unsettled.insert(state.nextID)
      let standing = now - state.lastEmpty >= Limits.sustainedAfter
      return .queued(state.nextID, wait: standing ? limits.maximumWaitUnderLoad : limits.maximumWait)
    }
    switch entry {
    case .admitted: return
    case .refused(let refusal): throw refusal
    case .queued(let id, let wait): try await self.wait(id, priority: priority, for: wait)
    }
  }

  /// Waits in the queue as `id` until `release` hands over a slot, the wait runs out, or the task
  /// is cancelled (both of which take the waiter out of the queue).
  private func wait(_ id: UInt64, priority: Bool, for duration: Duration) async throws {
    let timeout = Task {
      try await Task.sleep(for: duration)
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
          if state.inFlight < limits.limit(priority: priority) {
            state.inFlight += 1
            state.unsettled.remove(id)
            return .success(true)
          }
          let waiter = Waiter(id: id, continuation: continuation)
          if priority { state.queue.priority.append(waiter) } else { state.queue.ordinary.append(waiter) }
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
      if let waiter = state.queue.remove(id) {
        state.unsettled.remove(id)
        if state.queue.isEmpty { state.lastEmpty = .now }
        return waiter
      }
      state.abandoned[id] = error
      return nil
    }
    waiter?.continuation.resume(throwing: error)
  }

  /// Gives the slot to the longest waiting request with priority, else to the longest waiting
  /// other one if it may have it (fewer than `ordinaryInFlight` others would hold slots), else
  /// frees it.
  func release() {
    let next = state.withLock { state -> Waiter? in
      let next: Waiter
      if !state.queue.priority.isEmpty {
        next = state.queue.priority.removeFirst()
      } else if !state.queue.ordinary.isEmpty, state.inFlight - 1 < limits.ordinaryInFlight {
        next = state.queue.ordinary.removeFirst()
      } else {
        state.inFlight -= 1
        return nil
      }
      state.unsettled.remove(next.id)
      if state.queue.isEmpty { state.lastEmpty = .now }
      return next
    }
    next?.continuation.resume()
  }
}
