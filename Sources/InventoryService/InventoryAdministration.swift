import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// Operations on the inventory database for the `mart` command (no gRPC, no token): the same
/// ledger as AdjustStock, so every unit added here is an audited movement with its actor.
public enum InventoryAdministration {
  /// Receives `quantity` units of a product once: a RESTOCK movement whose request id is derived
  /// from the product and `purpose`, so that a second run finds the first movement and adds
  /// nothing. Makes the product's stock row if ProductCreated has not reached this service yet
  /// (the consumer's insert of that row does nothing when it arrives). True when stock was added.
  @discardableResult
  public static func receiveOnce(
    productID: UUID, quantity: Int64, purpose: String, actorUserID: UUID, note: String,
    database: PostgresClient, logger: Logger
  ) async throws -> Bool {
    let store = InventoryStore(database: database, outbox: Outbox(service: .inventory), logger: logger)
    let requestID = UUID(deriving: "\(purpose):\(productID.lowercasedString)")
    let existing = try await database.query(
      "SELECT 1 FROM stock_movements WHERE request_id = \(requestID)", logger: logger)
    for try await _ in existing { return false }
    try await database.withConnection { connection in
      try await store.createStock(productID: productID, on: connection)
    }
    _ = try await store.adjust(
      Adjustment(
        productID: productID, delta: quantity, reason: .restock, note: note, threshold: nil,
        actorUserID: actorUserID, requestID: requestID))
    return true
  }
}
