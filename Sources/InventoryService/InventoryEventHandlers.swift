import Foundation
import Logging
import MartProto
import MartRuntime

/// The events the inventory service consumes.
enum InventoryEventHandlers {
  /// The catalogue: a stock record at zero for every new product. The runtime applies each event
  /// inside its inbox transaction, so a redelivered ProductCreated has no second effect; the
  /// insert is also a no-op when the row exists (e.g. the same product announced twice).
  static func catalog(store: InventoryStore) -> EventConsumerDefinition {
    var handlers = EventHandlers()
    handlers.on(Mart_Product_V1_ProductCreated.self) { received, connection in
      let raw = received.event.productID.isEmpty ? received.event.product.id : received.event.productID
      guard let productID = UUID(uuidString: raw) else {
        throw InvalidEvent("ProductCreated \(received.envelope.id) has no valid product id: \(raw)")
      }
      try await store.createStock(productID: productID, on: connection)
    }
    return EventConsumerDefinition(name: "catalog", topics: [.products], handlers: handlers)
  }

}
