import Synchronization
import Testing

@testable import Gateway

/// A clock the test moves by hand.
final class ManualClock: Sendable {
  private let value = Mutex(Duration.zero)

  var now: Duration { value.withLock { $0 } }

  func advance(_ seconds: Double) { value.withLock { $0 += .seconds(seconds) } }

  var function: @Sendable () -> Duration { { [self] in now } }
}

@Suite struct RateLimiterTests {
  let policy = RateLimitPolicy(name: "login", limit: 5, window: .seconds(60))

  @Test func quotaThenRefusalWithRetryAfter() {
    let clock = ManualClock()
    let limiter = RateLimiter(now: clock.function)
    for expected in (0..<5).reversed() {
      let decision = limiter.acquire(policy, key: "ip:1.2.3.4")
      #expect(decision.allowed)
      #expect(decision.remaining == expected)
    }
    let refused = limiter.acquire(policy, key: "ip:1.2.3.4")
    #expect(!refused.allowed)
    #expect(refused.remaining == 0)
    #expect(refused.retryAfterSeconds == 12, "one token per 12 s")
    #expect(refused.resetSeconds == 60)
    #expect(refused.rateLimitHeader == #""login";r=0;t=60"#)
    #expect(policy.policyHeader == #""login";q=5;w=60"#)
    // Another caller has its own bucket.
    #expect(limiter.acquire(policy, key: "ip:5.6.7.8").allowed)
  }

  @Test func bucketsRefillWithTime() {
    let clock = ManualClock()
    let limiter = RateLimiter(now: clock.function)
    for _ in 0..<5 { _ = limiter.acquire(policy, key: "k") }
    #expect(!limiter.acquire(policy, key: "k").allowed)
    clock.advance(11)
    let stillRefused = limiter.acquire(policy, key: "k")
    #expect(!stillRefused.allowed)
    #expect(stillRefused.retryAfterSeconds == 1)
    clock.advance(1)
    let allowed = limiter.acquire(policy, key: "k")
    #expect(allowed.allowed)
    #expect(allowed.remaining == 0)
    clock.advance(600)
    #expect(limiter.acquire(policy, key: "k").remaining == 4, "refilled to the limit, never beyond")
  }

  @Test func policiesAreSeparateBuckets() {
    let clock = ManualClock()
    let limiter = RateLimiter(now: clock.function)
    let reads = RateLimitPolicy(name: "default", limit: 100, window: .seconds(60))
    for _ in 0..<5 { _ = limiter.acquire(policy, key: "k") }
    #expect(!limiter.acquire(policy, key: "k").allowed)
    #expect(limiter.acquire(reads, key: "k").allowed)
  }

  @Test func memoryIsBoundedUnderAFloodOfAddresses() {
    let clock = ManualClock()
    let limiter = RateLimiter(maximumBuckets: 1000, now: clock.function)
    for index in 0..<10_000 {
      _ = limiter.acquire(policy, key: "ip:10.0.\(index / 256).\(index % 256)")
    }
    #expect(limiter.bucketCount == 1000, "the hard cap holds")
    // The most recent callers are kept: one of them is still at 4.
    #expect(limiter.acquire(policy, key: "ip:10.0.39.15").remaining == 3)
  }

  @Test func idleFullBucketsAreDroppedFirst() {
    let clock = ManualClock()
    let limiter = RateLimiter(maximumBuckets: 1000, now: clock.function)
    for index in 0..<100 { _ = limiter.acquire(policy, key: "ip:\(index)") }
    #expect(limiter.bucketCount == 100)
    clock.advance(61)
    // Each new caller clears a few refilled buckets; soon only the new ones are left.
    for index in 0..<40 { _ = limiter.acquire(policy, key: "new:\(index)") }
    #expect(limiter.bucketCount == 40)
  }

  @Test func anExhaustedBucketSurvivesTheIdleSweep() {
    let clock = ManualClock()
    let limiter = RateLimiter(maximumBuckets: 1000, now: clock.function)
    for _ in 0..<5 { _ = limiter.acquire(policy, key: "attacker") }
    clock.advance(1)
    for index in 0..<50 { _ = limiter.acquire(policy, key: "other:\(index)") }
    #expect(!limiter.acquire(policy, key: "attacker").allowed, "not forgotten while still empty")
  }
}
