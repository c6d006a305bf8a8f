import MartRuntime
import Synchronization
import Testing

/// The admission limiter on its own: slots, a bounded first-come-first-served queue with a
/// bounded wait, and nothing left behind by refused or cancelled waiters.
@Suite struct AdmissionLimiterTests {
  @Test func aFreedSlotGoesToTheLongestWaitingAndAFullQueueIsRefusedAtOnce() async throws {
    // The same wait under load: this test is about order, not about a standing queue.
    let limiter = AdmissionLimiter(
      .init(maximumInFlight: 1, maximumQueued: 2, maximumWait: .seconds(30), maximumWaitUnderLoad: .seconds(30)))
    let order = Shared<[Int]>([])
    let (release, releaser) = AsyncStream.makeStream(of: Void.self)
    try await withThrowingTaskGroup(of: Void.self) { group in
      // The first holds the slot until told to let go.
      group.addTask {
        try await limiter.withAdmission {
          for await _ in release { break }
          order.withLock { $0.append(0) }
        }
      }
      try await waitUntil { limiter.snapshot.inFlight == 1 }
      for waiter in 1...2 {
        group.addTask { try await limiter.withAdmission { order.withLock { $0.append(waiter) } } }
        try await waitUntil { limiter.snapshot.queued == waiter }
      }
      // A fourth finds the queue full: refused at once, not after the wait.
      await #expect(throws: AdmissionLimiter.Refused(reason: .queueFull, retryAfter: .seconds(30))) {
        try await limiter.withAdmission {}
      }
      releaser.yield()
      try await group.waitForAll()
    }
    #expect(order.withLock { $0 } == [0, 1, 2])
    #expect(limiter.snapshot.inFlight == 0)
    #expect(limiter.snapshot.queued == 0)
    #expect(limiter.snapshot.refused == 1)
  }

  @Test func aWaiterGivesUpAfterTheWaitAndACancelledOneLeavesTheQueue() async throws {
    let limiter = AdmissionLimiter(.init(maximumInFlight: 1, maximumQueued: 4, maximumWait: .milliseconds(100)))
    let (release, releaser) = AsyncStream.makeStream(of: Void.self)
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await limiter.withAdmission { for await _ in release { break } } }
      try await waitUntil { limiter.snapshot.inFlight == 1 }
      await #expect(throws: AdmissionLimiter.Refused(reason: .waitExpired, retryAfter: .seconds(1))) {
        try await limiter.withAdmission {}
      }
      #expect(limiter.snapshot.queued == 0)

      let patient = AdmissionLimiter(
        .init(maximumInFlight: 1, maximumQueued: 4, maximumWait: .seconds(30), maximumWaitUnderLoad: .seconds(30)))
      try await patient.withAdmission {
        let waiter = Task { try await patient.withAdmission {} }
        try await waitUntil { patient.snapshot.queued == 1 }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(patient.snapshot.queued == 0)
      }
      #expect(patient.snapshot.inFlight == 0)
      releaser.yield()
      try await group.waitForAll()
    }
    #expect(limiter.snapshot.inFlight == 0)
  }

  /// CoDel: a request that finds the queue empty (a burst) may wait the whole `maximumWait`; one
  /// that joins a queue standing for over 100 ms (sustained overload) waits only
  /// `maximumWaitUnderLoad`, and is refused while the first still waits.
  @Test func aStandingQueueGivesLaterRequestsOnlyTheShortWait() async throws {
    let limiter = AdmissionLimiter(
      .init(maximumInFlight: 1, maximumQueued: 4, maximumWait: .seconds(20), maximumWaitUnderLoad: .milliseconds(20)))
    let (release, releaser) = AsyncStream.makeStream(of: Void.self)
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await limiter.withAdmission { for await _ in release { break } } }
      try await waitUntil { limiter.snapshot.inFlight == 1 }
      group.addTask { try await limiter.withAdmission {} }
      try await waitUntil { limiter.snapshot.queued == 1 }
      try await Task.sleep(for: AdmissionLimiter.Limits.sustainedAfter + .milliseconds(50))
      await #expect(throws: AdmissionLimiter.Refused(reason: .waitExpired, retryAfter: .seconds(20))) {
        try await limiter.withAdmission {}
      }
      // The first waiter, with its long wait, is still in line, and gets the slot once it is free.
      #expect(limiter.snapshot.queued == 1)
      releaser.yield()
      try await group.waitForAll()
    }
    #expect(limiter.snapshot.inFlight == 0)
    #expect(limiter.snapshot.refused == 1)
  }

  /// Priority work may take the last quarter of the slots, which other work may not, and a
  /// freed slot goes to a waiter with priority before one without, whoever came first.
  @Test func priorityWorkUsesTheReservedSlotsAndIsServedFirst() async throws {
    let limiter = AdmissionLimiter(
      .init(maximumInFlight: 4, maximumQueued: 4, maximumWait: .seconds(20), maximumWaitUnderLoad: .seconds(20)))
    #expect(limiter.limits.ordinaryInFlight == 3)
    let order = Shared<[String]>([])
    // One release signal per holder (an AsyncStream has a single consumer).
    let holders = (0..<4).map { _ in AsyncStream.makeStream(of: Void.self) }
    try await withThrowingTaskGroup(of: Void.self) { group in
      // Three ordinary holders fill what ordinary work may use.
      for holder in holders.prefix(3) {
        group.addTask { try await limiter.withAdmission { for await _ in holder.stream { break } } }
      }
      try await waitUntil { limiter.snapshot.inFlight == 3 }
      // An ordinary one now waits; a priority one takes the fourth slot at once.
      group.addTask { try await limiter.withAdmission { order.withLock { $0.append("ordinary") } } }
      try await waitUntil { limiter.snapshot.queued == 1 }
      try await limiter.withAdmission(priority: true) { order.withLock { $0.append("priority at once") } }
      #expect(limiter.snapshot.inFlight == 3)
      // With every slot held, a priority waiter that came later is served first.
      group.addTask { try await limiter.withAdmission(priority: true) { for await _ in holders[3].stream { break } } }
      try await waitUntil { limiter.snapshot.inFlight == 4 }
      group.addTask { try await limiter.withAdmission(priority: true) { order.withLock { $0.append("priority") } } }
      try await waitUntil { limiter.snapshot.queued == 2 }
      holders[0].continuation.yield()  // its slot goes to the priority waiter
      try await waitUntil { order.withLock { $0.count } == 2 }
      #expect(order.withLock { $0 } == ["priority at once", "priority"])
      #expect(limiter.snapshot.queued == 1)
      for holder in holders.dropFirst() { holder.continuation.yield() }  // then the ordinary one runs
      try await group.waitForAll()
    }
    #expect(order.withLock { $0 } == ["priority at once", "priority", "ordinary"])
    #expect(limiter.snapshot.inFlight == 0)
  }

  /// Many more callers than slots: at most the limit run at once, and every one either ran or was
  /// refused; no slot is lost.
  @Test func underContentionTheLimitHoldsAndNoSlotLeaks() async throws {
    let limiter = AdmissionLimiter(.init(maximumInFlight: 4, maximumQueued: 8, maximumWait: .milliseconds(50)))
    let running = Shared((now: 0, most: 0))
    let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
      for _ in 0..<200 {
        group.addTask {
          do {
            try await limiter.withAdmission {
              running.withLock {
                $0.now += 1
                $0.most = max($0.most, $0.now)
              }
              try await Task.sleep(for: .milliseconds(2))
              running.withLock { $0.now -= 1 }
            }
            return true
          } catch is AdmissionLimiter.Refused {
            return false
          }
        }
      }
      var results: [Bool] = []
      for try await result in group { results.append(result) }
      return results
    }
    #expect(outcomes.count == 200)
    #expect(running.withLock { $0.most } <= 4)
    #expect(limiter.snapshot.inFlight == 0)
    #expect(limiter.snapshot.queued == 0)
    #expect(limiter.snapshot.refused == outcomes.filter { !$0 }.count)
  }

  /// A value tasks share (a Mutex itself cannot be captured by the tasks' closures).
  final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
  }

  private func waitUntil(_ condition: () -> Bool) async throws {
    while !condition() { try await Task.sleep(for: .milliseconds(1)) }
  }
}
