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
    handlers.on(Mart_Payment_V1_PaymentRefunded.self) { received, connection in
      let event = received.event
      let (orderID, paymentID) = try ids(event.orderID, event.paymentID, event: received.envelope.id)
      guard var change = try await store.change(orderID, on: connection) else { return }
      try await change.recordRefund(
        of: paymentID, amountMinor: event.amount.amountMinor, full: event.fullyRefunded, reason: event.reason)
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
      throw InvalidEvent("payment event \(event.lowercasedString) lacks a valid order or payment id")
    }
    return (orderID, paymentID)
  }

}

extension OrderChange {
  /// A successful payment: recorded once (a duplicate event, or the same payment again, changes
  /// nothing); the deadline no longer applies; the stock is committed next, and the order turns
  /// PAID when it is. A payment the order no longer takes (it was cancelled, at its deadline
  /// say, or another payment paid it) is refunded: OrderRefundRequested, and the timeline says so.
  mutating func recordPayment(_ paymentID: UUID, amountMinor: Int64, logger: Logger) async throws {
    if order.paymentID == paymentID { return }
    let timeline = try await store.timeline(of: order.id, on: connection)
    let refunding = "\(paymentID.lowercasedString)"
    if timeline.contains(where: { $0.kind == .paymentReceived && $0.message.contains(refunding) }) { return }
    switch order.status {
    case .pending where order.paymentID == nil, .awaitingPayment where order.paymentID == nil:
      let now = Date()
      try await update {
        $0.paymentID = paymentID
        $0.paymentReceivedAt = now
        $0.paidAmountMinor = amountMinor
      }
      try await note(.paymentReceived, "Payment \(refunding) received", actor: .system)
      try await finish(.paymentDeadline)
      // A PENDING order's reservation is still being made: its outcome schedules the commit.
      if order.status == .awaitingPayment { try await schedule(.commitStock) }
    default:
      let why =
        order.status == .cancelled
        ? "payment arrived after the order was cancelled" : "the order was already paid by another payment"
      logger.warning(
        "refunding a payment the order does not take",
        metadata: ["order_id": "\(order.id.lowercasedString)", "payment_id": "\(refunding)", "reason": "\(why)"])
      try await note(.paymentReceived, "Payment \(refunding) received, but \(why): refunding it", actor: .system)
      let order = self.order
      try await publish(
        Mart_Order_V1_OrderRefundRequested.with {
          $0.orderID = order.id.lowercasedString
          $0.orderNumber = order.number
          $0.userID = order.userID.lowercasedString
          $0.paymentID = refunding
          $0.amount = order.money(amountMinor)
          $0.reason = why
        })
    }
  }

  /// A refund the payment service made: in the timeline; a full refund of the order's own
  /// payment once it was paid (shipped, delivered) makes it REFUNDED.
  mutating func recordRefund(of paymentID: UUID, amountMinor: Int64, full: Bool, reason: String) async throws {
    let amount = Mart_Common_V1_Money.displayText(minor: amountMinor, currency: order.currency)
    let ownPayment = order.paymentID == paymentID
    if full {
      let now = Date()
      // A paid order cancelled before shipping is REFUNDED too; an order cancelled before it was
      // paid stays CANCELLED (the refunded money was never the order's), and its refund time and
      // timeline say the rest.
      let wasPaid = order.paidAt != nil
      let becomesRefunded =
        ownPayment && ([.paid, .shipped, .delivered].contains(order.status) || (order.status == .cancelled && wasPaid))
      try await update {
        if becomesRefunded { $0.status = .refunded }
        if ownPayment || $0.status == .cancelled { $0.refundedAt = now }
      }
    }
    try await note(
      .refunded, "Refunded \(amount) of payment \(paymentID.lowercasedString)\(reason.isEmpty ? "" : ": \(reason)")",
      actor: .system)
  }
}
