import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO

/// The events the payment service consumes: what the order service decides about an order's
/// money. Each is applied inside the runtime's inbox transaction, so a redelivered event has no
/// second effect; the refunds they ask for are rows, keyed by what asked for them, which the
/// worker then takes to the provider.
enum PaymentEventHandlers {
  static func orders(store: PaymentStore, logger: Logger) -> EventConsumerDefinition {
    var handlers = EventHandlers()
    // A payment the order does not take (it arrived after the order was cancelled, or the order
    // was paid by another): refund all of it that is not refunded yet.
    handlers.on(Mart_Order_V1_OrderRefundRequested.self) { received, connection in
      let event = received.event
      guard let paymentID = UUID(uuidString: event.paymentID) else {
        throw InvalidEvent(
          "OrderRefundRequested \(received.envelope.id.lowercasedString) lacks a payment id")
      }
      try await refundInFull(
        paymentID, reason: event.reason.isEmpty ? "refund requested by the order service" : event.reason,
        key: "auto:order-refund-requested", store: store, logger: logger, on: connection)
    }
    // A cancelled order takes no more payments; a paid one gets its money back.
    handlers.on(Mart_Order_V1_OrderCancelled.self) { received, connection in
      let event = received.event
      guard let orderID = UUID(uuidString: event.orderID) else {
        throw InvalidEvent("OrderCancelled \(received.envelope.id.lowercasedString) lacks an order id")
      }
      let cancelled = try await store.cancelOpenPayments(of: orderID, on: connection)
      if !cancelled.isEmpty {
        logger.info(
          "cancelled the open payments of a cancelled order",
          metadata: ["order_id": "\(orderID.lowercasedString)", "count": "\(cancelled.count)"])
      }
      if event.wasPaid, let capture = try await store.capture(of: orderID, on: connection) {
        try await refundInFull(
          capture.id, reason: "the order was cancelled", key: "auto:order-cancelled", store: store, logger: logger,
          on: connection)
      }
    }
    return EventConsumerDefinition(name: "orders", topics: [.orders], handlers: handlers)
  }

  /// Asks for a refund of everything the payment took that is not refunded or being refunded.
  /// Nothing left, or a payment that took no money: nothing to do.
  static func refundInFull(
    _ paymentID: UUID, reason: String, key: String, store: PaymentStore, logger: Logger,
    on connection: PostgresConnection
  ) async throws {
    guard let payment = try await store.payment(paymentID, lock: true, on: connection) else {
      logger.warning("refund asked for a payment that is not here", metadata: ["payment_id": "\(paymentID)"])
      return
    }
    guard [.succeeded, .partiallyRefunded].contains(payment.status), payment.refundableMinor > 0 else { return }
    _ = try await store.requestRefund(
      of: paymentID, amountMinor: nil, reason: reason, actorUserID: nil, requestID: key, on: connection)
  }

}
