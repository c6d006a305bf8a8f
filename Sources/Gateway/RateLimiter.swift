import Synchronization

// Token-bucket rate limiting at the edge, per route policy and per caller (the verified token
// subject when signed in, else the client address). The answer carries the IETF httpapi
// RateLimit headers (draft-ietf-httpapi-ratelimit-headers-09) so that clients can pace
// themselves. Memory stays bounded under a flood of distinct addresses: buckets that have refilled
// (idle) are dropped first, and past a hard cap the least recently used one goes.

/// A quota: `limit` calls per `window`, refilled continuously.
public struct RateLimitPolicy: Sendable, Equatable {
  /// The policy's name in the RateLimit headers (an sf-string).
  public var name: String
  public var limit: Int
  public var window: Duration

  public init(name: String, limit: Int, window: Duration) {
    self.name = name
    self.limit = limit
    self.window = window
  }

  /// Whole seconds of the window, at least 1 (the headers speak in seconds).
  var windowSeconds: Int { max(1, Int((window.secondsValue).rounded(.up))) }

  /// `RateLimit-Policy: "default";q=100;w=60`.
  var policyHeader: String { "\"\(name)\";q=\(limit);w=\(windowSeconds)" }
}

/// Keeps one token bucket per (policy, caller).
final class RateLimiter: Sendable {
  /// The outcome of one call.
  struct Decision: Sendable, Equatable {
    var allowed: Bool
    var policy: RateLimitPolicy
    /// Whole tokens left after this call.
    var remaining: Int
    /// Seconds until the bucket is full again.
    var resetSeconds: Int
    /// For a refused call: seconds until one token is back.
    var retryAfterSeconds: Int?

    /// `RateLimit: "default";r=42;t=7`.
    var rateLimitHeader: String { "\"\(policy.name)\";r=\(remaining);t=\(resetSeconds)" }
  }

  private struct Bucket {
    var key: String
    var tokens: Double
    var updated: Double
    var capacity: Double
    /// Tokens per second.
    var rate: Double
    var newer: Int?
    var older: Int?

    func tokens(at now: Double) -> Double { min(capacity, tokens + max(0, now - updated) * rate) }
  }

  /// Buckets in a slab, linked from most (`newest`) to least (`oldest`) recently used.
  private struct State {
    var buckets: [Bucket] = []
    var free: [Int] = []
    var index: [String: Int] = [:]
    var newest: Int?
    var oldest: Int?

    mutating func unlink(_ slot: Int) {
      let bucket = buckets[slot]
      if let newer = bucket.newer { buckets[newer].older = bucket.older } else { newest = bucket.older }
      if let older = bucket.older { buckets[older].newer = bucket.newer } else { oldest = bucket.newer }
      buckets[slot].newer = nil
      buckets[slot].older = nil
    }

    mutating func pushNewest(_ slot: Int) {
      buckets[slot].older = newest
      buckets[slot].newer = nil
      if let newest { buckets[newest].newer = slot }
      newest = slot
      if oldest == nil { oldest = slot }
    }

    mutating func remove(_ slot: Int) {
      unlink(slot)
      index[buckets[slot].key] = nil
      free.append(slot)
    }
  }

  let maximumBuckets: Int
  private let now: @Sendable () -> Duration
  private let state = Mutex(State())

  /// `now` is a monotonic clock: the time since any fixed origin. Tests pass one they move by
  /// hand, so that a refill is a step of the clock, not a wait.
  init(maximumBuckets: Int = 100_000, now: @escaping @Sendable () -> Duration = RateLimiter.monotonicClock()) {
    self.maximumBuckets = max(1, maximumBuckets)
    self.now = now
  }

  /// The time since this call, by `ContinuousClock`.
  static func monotonicClock() -> @Sendable () -> Duration {
    let origin = ContinuousClock.now
    return { ContinuousClock.now - origin }
  }

  var bucketCount: Int { state.withLock { $0.index.count } }

  /// Takes one token from the caller's bucket of this policy, if there is one.
  func acquire(_ policy: RateLimitPolicy, key caller: String) -> Decision {
    let now = self.now().secondsValue
    let key = "\(policy.name)\u{0}\(caller)"
    let capacity = Double(max(1, policy.limit))
    let rate = capacity / max(policy.window.secondsValue, 0.001)
    return state.withLock { state in
      let slot: Int
      if let existing = state.index[key] {
        slot = existing
        state.buckets[slot].tokens = state.buckets[slot].tokens(at: now)
        state.buckets[slot].updated = now
        state.unlink(slot)
      } else {
        evictIdle(&state, now: now)
        while state.index.count >= maximumBuckets, let oldest = state.oldest { state.remove(oldest) }
        let bucket = Bucket(key: key, tokens: capacity, updated: now, capacity: capacity, rate: rate)
        if let reused = state.free.popLast() {
          slot = reused
          state.buckets[slot] = bucket
        } else {
          slot = state.buckets.count
          state.buckets.append(bucket)
        }
        state.index[key] = slot
      }
      state.pushNewest(slot)
      var bucket = state.buckets[slot]
      let allowed = bucket.tokens >= 1
      if allowed { bucket.tokens -= 1 }
      state.buckets[slot] = bucket
      let reset = Self.wholeSeconds((bucket.capacity - bucket.tokens) / bucket.rate)
      return Decision(
        allowed: allowed, policy: policy, remaining: Int((bucket.tokens + 1e-9).rounded(.down)),
        resetSeconds: max(0, reset),
        retryAfterSeconds: allowed ? nil : max(1, Self.wholeSeconds((1 - bucket.tokens) / bucket.rate)))
    }
  }

  /// Seconds rounded up, forgiving the float error of refills (11 s at 5/min is 0.9166… tokens).
  private static func wholeSeconds(_ seconds: Double) -> Int {
    Int((seconds - 1e-6).rounded(.up))
  }

  /// Drops buckets, least recently used first, that are full again: they hold nothing a new
  /// bucket would not. A few per call keep the work per call bounded.
  private func evictIdle(_ state: inout State, now: Double) {
    var budget = 8
    while budget > 0, let oldest = state.oldest, state.buckets[oldest].tokens(at: now) >= state.buckets[oldest].capacity
    {
      state.remove(oldest)
      budget -= 1
    }
  }
}

extension Duration {
  /// The duration in seconds, as a Double.
  var secondsValue: Double {
    let parts = components
    return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
  }
}
