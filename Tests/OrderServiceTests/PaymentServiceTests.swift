import Foundation
import GRPCCore
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import OrderService
import PostgresNIO
import Testing

@testable import PaymentService

// Note: no closure literal inside `#expect(...)` in these tests (see InventoryHarness).

/// The payment service in-process with the real order, catalogue and inventory services, paying
/// with the sandbox provider: the order's money comes from the order, one capture per order,
/// refunds within what was paid, and the saga moved by the payment events.
@Suite(.serialized) struct PaymentServiceTests {
  static let sandbox = PaymentSettings(sandboxEnabled: true, allowedReturnOrigins: ["https://shop.example"])

  /// An order of two lines waiting for payment.
  static func awaitingOrder(_ mart: OrderHarness, sku: String, onHand: Int32 = 10) async throws -> Mart_Order_V1_Order {
    let first = try await mart.product(sku: "\(sku)-A", price: 12_500, onHand: onHand)
    let second = try await mart.product(sku: "\(sku)-B", price: 3_000, onHand: onHand)
    let order = try await mart.place([(first, 2), (second, 1)])
    #expect(try await mart.waitFor(order.id, .awaitingPayment) == .awaitingPayment)
    return try await mart.order(order.id)
  }

  static func pay(
    _ mart: OrderHarness, _ order: Mart_Order_V1_Order, outcome: Mart_Payment_V1_CreatePaymentRequest.SandboxOutcome,
    key: String = "", provider: Mart_Common_V1_PaymentProvider = .unspecified, as metadata: Metadata? = nil
  ) async throws -> Mart_Payment_V1_CreatePaymentResponse {
    let payments = try #require(mart.payments)
    return try await payments.createPayment(
      .with {
        $0.orderID = order.id
        $0.sandboxOutcome = outcome
        $0.requestID = key
        $0.provider = provider
      }, metadata: metadata ?? mart.customer)
  }

  static func store(_ mart: OrderHarness) throws -> PaymentStore {
    PaymentStore(
      database: try #require(mart.paymentDatabase), outbox: Outbox(service: .payment), logger: TestBed.logger)
  }

  @Test func sandboxPaymentPaysTheOrderOnceAndOnlyForItsOwner() async throws {
    try await OrderHarness.run("pay_happy", payments: Self.sandbox) { mart in
      let payments = try #require(mart.payments)
      let order = try await Self.awaitingOrder(mart, sku: "PAY-HAPPY")
      let stranger = try mart.users.bearer(roles: ["customer"], subject: UUID())
      // Someone else's order does not exist for them.
      let foreign = await rpcError { _ = try await Self.pay(mart, order, outcome: .succeed, as: stranger) }
      #expect(foreign?.code == .notFound)

      let key = UUID().uuidString
      let paid = try await Self.pay(mart, order, outcome: .succeed, key: key)
      #expect(paid.payment.status == .succeeded)
      // The amount is the order's total, whatever the client might have wished.
      #expect(paid.payment.amount == order.total)
      #expect(!paid.hasNextAction)
      #expect(try await mart.waitFor(order.id, .paid) == .paid)

      // The same key answers with the same payment; a new one finds the order paid.
      let replayed = try await Self.pay(mart, order, outcome: .succeed, key: key)
      #expect(replayed.payment.id == paid.payment.id)
      let again = await rpcError { _ = try await Self.pay(mart, order, outcome: .succeed, key: UUID().uuidString) }
      #expect(again?.code == .failedPrecondition)
      #expect(reason(again) == "ORDER_ALREADY_PAID")

      let read = try await payments.getPayment(.with { $0.paymentID = paid.payment.id }, metadata: mart.customer)
      #expect(read.status == .succeeded)
      let hidden = await rpcError {
        _ = try await payments.getPayment(.with { $0.paymentID = paid.payment.id }, metadata: stranger)
      }
      #expect(hidden?.code == .notFound)
      #expect(try await mart.timelineKinds(order.id).contains(.paymentReceived))
    }
  }

  @Test func failedPaymentIsRetriedAndAPendingOneIsSuperseded() async throws {
    try await OrderHarness.run("pay_retry", payments: Self.sandbox) { mart in
      let payments = try #require(mart.payments)
      let order = try await Self.awaitingOrder(mart, sku: "PAY-RETRY")
      let declined = try await Self.pay(mart, order, outcome: .fail)
      #expect(declined.payment.status == .failed)
      #expect(declined.payment.failureCode == "card_declined")
      _ = await eventually { try await mart.timelineKinds(order.id).contains(.paymentFailed) }
      #expect(try await mart.order(order.id).status == .awaitingPayment)

      let pending = try await Self.pay(mart, order, outcome: .stayPending)
      #expect(pending.payment.status == .pending)
      let paid = try await Self.pay(mart, order, outcome: .succeed)
      #expect(paid.payment.status == .succeeded)
      #expect(try await mart.waitFor(order.id, .paid) == .paid)

      let listed = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.customer)
      #expect(listed.payments.map(\.id) == [paid.payment.id, pending.payment.id, declined.payment.id])
      #expect(listed.payments.map(\.status) == [.succeeded, .cancelled, .failed])
      let firstPage = try await payments.listOrderPayments(
        .with {
          $0.orderID = order.id
          $0.pageSize = 2
        }, metadata: mart.customer)
      let secondPage = try await payments.listOrderPayments(
        .with {
          $0.orderID = order.id
          $0.pageSize = 2
          $0.pageToken = firstPage.nextPageToken
        }, metadata: mart.customer)
      #expect((firstPage.payments + secondPage.payments).map(\.id) == listed.payments.map(\.id))
      #expect(secondPage.nextPageToken.isEmpty)
    }
  }

