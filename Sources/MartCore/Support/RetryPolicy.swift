/// How often and how patiently a failing handler is retried before its event is dead-lettered.
public struct RetryPolicy: Sendable {
  public var maximumAttempts: Int
  public var initialBackoff: Duration
  public var maximumBackoff: Duration

  public init(
    maximumAttempts: Int = 5, initialBackoff: Duration = .milliseconds(200), maximumBackoff: Duration = .seconds(10)
  ) {
    self.maximumAttempts = max(1, maximumAttempts)
    self.initialBackoff = initialBackoff
    self.maximumBackoff = maximumBackoff
  }

  package func backoff(afterAttempt attempt: Int) -> Duration {
    min(initialBackoff * (1 << min(attempt - 1, 16)), maximumBackoff)
  }
}
