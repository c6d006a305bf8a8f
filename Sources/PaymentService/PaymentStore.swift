import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime
import Metrics
import PostgresNIO
import Tracing

/// The payment database: payments, refunds, received webhooks, and the payment events through
/// the outbox.
///
/// Every change of a payment locks its order first (a transaction-scoped advisory lock on the
/// order id), so that two webhooks, a webhook and a new checkout, or two providers for one order
/// are decided one after the other. The unique indexes (one capture per order, one open payment
/// per order) are the net under that rule, and the refunds trigger keeps refunds within what
/// was paid.
struct PaymentStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  /// The idempotency keys of the refunds the service asks for by itself (`auto:surplus`, …);
  /// RefundPayment refuses client keys with this prefix.
  static let automaticKeyPrefix = "auto:"

  /// Wakes the worker when a transaction that leaves a provider call due commits.
  static let workerChannel = "mart_payment_worker"

  // MARK: Reading

  func payment(_ id: UUID, ownerID: UUID? = nil) async throws -> PaymentRecord? {
    try await database.withConnection { connection in
      try await payment(id, ownerID: ownerID, on: connection)
    }
  }

  func payment(_ id: UUID, ownerID: UUID? = nil, lock: Bool = false, on connection: PostgresConnection)
    async throws -> PaymentRecord?
  {
    let rows = try await connection.query(
      """
      SELECT \(unescaped: PaymentRecord.columns) FROM payments
      WHERE id = \(id) AND (\(ownerID)::uuid IS NULL OR user_id = \(ownerID))
      \(unescaped: lock ? "FOR UPDATE" : "")
      """, logger: logger)
    guard var payment = try await PaymentRecord.decode(rows).first else { return nil }
    payment.refunds = try await refunds(of: id, on: connection)
    return payment
  }

  func payment(provider: PaymentProvider, providerPaymentID: String) async throws -> PaymentRecord? {
    try await database.withConnection {
      try await payment(provider: provider, providerPaymentID: providerPaymentID, on: $0)
    }
  }

  func payment(provider: PaymentProvider, providerPaymentID: String, on connection: PostgresConnection)
    async throws -> PaymentRecord?
  {
    let rows = try await connection.query(
      """
      SELECT id FROM payments WHERE provider = \(provider.rawValue) AND provider_payment_id = \(providerPaymentID)
      """, logger: logger)
    for try await id in rows.decode(UUID.self) { return try await payment(id, on: connection) }
    return nil
  }

  /// The payment a CreatePayment with this key made, if any.
  func payment(userID: UUID, requestID: String) async throws -> PaymentRecord? {
    try await database.withConnection { connection in
      let rows = try await connection.query(
        "SELECT id FROM payments WHERE user_id = \(userID) AND request_id = \(requestID)", logger: logger)
      for try await id in rows.decode(UUID.self) { return try await payment(id, on: connection) }
      return nil
    }
  }

  func refunds(of paymentID: UUID, on connection: PostgresConnection) async throws -> [RefundRecord] {
    try await RefundRecord.decode(
      try await connection.query(
        "SELECT \(unescaped: RefundRecord.columns) FROM refunds WHERE payment_id = \(paymentID) ORDER BY created_at, id",
        logger: logger))
  }

  /// An order's payments, newest first, after the cursor; `ownerID` keeps a customer to theirs.
  func payments(orderID: UUID, ownerID: UUID?, after: PaymentCursor?, limit: Int) async throws -> [PaymentRecord] {
    try await database.withConnection { connection in
      let afterMicros = after?.micros
      let afterID = after?.id
      let rows = try await connection.query(
        """
        SELECT \(unescaped: PaymentRecord.columns) FROM payments
        WHERE order_id = \(orderID) AND (\(ownerID)::uuid IS NULL OR user_id = \(ownerID))
          AND (\(afterMicros)::int8 IS NULL
               OR (created_at, id)
                  < ('epoch'::timestamptz + \(afterMicros)::int8 * interval '1 microsecond', \(afterID)::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT \(limit + 1)
        """, logger: logger)
      var payments = try await PaymentRecord.decode(rows)
      // The page's refunds in one query, not one per payment.
      let refunds = Dictionary(
        grouping: try await RefundRecord.decode(
          try await connection.query(
            """
            SELECT \(unescaped: RefundRecord.columns) FROM refunds WHERE payment_id = ANY(\(payments.map(\.id))::uuid[])
            ORDER BY created_at, id
            """, logger: logger)),
        by: \.paymentID)
      for index in payments.indices { payments[index].refunds = refunds[payments[index].id] ?? [] }
      return payments
    }
  }

  // MARK: Creating

  /// What CreatePayment found or made.
  enum Creation {
    /// A new payment (the open one it superseded is CANCELLED, and due for withdrawal).
    case created(PaymentRecord)
    /// The payment an earlier request with this key made.
    case replay(PaymentRecord)
  }

  struct NewPayment: Sendable {
    var orderID: UUID
    var userID: UUID
    var provider: PaymentProvider
    var amountMinor: Int64
    var currency: String
    var orderNumber: String
    var orderDeadline: Date
    var requestID: String?
    /// When the worker should make the provider call if this request does not record its
    /// outcome first (its process died, say); nil when there is no call to make.
    var callDueAfter: Duration?
  }

  /// Stores a new PENDING payment for an order, cancelling its open PENDING one, unless the
  /// order is paid, a payment is PROCESSING, or the key was used before.
  func create(_ new: NewPayment) async throws -> Creation {
    try await database.transaction(logger: logger) { connection in
      try await lockOrder(new.orderID, on: connection)
      if let requestID = new.requestID {
        let rows = try await connection.query(
          "SELECT id FROM payments WHERE user_id = \(new.userID) AND request_id = \(requestID)", logger: logger)
        for try await id in rows.decode(UUID.self) {
          guard let earlier = try await payment(id, on: connection) else { break }
          guard earlier.orderID == new.orderID else {
            throw APIStatus.status(
              .alreadyExists, "this idempotency key was used for another order's payment",
              reason: "IDEMPOTENCY_KEY_REUSED", metadata: ["field": "request_id"])
          }
          return .replay(earlier)
        }
      }
      let others = try await PaymentRecord.decode(
        try await connection.query(
          "SELECT \(unescaped: PaymentRecord.columns) FROM payments WHERE order_id = \(new.orderID)", logger: logger))
      if others.contains(where: { $0.status.tookMoney && !$0.surplus }) {
        throw APIStatus.status(
          .failedPrecondition, "the order is already paid", reason: "ORDER_ALREADY_PAID",
          metadata: ["order_id": new.orderID.lowercasedString])
      }
      if others.contains(where: { $0.status == .processing }) {
        throw APIStatus.status(
          .failedPrecondition, "a payment of this order is being processed by its provider; wait for its outcome",
          reason: "INVALID_ORDER_STATUS", metadata: ["order_id": new.orderID.lowercasedString])
      }
      let superseded = try await PaymentRecord.decode(
        try await connection.query(
          """
          UPDATE payments SET status = 'cancelled', updated_at = now(),
                 failure_message = 'superseded by a newer payment',
                 \(unescaped: Self.withdrawalDue)
          WHERE order_id = \(new.orderID) AND status = 'pending'
          RETURNING \(unescaped: PaymentRecord.columns)
          """, logger: logger))
      let dueMicros = new.callDueAfter?.microseconds
      let rows: PostgresRowSequence
      do {
        rows = try await insertPayment(new, dueMicros: dueMicros, on: connection)
      } catch let error as PSQLError
        where error.serverInfo?[.constraintName] == "payments_user_id_request_id_key"
      {
        // The same key, at the same moment, for another order (the order locks do not meet).
        throw APIStatus.status(
          .alreadyExists, "this idempotency key was used for another order's payment", reason: "IDEMPOTENCY_KEY_REUSED",
          metadata: ["field": "request_id"])
      }
      guard let payment = try await PaymentRecord.decode(rows).first else {
        throw PostgresStoreError("INSERT INTO payments returned no row")
      }
      if dueMicros != nil || superseded.contains(where: { $0.providerPaymentID != nil }) {
        try await notifyWorker(on: connection)
      }
      return .created(payment)
    }
  }

  private func insertPayment(_ new: NewPayment, dueMicros: Int64?, on connection: PostgresConnection) async throws
    -> PostgresRowSequence
  {
    try await connection.query(
      """
      INSERT INTO payments (order_id, user_id, provider, amount_minor, currency, request_id, order_number,
                            order_deadline, provider_call_due_at, traceparent)
      VALUES (\(new.orderID), \(new.userID), \(new.provider.rawValue), \(new.amountMinor), \(new.currency),
              \(new.requestID), \(new.orderNumber), \(new.orderDeadline),
              now() + \(dueMicros)::int8 * interval '1 microsecond', \(RequestContext.traceparent))
      RETURNING \(unescaped: PaymentRecord.columns)
      """, logger: logger)
  }

  /// Records what the provider said when the payment started: its id, and what the customer
  /// needs to pay (a client secret, a redirect URL). The provider call is done.
  func recordStart(_ paymentID: UUID, _ start: ProviderStart) async throws -> PaymentRecord {
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        UPDATE payments SET provider_payment_id = coalesce(\(start.providerPaymentID), provider_payment_id),
               client_secret = coalesce(\(start.clientSecret), client_secret),
               redirect_url = coalesce(\(start.redirectForm?.redirectURL), redirect_url),
               -- Superseded or cancelled while this start was in flight: withdraw what it made.
               provider_call_due_at = CASE
                 WHEN status IN ('cancelled', 'failed') AND coalesce(\(start.providerPaymentID), provider_payment_id) IS NOT NULL
                 THEN now() END,
               provider_call_error = NULL, updated_at = now()
        WHERE id = \(paymentID)
        RETURNING \(unescaped: PaymentRecord.columns)
        """, logger: logger)
      guard let payment = try await PaymentRecord.decode(rows).first else {
        throw PostgresStoreError("payment \(paymentID.lowercasedString) vanished")
      }
      return payment
    }
  }

  /// A provider call that may pass: tried again after `backoff`.
  func recordCallFailure(payment paymentID: UUID, error: String, backoff: Duration) async throws {
    try await database.transaction(logger: logger) { connection in
      try await connection.query(
        """
        UPDATE payments SET provider_call_attempts = provider_call_attempts + 1, provider_call_error = \(error),
               provider_call_due_at = now() + \(backoff.microseconds) * interval '1 microsecond', updated_at = now()
        WHERE id = \(paymentID) AND status IN ('pending', 'processing', 'cancelled', 'failed')
        """, logger: logger)
      try await notifyWorker(on: connection)
    }
  }

  // MARK: Outcomes

  /// Where a webhook's effect came from, so that a redelivered one has none: its row in
  /// `webhook_events` is written in the same transaction as the effect.
  struct WebhookDelivery: Sendable {
    var provider: PaymentProvider
    var eventID: String
    var payload: [UInt8]
  }

  /// Records a webhook delivery; false if it was recorded before (a duplicate: apply nothing).
  func record(_ delivery: WebhookDelivery, on connection: PostgresConnection) async throws -> Bool {
    let rows = try await connection.query(
      """
      INSERT INTO webhook_events (provider, provider_event_id, payload)
      VALUES (\(delivery.provider.rawValue), \(delivery.eventID), \(ByteBuffer(bytes: delivery.payload)))
      ON CONFLICT DO NOTHING
      RETURNING true
      """, logger: logger)
    for try await _ in rows.decode(Bool.self) { return true }
    return false
  }

  /// Records a delivery that changes nothing (an event of no interest, already applied).
  func record(_ delivery: WebhookDelivery) async throws {
    try await database.transaction(logger: logger) { connection in
      _ = try await record(delivery, on: connection)
    }
  }

  func wasRecorded(provider: PaymentProvider, eventID: String) async throws -> Bool {
    let rows = try await database.query(
      "SELECT true FROM webhook_events WHERE provider = \(provider.rawValue) AND provider_event_id = \(eventID)",
      logger: logger)
    for try await _ in rows.decode(Bool.self) { return true }
    return false
  }

  /// Applies what the provider says of a payment: the one path every provider's news takes (the
  /// sandbox's immediate outcome, Stripe's webhook, PayFast's ITN), so the saga sees the same
  /// events in every environment. With `delivery`, a redelivered webhook changes nothing.
  ///
  /// - Money arriving for an order that another payment already paid makes this payment a
  ///   surplus: recorded as succeeded, and refunded in full automatically.
  /// - Money arriving for a FAILED or CANCELLED payment (a late success) still counts: the order
  ///   service refunds it if the order no longer takes it.
  ///
  /// A provider's webhook or ITN (`delivery`) arrives in a trace of its own, the provider's
  /// request. What it causes (PaymentSucceeded, then the order's OrderPaid) continues the trace of
  /// the CreatePayment that started the payment instead, linked to the webhook's, so that one
  /// checkout is one trace.
  @discardableResult
  func apply(
    _ outcome: ProviderOutcome, to paymentID: UUID, providerPaymentID: String? = nil,
    delivery: WebhookDelivery? = nil
  ) async throws -> PaymentRecord? {
    guard delivery != nil, let started = try await startingTrace(of: paymentID) else {
      return try await applyNow(outcome, to: paymentID, providerPaymentID: providerPaymentID, delivery: delivery)
    }
    let webhook = ServiceContext.current ?? .topLevel
    return try await MartTracing.withSpan("payment outcome from the provider", continuing: started) { span in
      span.addLink(SpanLink(context: webhook, attributes: [:]))
      return try await applyNow(outcome, to: paymentID, providerPaymentID: providerPaymentID, delivery: delivery)
    }
  }

  /// The trace of the request that created the payment, when it had one.
  func startingTrace(of paymentID: UUID) async throws -> String? {
    let rows = try await database.query("SELECT traceparent FROM payments WHERE id = \(paymentID)", logger: logger)
    for try await traceparent in rows.decode(String?.self) { return traceparent }
    return nil
  }

  private func applyNow(
    _ outcome: ProviderOutcome, to paymentID: UUID, providerPaymentID: String?, delivery: WebhookDelivery?
  ) async throws -> PaymentRecord? {
    try await database.transaction(logger: logger) { connection in
      let orders = try await connection.query("SELECT order_id FROM payments WHERE id = \(paymentID)", logger: logger)
      var orderID: UUID?
      for try await id in orders.decode(UUID.self) { orderID = id }
      guard let orderID else { return nil }
      try await lockOrder(orderID, on: connection)
      guard var payment = try await payment(paymentID, lock: true, on: connection) else { return nil }
      if let delivery, !(try await record(delivery, on: connection)) { return payment }
      if let providerPaymentID, payment.providerPaymentID == nil {
        try await connection.query(
          "UPDATE payments SET provider_payment_id = \(providerPaymentID) WHERE id = \(paymentID)", logger: logger)
        payment.providerPaymentID = providerPaymentID
      }
      switch outcome {
      case .succeeded:
        if payment.status.tookMoney {
          if let providerPaymentID, let known = payment.providerPaymentID, providerPaymentID != known {
            try await recordSecondCapture(of: payment, providerPaymentID: providerPaymentID, on: connection)
          }
          return payment
        }
        let paidAlready = try await connection.query(
          """
          SELECT true FROM payments
          WHERE order_id = \(payment.orderID) AND id <> \(payment.id) AND NOT surplus
            AND status IN ('succeeded', 'partially_refunded', 'refunded')
          """, logger: logger)
        var surplus = false
        for try await _ in paidAlready.decode(Bool.self) { surplus = true }
        payment = try await update(
          payment.id,
          """
          status = 'succeeded', succeeded_at = now(), surplus = \(surplus), provider_call_due_at = NULL,
          failure_code = NULL, failure_message = NULL
          """, on: connection)
        if surplus {
          logger.warning(
            "money arrived for an order another payment already paid; refunding it",
            metadata: [
              "order_id": "\(payment.orderID.lowercasedString)", "payment_id": "\(payment.id.lowercasedString)",
            ])
          _ = try await requestRefund(
            of: payment.id, amountMinor: nil, reason: "the order was already paid by another payment",
            actorUserID: nil, requestID: "auto:surplus", on: connection)
        } else {
          try await publish(
            Mart_Payment_V1_PaymentSucceeded.with {
              $0.paymentID = payment.id.lowercasedString
              $0.orderID = payment.orderID.lowercasedString
              $0.userID = payment.userID.lowercasedString
              $0.provider = payment.provider.proto
              $0.amount = Mart_Common_V1_Money(minor: payment.amountMinor, currency: payment.currency)
              $0.providerPaymentID = payment.providerPaymentID ?? ""
              $0.succeedTime = .init(date: payment.succeededAt ?? Date())
            }, of: payment, on: connection)
        }
      case .processing:
        guard payment.status == .pending else { return payment }
        payment = try await update(
          payment.id,
          "status = 'processing', provider_call_due_at = now() + \(Self.recheckInterval.microseconds) * interval '1 microsecond'",
          on: connection)
      case .failed(let code, let message):
        guard payment.status.isOpen else { return payment }
        payment = try await update(
          payment.id,
          """
          status = 'failed', failure_code = \(String(code.prefix(200))), failure_message = \(String(message.prefix(500))),
          \(unescaped: Self.withdrawalDue)
          """, on: connection)
        try await publish(
          Mart_Payment_V1_PaymentFailed.with {
            $0.paymentID = payment.id.lowercasedString
            $0.orderID = payment.orderID.lowercasedString
            $0.userID = payment.userID.lowercasedString
            $0.provider = payment.provider.proto
            $0.amount = Mart_Common_V1_Money(minor: payment.amountMinor, currency: payment.currency)
            $0.failureCode = payment.failureCode ?? ""
            $0.failureMessage = payment.failureMessage ?? ""
            $0.failTime = .init(date: Date())
          }, of: payment, on: connection)
      case .cancelled:
        guard payment.status.isOpen else { return payment }
        payment = try await update(payment.id, "status = 'cancelled', provider_call_due_at = NULL", on: connection)
      }
      return payment
    }
  }

  /// The provider took money a second time for one checkout (a PayFast form submitted twice):
  /// a payment of its own, as a surplus, refunded automatically; logged, as nobody expects it.
  private func recordSecondCapture(
    of payment: PaymentRecord, providerPaymentID: String, on connection: PostgresConnection
  ) async throws {
    let rows = try await connection.query(
      """
      INSERT INTO payments (order_id, user_id, provider, provider_payment_id, status, amount_minor, currency,
                            order_number, order_deadline, surplus, succeeded_at, failure_message)
      VALUES (\(payment.orderID), \(payment.userID), \(payment.provider.rawValue), \(providerPaymentID), 'succeeded',
              \(payment.amountMinor), \(payment.currency), \(payment.orderNumber), \(payment.orderDeadline), true, now(),
              \("a second capture of payment \(payment.id.lowercasedString)"))
      ON CONFLICT DO NOTHING
      RETURNING id
      """, logger: logger)
    for try await id in rows.decode(UUID.self) {
      logger.error(
        "the provider took money twice for one payment; refunding the second",
        metadata: [
          "payment_id": "\(payment.id.lowercasedString)", "second_payment_id": "\(id.lowercasedString)",
          "provider": "\(payment.provider.rawValue)",
        ])
      _ = try await requestRefund(
        of: id, amountMinor: nil, reason: "the payment was taken twice", actorUserID: nil, requestID: "auto:surplus",
        on: connection)
    }
  }

  /// Cancels the order's open payments (the order was cancelled); returns them, for their
  /// providers to withdraw.
  func cancelOpenPayments(of orderID: UUID, on connection: PostgresConnection) async throws -> [PaymentRecord] {
    try await lockOrder(orderID, on: connection)
    let cancelled = try await PaymentRecord.decode(
      try await connection.query(
        """
        UPDATE payments SET status = 'cancelled', updated_at = now(),
               failure_message = 'the order was cancelled',
               \(unescaped: Self.withdrawalDue)
        WHERE order_id = \(orderID) AND status = 'pending'
        RETURNING \(unescaped: PaymentRecord.columns)
        """, logger: logger))
    if cancelled.contains(where: { $0.providerPaymentID != nil }) { try await notifyWorker(on: connection) }
    return cancelled
  }

  /// A cancelled payment that its provider knows (a Stripe PaymentIntent) is withdrawn there by
  /// the worker, so that the customer can no longer complete it; money that arrives anyway is a
  /// surplus or a late payment, and is refunded.
  static let withdrawalDue = "provider_call_due_at = CASE WHEN provider_payment_id IS NULL THEN NULL ELSE now() END"

  /// How long an undecided payment or refund (PROCESSING, or pending at the provider) waits
  /// before the worker asks its provider again, in case its webhook never comes.
  static let recheckInterval: Duration = .seconds(300)

  /// Asks the provider about the payment again after `recheckInterval`.
  func recheckLater(_ paymentID: UUID) async throws {
    try await database.query(
      """
      UPDATE payments SET provider_call_due_at = now() + \(Self.recheckInterval.microseconds) * interval '1 microsecond'
      WHERE id = \(paymentID)
      """, logger: logger)
  }

  /// The provider call the payment was due for is done (or given up).
  func finishCall(_ paymentID: UUID) async throws {
    try await database.query(
      "UPDATE payments SET provider_call_due_at = NULL, provider_call_error = NULL WHERE id = \(paymentID)",
      logger: logger)
  }

  /// The payment of an order that took its money, if any.
  func capture(of orderID: UUID, on connection: PostgresConnection) async throws -> PaymentRecord? {
    let rows = try await connection.query(
      """
      SELECT id FROM payments
      WHERE order_id = \(orderID) AND NOT surplus AND status IN ('succeeded', 'partially_refunded', 'refunded')
      """, logger: logger)
    for try await id in rows.decode(UUID.self) { return try await payment(id, on: connection) }
    return nil
  }

  // MARK: Refunds

  /// What a refund request found or made.
  enum RefundRequest {
    case created(RefundRecord, PaymentRecord)
    case replay(RefundRecord, PaymentRecord)
  }

  /// Stores a PENDING refund of `amountMinor` (nil: all that is not yet refunded or being
  /// refunded), its provider call due after `callDueAfter`: at once for the worker (nil), or after
  /// a lease when the caller makes the call itself (so that the worker does not make it too, and
  /// takes it over only if the caller dies). The trigger refuses more than was paid.
  func requestRefund(
    of paymentID: UUID, amountMinor: Int64?, reason: String?, actorUserID: UUID?, requestID: String?,
    callDueAfter: Duration? = nil
  ) async throws -> RefundRequest {
    try await database.transaction(logger: logger) { connection in
      try await requestRefund(
        of: paymentID, amountMinor: amountMinor, reason: reason, actorUserID: actorUserID, requestID: requestID,
        callDueAfter: callDueAfter, on: connection)
    }
  }

  func requestRefund(
    of paymentID: UUID, amountMinor: Int64?, reason: String?, actorUserID: UUID?, requestID: String?,
    callDueAfter: Duration? = nil, on connection: PostgresConnection
  ) async throws -> RefundRequest {
    guard var payment = try await payment(paymentID, lock: true, on: connection) else {
      throw APIStatus.notFound("payment \(paymentID.lowercasedString) not found")
    }
    if let requestID, let earlier = payment.refunds.first(where: { $0.requestID == requestID }) {
      return .replay(earlier, payment)
    }
    guard payment.status == .succeeded || payment.status == .partiallyRefunded else {
      throw APIStatus.status(
        .failedPrecondition, "payment \(payment.id.lowercasedString) is \(payment.status.rawValue): nothing to refund",
        reason: "REFUND_NOT_ALLOWED", metadata: ["status": payment.status.rawValue])
    }
    let refundable = payment.refundableMinor
    let amount = amountMinor ?? refundable
    guard amount > 0, amount <= refundable else {
      throw APIStatus.status(
        .failedPrecondition,
        "the refund would exceed what the payment took: paid \(payment.amountMinor), refunded or being refunded \(payment.amountMinor - refundable)",
        reason: "REFUND_NOT_ALLOWED", metadata: ["field": "amount"])
    }
    let rows = try await connection.query(
      """
      INSERT INTO refunds (payment_id, amount_minor, reason, actor_user_id, request_id, provider_call_due_at)
      VALUES (\(paymentID), \(amount), \(reason), \(actorUserID), \(requestID),
              now() + \((callDueAfter ?? .zero).microseconds) * interval '1 microsecond')
      RETURNING \(unescaped: RefundRecord.columns)
      """, logger: logger)
    guard let refund = try await RefundRecord.decode(rows).first else {
      throw PostgresStoreError("INSERT INTO refunds returned no row")
    }
    payment.refunds.append(refund)
    if callDueAfter == nil { try await notifyWorker(on: connection) }
    return .created(refund, payment)
  }

  /// Records a refund's outcome at its provider. A success adds to the payment's refunded total,
  /// moves its status and publishes PaymentRefunded; a failure is final for that refund (an
  /// admin may ask again); pending waits for the provider's webhook.
  @discardableResult
  func recordRefund(_ refundID: UUID, _ outcome: RefundOutcome, delivery: WebhookDelivery? = nil) async throws
    -> PaymentRecord?
  {
    try await database.transaction(logger: logger) { connection in
      let found = try await connection.query("SELECT payment_id FROM refunds WHERE id = \(refundID)", logger: logger)
      var paymentID: UUID?
      for try await id in found.decode(UUID.self) { paymentID = id }
      guard let paymentID, let payment = try await payment(paymentID, lock: true, on: connection) else { return nil }
      if let delivery, !(try await record(delivery, on: connection)) { return payment }
      guard let refund = payment.refunds.first(where: { $0.id == refundID }), refund.status == .pending else {
        return payment
      }
      switch outcome {
      case .pending(let providerID):
        try await connection.query(
          """
          UPDATE refunds SET provider_refund_id = \(providerID), provider_call_error = NULL, updated_at = now(),
                 provider_call_due_at = now() + \(Self.recheckInterval.microseconds) * interval '1 microsecond'
          WHERE id = \(refundID)
          """, logger: logger)
      case .failed(let providerID, let message):
        try await connection.query(
          """
          UPDATE refunds SET status = 'failed', provider_refund_id = coalesce(\(providerID), provider_refund_id),
                 provider_call_due_at = NULL, provider_call_error = \(String(message.prefix(500))), updated_at = now()
          WHERE id = \(refundID)
          """, logger: logger)
        logger.error(
          "a refund failed at its provider",
          metadata: ["refund_id": "\(refundID.lowercasedString)", "error": "\(message)"])
      case .succeeded(let providerID):
        try await connection.query(
          """
          UPDATE refunds SET status = 'succeeded', provider_refund_id = \(providerID), provider_call_due_at = NULL,
                 provider_call_error = NULL, updated_at = now()
          WHERE id = \(refundID)
          """, logger: logger)
        let total = payment.refundedMinor + refund.amountMinor
        let full = total == payment.amountMinor
        let updated = try await update(
          payment.id,
          "refunded_minor = \(total), status = \(full ? "refunded" : "partially_refunded")", on: connection)
        try await publish(
          Mart_Payment_V1_PaymentRefunded.with {
            $0.paymentID = payment.id.lowercasedString
            $0.refundID = refundID.lowercasedString
            $0.orderID = payment.orderID.lowercasedString
            $0.userID = payment.userID.lowercasedString
            $0.provider = payment.provider.proto
            $0.amount = Mart_Common_V1_Money(minor: refund.amountMinor, currency: payment.currency)
            $0.refundedTotal = Mart_Common_V1_Money(minor: total, currency: payment.currency)
            $0.fullyRefunded = full
            $0.reason = refund.reason ?? ""
            $0.refundTime = .init(date: Date())
          }, of: updated, on: connection)
      }
      return try await self.payment(paymentID, on: connection)
    }
  }

  func refund(provider: PaymentProvider, providerRefundID: String) async throws -> RefundRecord? {
    try await RefundRecord.decode(
      try await database.query(
        """
        SELECT \(unescaped: RefundRecord.columns) FROM refunds
        WHERE provider_refund_id = \(providerRefundID)
          AND payment_id IN (SELECT id FROM payments WHERE provider = \(provider.rawValue))
        """, logger: logger)
    ).first
  }

  func refund(_ id: UUID) async throws -> RefundRecord? {
    try await RefundRecord.decode(
      try await database.query(
        "SELECT \(unescaped: RefundRecord.columns) FROM refunds WHERE id = \(id)", logger: logger)
    ).first
  }

  func recordRefundCallFailure(_ refundID: UUID, error: String, backoff: Duration) async throws {
    try await database.query(
      """
      UPDATE refunds SET provider_call_attempts = provider_call_attempts + 1, provider_call_error = \(error),
             provider_call_due_at = now() + \(backoff.microseconds) * interval '1 microsecond', updated_at = now()
      WHERE id = \(refundID) AND status = 'pending'
      """, logger: logger)
  }

  // MARK: The worker's queues

  /// Payments whose provider call is due, leased for `lease` (a worker that dies mid-call leaves
  /// them to the next look).
  func leaseDuePayments(limit: Int, lease: Duration) async throws -> [PaymentRecord] {
    try await PaymentRecord.decode(
      try await database.query(
        """
        UPDATE payments SET provider_call_due_at = now() + \(lease.microseconds) * interval '1 microsecond'
        WHERE id IN (
          SELECT id FROM payments
          WHERE provider_call_due_at <= now() AND status IN ('pending', 'processing', 'cancelled', 'failed')
          ORDER BY provider_call_due_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        RETURNING \(unescaped: PaymentRecord.columns)
        """, logger: logger))
  }

  func leaseDueRefunds(limit: Int, lease: Duration) async throws -> [RefundRecord] {
    try await RefundRecord.decode(
      try await database.query(
        """
        UPDATE refunds SET provider_call_due_at = now() + \(lease.microseconds) * interval '1 microsecond'
        WHERE id IN (
          SELECT id FROM refunds WHERE provider_call_due_at <= now() AND status = 'pending'
          ORDER BY provider_call_due_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        RETURNING \(unescaped: RefundRecord.columns)
        """, logger: logger))
  }

  // MARK: Helpers

  /// Serialises the changes of one order's payments (see the type's comment).
  func lockOrder(_ orderID: UUID, on connection: PostgresConnection) async throws {
    try await connection.query(
      "SELECT pg_advisory_xact_lock(hashtextextended(\(orderID.lowercasedString), 7301))", logger: logger)
  }

  private func update(_ id: UUID, _ assignments: PostgresQuery, on connection: PostgresConnection) async throws
    -> PaymentRecord
  {
    var query = PostgresQuery(unsafeSQL: "UPDATE payments SET ")
    query.sql += assignments.sql
    query.binds = assignments.binds
    query.sql += ", updated_at = now() WHERE id = $\(query.binds.count + 1) RETURNING \(PaymentRecord.columns)"
    query.binds.append(id, context: .default)
    guard var payment = try await PaymentRecord.decode(try await connection.query(query, logger: logger)).first else {
      throw PostgresStoreError("payment \(id.lowercasedString) vanished")
    }
    payment.refunds = try await refunds(of: id, on: connection)
    return payment
  }

  /// Payment events are keyed by the order, so that one order's payment events stay in order.
  private func publish<Event: DomainEvent>(_ event: Event, of payment: PaymentRecord, on connection: PostgresConnection)
    async throws
  {
    _ = try await outbox.append(
      event, aggregateType: "payment", aggregateID: payment.orderID.lowercasedString, on: connection, logger: logger)
    // Payments by provider and outcome, for dashboards and the payment-failure alert. Counted as
    // the outcome's event is written: a transaction that then fails to commit (rare: the
    // connection lost at COMMIT) counts one too many, which a rate over minutes does not show.
    Counter(
      label: "mart_payments_total",
      dimensions: [("provider", payment.provider.rawValue), ("outcome", Self.outcome(of: Event.self))]
    ).increment()
  }

  /// `succeeded`, `failed`, `refunded`…: the outcome an event type records.
  static func outcome<Event: DomainEvent>(of type: Event.Type) -> String {
    let name = Event.protoMessageName.split(separator: ".").last.map(String.init) ?? "unknown"
    return name.hasPrefix("Payment") ? String(name.dropFirst("Payment".count)).lowercased() : name.lowercased()
  }

  func notifyWorker(on connection: PostgresConnection) async throws {
    try await connection.query("SELECT pg_notify(\(Self.workerChannel), '')", logger: logger)
  }
}

/// ListOrderPayments' page cursor: the last payment's creation time and id.
struct PaymentCursor: Codable, Sendable {
  var micros: Int64
  var id: UUID
}