  @Test func onlyAnOrderAwaitingPaymentCanBePaid() async throws {
    try await OrderHarness.run("pay_status", payments: Self.sandbox) { mart in
      let order = try await Self.awaitingOrder(mart, sku: "PAY-STATUS")
      let pending = try await Self.pay(mart, order, outcome: .stayPending)
      _ = try await mart.orders.cancelOrder(.with { $0.orderID = order.id }, metadata: mart.customer)
      let refused = await rpcError { _ = try await Self.pay(mart, order, outcome: .succeed) }
      #expect(refused?.code == .failedPrecondition)
      #expect(reason(refused) == "INVALID_ORDER_STATUS")
      // OrderCancelled cancels the payment left open.
      let payments = try #require(mart.payments)
      let cancelled = await eventually {
        try await payments.getPayment(.with { $0.paymentID = pending.payment.id }, metadata: mart.customer).status
          == .cancelled
      }
      #expect(cancelled)

      // A provider that is not configured is refused, not pretended.
      let other = try await Self.awaitingOrder(mart, sku: "PAY-STATUS-2")
      let stripe = await rpcError { _ = try await Self.pay(mart, other, outcome: .succeed, provider: .stripe) }
      #expect(stripe?.code == .failedPrecondition)
      #expect(reason(stripe) == "PAYMENT_PROVIDER_UNAVAILABLE")
      let badURL = await invalidFields {
        _ = try await payments.createPayment(
          .with {
            $0.orderID = other.id
            $0.returnURL = "https://evil.example/return"
            $0.cancelURL = "javascript:alert(1)"
          }, metadata: mart.customer)
      }
      #expect(badURL == ["return_url", "cancel_url"])
    }
  }

