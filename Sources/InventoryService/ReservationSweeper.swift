import Foundation
import Logging
import MartRuntime
import PostgresNIO
import ServiceLifecycle

/// Releases reservations whose time is up (the order service never committed nor released them),
/// publishing StockReleased with reason "expired", as ReleaseReservation would.
///
/// Safe with several instances: each reservation is released in a transaction of its own that
/// locks it (skipping one another instance holds) and checks again that it is active and expired.
/// Errors (the database away, the schema not migrated yet) are logged and retried next round.
public struct ReservationSweeper: Service {
  let store: InventoryStore
  let settings: InventorySettings
  let logger: Logger

  init(store: InventoryStore, settings: InventorySettings, logger: Logger) {
    self.store = store
    self.settings = settings
    var logger = logger
    logger[metadataKey: "component"] = "reservation-sweeper"
    self.logger = logger
  }

  public func run() async throws {
    await repeatUntilShutdown(
      every: settings.sweepInterval, logger: logger,
      failure: "sweeping expired reservations failed; retrying next round"
    ) { _ = try await sweep() }
  }

  /// Releases every reservation that is expired now; returns how many this call released.
  @discardableResult
  public func sweep() async throws -> Int {
    var released = 0
    while true {
      try Task.checkCancellation()
      let expired = try await store.expiredReservations(limit: settings.sweepBatchSize)
      var releasedThisBatch = 0
      for orderID in expired where try await store.releaseIfExpired(orderID: orderID) {
        releasedThisBatch += 1
        logger.info("released an expired reservation", metadata: ["order_id": "\(orderID.lowercasedString)"])
      }
      released += releasedThisBatch
      // A short batch was the last one; a batch of nothing but skipped ones (another sweeper
      // holds them) ends the round too, rather than spinning.
      if expired.count < settings.sweepBatchSize || releasedThisBatch == 0 { return released }
    }
  }
}
