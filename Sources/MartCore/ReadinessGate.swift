import Synchronization

/// Open while the service's database is reachable and migrated. Work that needs the schema (the
/// outbox relay, the event consumers) waits here instead of failing, and so never dead-letters
/// an event because the database was briefly away.
public final class ReadinessGate: Sendable {
  private let open = Atomic<Bool>(false)
  private let changed = AsyncCondition()

  public init() {}

  public var isOpen: Bool { open.load(ordering: .acquiring) }

  public func set(open isOpen: Bool) {
    open.store(isOpen, ordering: .releasing)
    changed.broadcast()
  }

  /// Returns once the gate is open, at once if it is; throws CancellationError if cancelled first.
  public func waitUntilOpen() async throws {
    await changed.wait { isOpen }
    try Task.checkCancellation()
  }
}