  @Test func refundsStayWithinWhatWasPaidAndRefundTheOrder() async throws {
    try await OrderHarness.run("pay_refund", payments: Self.sandbox) { mart in
      let payments = try #require(mart.payments)
      let order = try await Self.awaitingOrder(mart, sku: "PAY-REFUND")
      let paid = try await Self.pay(mart, order, outcome: .succeed)
      #expect(try await mart.waitFor(order.id, .paid) == .paid)
      let total = paid.payment.amount.amountMinor

      let customerTry = await rpcError {
        _ = try await payments.refundPayment(.with { $0.paymentID = paid.payment.id }, metadata: mart.customer)
      }
      #expect(customerTry?.code == .permissionDenied)

      let partial = try await payments.refundPayment(
        .with {
          $0.paymentID = paid.payment.id
          $0.amount = .with {
            $0.currencyCode = "ZAR"
            $0.amountMinor = 1_000
          }
          $0.reason = "one item damaged"
          $0.requestID = "refund-1"
        }, metadata: mart.admin)
      #expect(partial.refund.status == .succeeded)
      #expect(partial.payment.status == .partiallyRefunded)
      #expect(partial.payment.refundedAmount.amountMinor == 1_000)
      // The same key does not refund twice.
      let replayed = try await payments.refundPayment(
        .with {
          $0.paymentID = paid.payment.id
          $0.amount = .with {
            $0.currencyCode = "ZAR"
            $0.amountMinor = 1_000
          }
          $0.requestID = "refund-1"
        }, metadata: mart.admin)
      #expect(replayed.refund.id == partial.refund.id)

      let tooMuch = await rpcError {
        _ = try await payments.refundPayment(
          .with {
            $0.paymentID = paid.payment.id
            $0.amount = .with {
              $0.currencyCode = "ZAR"
              $0.amountMinor = total
            }
          }, metadata: mart.admin)
      }
      #expect(tooMuch?.code == .failedPrecondition)
      #expect(reason(tooMuch) == "REFUND_NOT_ALLOWED")
      // The keys of the service's own refunds are not a client's to take.
      let automaticKey = await invalidFields {
        _ = try await payments.refundPayment(
          .with {
            $0.paymentID = paid.payment.id
            $0.requestID = "auto:order-cancelled"
          }, metadata: mart.admin)
      }
      #expect(automaticKey == ["request_id"])

      // Under the handler, the database's trigger refuses an over-refund by itself.
      let database = try #require(mart.paymentDatabase)
      let paymentID = try #require(UUID(uuidString: paid.payment.id))
      var refusedByTrigger = false
      do {
        try await database.withTransaction(logger: TestBed.logger) { connection in
          _ = try await connection.query(
            "INSERT INTO refunds (payment_id, amount_minor, status) VALUES (\(paymentID), \(total), 'pending')",
            logger: TestBed.logger)
        }
      } catch {
        let message = (error.unwrappingTransactionError as? PSQLError)?.serverInfo?[.message] ?? ""
        refusedByTrigger = message.contains("would exceed its amount")
      }
      #expect(refusedByTrigger)

      // The rest, with no amount: the payment is REFUNDED, and so is the order.
      let rest = try await payments.refundPayment(.with { $0.paymentID = paid.payment.id }, metadata: mart.admin)
      #expect(rest.refund.amount.amountMinor == total - 1_000)
      #expect(rest.payment.status == .refunded)
      #expect(try await mart.waitFor(order.id, .refunded) == .refunded)
    }
  }

