import MartProto
import SwiftProtobuf

/// A domain event of the mart: a protobuf message whose field 1 is `mart.common.v1.EventMetadata`.
public protocol DomainEvent: SwiftProtobuf.Message, Sendable {
  var metadata: Mart_Common_V1_EventMetadata { get set }
}

/// One topic per domain, named here and nowhere else. Every event of a proto package goes to its
/// domain's topic; failed deliveries go to `<topic>.dlq`.
public enum EventTopic: String, CaseIterable, Sendable {
  case users = "mart.users.v1"
  case products = "mart.products.v1"
  case inventory = "mart.inventory.v1"
  case orders = "mart.orders.v1"
  case payments = "mart.payments.v1"
  case notifications = "mart.notifications.v1"

  public var name: String { rawValue }
  public var deadLetterName: String { rawValue + ".dlq" }

  /// Every topic and its dead-letter topic, for creating them at start-up.
  public static var allNames: [String] { allCases.flatMap { [$0.name, $0.deadLetterName] } }

  /// The topic of an event type, by its proto package (`mart.order.v1.OrderPlaced` → `mart.orders.v1`).
  public static func of(eventType: String) -> EventTopic? {
    let parts = eventType.split(separator: ".")
    guard parts.count == 4, parts[0] == "mart", parts[2] == "v1" else { return nil }
    switch parts[1] {
    case "user": return .users
    case "product": return .products
    case "inventory": return .inventory
    case "order": return .orders
    case "payment": return .payments
    case "notification": return .notifications
    default: return nil
    }
  }
}

/// Every domain event type the mart knows, by its full protobuf name (the CloudEvents `ce_type`).
/// A type not listed here is unknown: a consumer sends such an event to the dead-letter topic.
public enum DomainEvents {
  public static let all: [any DomainEvent.Type] = [
    Mart_User_V1_UserRegistered.self,
    Mart_Product_V1_ProductCreated.self, Mart_Product_V1_ProductUpdated.self, Mart_Product_V1_ProductArchived.self,
    Mart_Inventory_V1_StockAdjusted.self, Mart_Inventory_V1_StockReserved.self,
    Mart_Inventory_V1_StockReservationFailed.self, Mart_Inventory_V1_StockReleased.self,
    Mart_Inventory_V1_StockCommitted.self, Mart_Inventory_V1_LowStock.self,
    Mart_Order_V1_OrderPlaced.self, Mart_Order_V1_OrderPaid.self, Mart_Order_V1_OrderCancelled.self,
    Mart_Order_V1_OrderShipped.self, Mart_Order_V1_OrderDelivered.self,
    Mart_Payment_V1_PaymentSucceeded.self, Mart_Payment_V1_PaymentFailed.self, Mart_Payment_V1_PaymentRefunded.self,
    Mart_Notification_V1_NotificationSent.self,
  ]

  public static let byName: [String: any DomainEvent.Type] = Dictionary(
    uniqueKeysWithValues: all.map { ($0.protoMessageName, $0) })
}

extension Mart_User_V1_UserRegistered: DomainEvent {}
extension Mart_Product_V1_ProductCreated: DomainEvent {}
extension Mart_Product_V1_ProductUpdated: DomainEvent {}
extension Mart_Product_V1_ProductArchived: DomainEvent {}
extension Mart_Inventory_V1_StockAdjusted: DomainEvent {}
extension Mart_Inventory_V1_StockReserved: DomainEvent {}
extension Mart_Inventory_V1_StockReservationFailed: DomainEvent {}
extension Mart_Inventory_V1_StockReleased: DomainEvent {}
extension Mart_Inventory_V1_StockCommitted: DomainEvent {}
extension Mart_Inventory_V1_LowStock: DomainEvent {}
extension Mart_Order_V1_OrderPlaced: DomainEvent {}
extension Mart_Order_V1_OrderPaid: DomainEvent {}
extension Mart_Order_V1_OrderCancelled: DomainEvent {}
extension Mart_Order_V1_OrderShipped: DomainEvent {}
extension Mart_Order_V1_OrderDelivered: DomainEvent {}
extension Mart_Payment_V1_PaymentSucceeded: DomainEvent {}
extension Mart_Payment_V1_PaymentFailed: DomainEvent {}
extension Mart_Payment_V1_PaymentRefunded: DomainEvent {}
extension Mart_Notification_V1_NotificationSent: DomainEvent {}
