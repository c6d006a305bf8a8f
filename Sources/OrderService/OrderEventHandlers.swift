import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO

/// The events the order service consumes: what the payment service says about an order's
/// payments. The runtime applies each inside its inbox transaction, so a redelivered event has
/// no second effect; each handler also locks the order and checks its state, so a late or
/// reordered event changes nothing it should not.
enum OrderEventHandlers {
  static func payments(store: OrderStore, logger: Logger) -> EventConsumerDefinition {
    var handlers = EventHandlers()
    handlers.on(Mart_Payment_V1_PaymentSucceeded.self) { received, connection in
      let event = received.event
      let (orderID, paymentID) = try ids(event.orderID, event.paymentID, event: received.envelope.id)
      guard var change = try await store.change(orderID, on: connection) else {
        logger.warning("PaymentSucceeded for an unknown order", metadata: ["order_id": "\(event.orderID)"])
        return
      }
      try await change.recordPayment(paymentID, amountMinor: event.amount.amountMinor, logger: logger)
    }
    handlers.on(Mart_Payment_V1_PaymentFailed.self) { received, connection in
      let event = received.event
      let (orderID, _) = try ids(event.orderID, event.paymentID, event: received.envelope.id)
      guard let change = try await store.change(orderID, on: connection) else { return }
      guard [.pending, .awaitingPayment].contains(change.order.status) else { return }
      let why = event.failureMessage.isEmpty ? event.failureCode : event.failureMessage
      try await change.note(
        .paymentFailed, "Payment failed\(why.isEmpty ? "" : ": \(why)"); it may be retried until the deadline",
        actor: .system)
    }
    return EventConsumerDefinition(name: "payments", topics: [.payments], handlers: handlers)
  }

  static func ids(_ order: String, _ payment: String, event: UUID) throws -> (UUID, UUID) {
    guard let orderID = UUID(uuidString: order), let paymentID = UUID(uuidString: payment) else {
      // Not retryable: the dead-letter topic is where it can be looked at.
      throw InvalidEvent(description: "payment event \(event.lowercasedString) lacks a valid order or payment id")
    }
    return (orderID, paymentID)
  }

  struct InvalidEvent: Error, CustomStringConvertible {
    var description: String
  }
}

extension OrderChange {
  /// A successful payment: recorded once (a duplicate event, or the same payment again, changes
  /// nothing); the deadline no longer applies; the stock is committed next, and the order turns
  /// PAID when it is.
  mutating func recordPayment(_ paymentID: UUID, amountMinor: Int64, logger: Logger) async throws {
    if let recorded = order.paymentID {
      if recorded != paymentID {
        logger.error(
          "a second successful payment for one order",
          metadata: ["order_id": "\(order.id.lowercasedString)", "payment_id": "\(paymentID.lowercasedString)"])
      }
      return
    }
    switch order.status {
    case .pending, .awaitingPayment:
      let now = Date()
      try await update {
        $0.paymentID = paymentID
        $0.paymentReceivedAt = now
        $0.paidAmountMinor = amountMinor
      }
      try await note(.paymentReceived, "Payment received", actor: .system)
      try await finish(.paymentDeadline)
      // A PENDING order's reservation is still being made: its outcome schedules the commit.
      if order.status == .awaitingPayment { try await schedule(.commitStock) }
    case .cancelled, .paid, .shipped, .delivered, .refunded:
      logger.error(
        "a successful payment for an order that no longer takes one",
        metadata: ["order_id": "\(order.id.lowercasedString)", "status": "\(order.status.rawValue)"])
    }
  }
}
