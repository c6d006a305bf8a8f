import Synchronization
import Testing

@testable import MartRuntime

/// `withTimeout` must give up on an operation that ignores cancellation, not wait for it: that
/// wait is what kept a service SERVING (and unable to stop) with its database dropped under it.
@Suite struct TimeoutTests {
  @Test func anOperationThatIgnoresCancellationStillTimesOut() async throws {
    let finished = Mutex(false)
    let gate = Mutex<CheckedContinuation<Void, Never>?>(nil)
    await #expect(throws: TimeoutError.self) {
      try await withTimeout(.milliseconds(50)) {
        // Waits for the test's say-so, whatever cancellation says.
        await withCheckedContinuation { continuation in gate.withLock { $0 = continuation } }
        finished.withLock { $0 = true }
      }
    }
    // The timeout came first: the operation is still waiting.
    #expect(finished.withLock { $0 } == false)
    // Let it go.
    while true {
      if let continuation = gate.withLock({ $0 }) {
        continuation.resume()
        break
      }
      await Task.yield()
    }
  }

  @Test func aQuickOperationsValueAndErrorComeThrough() async throws {
    #expect(try await withTimeout(.seconds(60)) { 42 } == 42)
    struct Boom: Error {}
    await #expect(throws: Boom.self) { try await withTimeout(.seconds(60)) { throw Boom() } }
  }
}
