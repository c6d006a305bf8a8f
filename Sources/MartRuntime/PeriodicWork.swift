import Logging
import ServiceLifecycle

/// The loop of a service's periodic background work (a sweeper, housekeeping): one round now,
/// then one every `interval`, until graceful shutdown or cancellation. A round that throws is
/// logged (`failure`, with the error redacted) and tried again at the next round, so that a
/// database away for a while or a schema not migrated yet stops nothing. The wait between rounds
/// ends at once on graceful shutdown; a round in progress is left to finish.
public func repeatUntilShutdown(
  every interval: Duration, logger: Logger, failure: Logger.Message, _ round: () async throws -> Void
) async {
  while !Task.isShuttingDownGracefully, !Task.isCancelled {
    do {
      try await round()
    } catch is CancellationError {
      return
    } catch {
      logger.warning(failure, metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
    }
    do {
      try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
    } catch {
      return
    }
  }
}