  /// A paid order cancelled before it ships: its stock goes back on the shelf, the payment
  /// service refunds it by itself, and the order ends REFUNDED.
  @Test func cancellingAPaidOrderReturnsItsStockAndRefundsIt() async throws {
    try await OrderHarness.run("pay_cancel_paid", payments: Self.sandbox) { mart in
      let payments = try #require(mart.payments)
      let order = try await Self.awaitingOrder(mart, sku: "PAY-CANCEL", onHand: 10)
      let paid = try await Self.pay(mart, order, outcome: .succeed)
      #expect(try await mart.waitFor(order.id, .paid) == .paid)
      let productID = order.lines[0].productID
      #expect(try await mart.stock(productID).onHand == 8)

      let cancelled = try await mart.orders.cancelOrder(
        .with {
          $0.orderID = order.id
          $0.note = "changed my mind"
        }, metadata: mart.customer)
      #expect(cancelled.status == .cancelled)
      #expect(try await mart.waitFor(order.id, .refunded) == .refunded)
      let payment = try await payments.getPayment(.with { $0.paymentID = paid.payment.id }, metadata: mart.customer)
      #expect(payment.status == .refunded)
      #expect(payment.refunds.count == 1)
      #expect(payment.refunds.first?.actorUserID == "")
      let restocked = await eventually { try await mart.stock(productID).onHand == 10 }
      #expect(restocked)
      let kinds = try await mart.timelineKinds(order.id)
      #expect(kinds.contains(.cancelled))
      #expect(kinds.contains(.refunded))
      // Final: a shipped or refunded order cannot be cancelled.
      let again = await rpcError {
        _ = try await mart.orders.cancelOrder(.with { $0.orderID = order.id }, metadata: mart.customer)
      }
      #expect(again?.code == .failedPrecondition)
    }
  }

  /// Two successes racing for one order (two webhooks, two providers): one capture; the other
  /// payment is recorded as a surplus and refunded by itself. Run several times.
  @Test func concurrentSuccessesCaptureOnceAndRefundTheSurplus() async throws {
    try await OrderHarness.run("pay_race", payments: Self.sandbox) { mart in
      let store = try Self.store(mart)
      let payments = try #require(mart.payments)
      for round in 0..<6 {
        let order = try await Self.awaitingOrder(mart, sku: "PAY-RACE-\(round)")
        let first = try await Self.pay(mart, order, outcome: .stayPending)
        let second = try await Self.pay(mart, order, outcome: .stayPending)
        let ids = try [first, second].map { try #require(UUID(uuidString: $0.payment.id)) }
        // The first was superseded (CANCELLED); money arriving for it still counts.
        try await withThrowingTaskGroup { group in
          for id in ids { group.addTask { _ = try await store.apply(.succeeded, to: id) } }
          try await group.waitForAll()
        }
        let states = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.admin)
          .payments
        #expect(states.count == 2)
        let database = try #require(mart.paymentDatabase)
        let rows = try await database.query(
          "SELECT count(*) FILTER (WHERE NOT surplus), count(*) FILTER (WHERE surplus) FROM payments WHERE order_id = \(UUID(uuidString: order.id))",
          logger: TestBed.logger)
        for try await (captures, surpluses) in rows.decode((Int64, Int64).self) {
          #expect(captures == 1, "round \(round)")
          #expect(surpluses == 1, "round \(round)")
        }
        let surplusRefunded = await eventually {
          let now = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.admin)
          return Set(now.payments.map(\.status)) == [.succeeded, .refunded]
        }
        #expect(surplusRefunded, "round \(round)")
        #expect(try await mart.waitFor(order.id, .paid) == .paid)
      }
    }
  }

  /// Money that arrives after the order was cancelled at its deadline: the order service asks
  /// for a refund (OrderRefundRequested), and the payment service makes it.
  @Test func latePaymentIsRefundedThroughTheOrderService() async throws {
    try await OrderHarness.run(
      "pay_late", settings: OrderSettings(paymentWindow: .seconds(3)), payments: Self.sandbox
    ) { mart in
      let payments = try #require(mart.payments)
      let order = try await Self.awaitingOrder(mart, sku: "PAY-LATE")
      let pending = try await Self.pay(mart, order, outcome: .stayPending)
      #expect(try await mart.waitFor(order.id, .cancelled) == .cancelled)
      let id = try #require(UUID(uuidString: pending.payment.id))
      try await Self.store(mart).apply(.succeeded, to: id)
      let refunded = await eventually {
        try await payments.getPayment(.with { $0.paymentID = pending.payment.id }, metadata: mart.admin).status
          == .refunded
      }
      #expect(refunded)
      #expect(try await mart.order(order.id).status == .cancelled)
    }
  }
}
