import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime

/// The gRPC handlers of mart.payment.v1.PaymentService. Who may call what is enforced by the
/// server's auth interceptor from the proto's access options; the handlers keep customers to
/// their own orders' payments (another's reads as NOT_FOUND), take amounts only from the order
/// service, and verify every webhook before it changes anything (`PaymentWebhooks.swift`).
struct PaymentRPCService: Mart_Payment_V1_PaymentService.SimpleServiceProtocol {
  let store: PaymentStore
  let calls: ProviderCalls
  let orders: any Mart_Order_V1_OrderService.ClientProtocol
  let settings: PaymentSettings
  let logger: Logger

  static let defaultPageSize = 20
  static let maximumPageSize = 100
  static let maximumReasonLength = 500

  // MARK: Paying

  func createPayment(
    request: Mart_Payment_V1_CreatePaymentRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_CreatePaymentResponse {
    let userID = try Caller.requiredUserID()
    var validation = RequestValidation()
    let orderID = validation.uuid(request.orderID, field: "order_id")
    var provider: PaymentProvider?
    if request.provider != .unspecified {
      provider = PaymentProvider(request.provider)
      if provider == nil { validation.add("provider", "is not a known payment provider") }
    }
    let returnURL = checkedURL(request.returnURL, field: "return_url", into: &validation)
    let cancelURL = checkedURL(request.cancelURL, field: "cancel_url", into: &validation)
    if case .UNRECOGNIZED = request.sandboxOutcome { validation.add("sandbox_outcome", "is not a known outcome") }
    let key = validation.idempotencyKey(request.requestID)
    try validation.check()
    guard let orderID else { throw APIStatus.invalid("order_id", "must be a UUID") }

    // A retry with the same key answers as the first call did, whatever happened since.
    if let key, let earlier = try await store.payment(userID: userID, requestID: key) {
      guard earlier.orderID == orderID else { throw Self.keyReused }
      return try await replay(earlier, returnURL: returnURL, cancelURL: cancelURL, request: request)
    }

    // The amount comes from the order service; the caller's token goes with the call, so
    // another customer's order is NOT_FOUND there.
    let order = try await orders.getOrder(.with { $0.orderID = orderID.lowercasedString })
    guard order.userID == userID.lowercasedString else {
      throw APIStatus.notFound("order \(orderID.lowercasedString) not found")
    }
    let kind = provider ?? PaymentProvider(order.paymentProvider) ?? .sandbox
    _ = try calls.client(kind)
    try Self.check(order, for: kind)
    let checkout = Checkout(
      returnURL: returnURL, cancelURL: cancelURL, sandboxOutcome: request.sandboxOutcome,
      customerName: order.shippingAddress.recipientName, itemName: "Order \(order.number)")
    let creation = try await store.create(
      PaymentStore.NewPayment(
        orderID: orderID, userID: userID, provider: kind, amountMinor: order.total.amountMinor,
        currency: order.total.currencyCode, orderNumber: order.number, orderDeadline: order.paymentDeadline.date,
        requestID: key,
        callDueAfter: kind == .stripe ? calls.callLease : nil))
    switch creation {
    case .replay(let earlier):
      return try await replay(earlier, returnURL: returnURL, cancelURL: cancelURL, request: request)
    case .created(let payment):
      // Superseded payments are withdrawn at their providers by the worker.
      return try await started(payment, checkout: checkout)
    }
  }

  /// Starts the payment at its provider; UNAVAILABLE (retry with the same key) if it does not
  /// answer, the payment then stays PENDING and the worker keeps trying.
  private func started(_ payment: PaymentRecord, checkout: Checkout) async throws
    -> Mart_Payment_V1_CreatePaymentResponse
  {
    do {
      let (recorded, start) = try await calls.start(payment, checkout: checkout)
      return response(recorded, start)
    } catch is ProviderUnavailable {
      throw APIStatus.status(
        .unavailable,
        "the payment provider did not answer; the payment is pending: retry with the same request_id",
        reason: "PAYMENT_PROVIDER_UNAVAILABLE",
        metadata: ["payment_id": payment.id.lowercasedString, "provider": payment.provider.rawValue],
        extra: [.retryInfo(delay: .seconds(2))])
    }
  }

  /// The answer to a repeated CreatePayment: the payment as it is, with what the client needs to
  /// finish it; a payment whose provider call never got through is started now (same key).
  private func replay(
    _ payment: PaymentRecord, returnURL: String?, cancelURL: String?,
    request: Mart_Payment_V1_CreatePaymentRequest
  ) async throws -> Mart_Payment_V1_CreatePaymentResponse {
    let checkout = Checkout(
      returnURL: returnURL, cancelURL: cancelURL, sandboxOutcome: request.sandboxOutcome, customerName: "",
      itemName: "Order \(payment.orderNumber ?? payment.orderID.lowercasedString)")
    if payment.status == .pending, payment.provider == .stripe, payment.providerPaymentID == nil {
      return try await started(payment, checkout: checkout)
    }
    var start = ProviderStart(providerPaymentID: payment.providerPaymentID, clientSecret: payment.clientSecret)
    if payment.provider == .payfast, payment.status.isOpen, let payfast = calls.payfast {
      start.redirectForm = payfast.redirectForm(payment, checkout: checkout)
    }
    return response(payment, start)
  }

  private func response(_ payment: PaymentRecord, _ start: ProviderStart) -> Mart_Payment_V1_CreatePaymentResponse {
    .with {
      $0.payment = payment.proto
      guard payment.status.isOpen else { return }
      if let secret = start.clientSecret ?? payment.clientSecret, let stripe = settings.stripe {
        $0.nextAction = .with {
          $0.stripeConfirm = .with {
            $0.clientSecret = secret
            $0.publishableKey = stripe.publishableKey
          }
        }
      } else if let form = start.redirectForm {
        $0.nextAction = .with { $0.redirectForm = form }
      }
    }
  }

  /// Whether the order can be paid with this provider now.
  static func check(_ order: Mart_Order_V1_Order, for kind: PaymentProvider) throws {
    switch order.status {
    case .awaitingPayment:
      break
    case .paid, .shipped, .delivered, .refunded:
      throw APIStatus.status(
        .failedPrecondition, "order \(order.number) is already paid", reason: "ORDER_ALREADY_PAID",
        metadata: ["status": "\(order.status)"])
    default:
      throw APIStatus.status(
        .failedPrecondition,
        "order \(order.number) is not awaiting payment (\(order.status)); only an order awaiting payment can be paid",
        reason: "INVALID_ORDER_STATUS", metadata: ["status": "\(order.status)"])
    }
    if order.hasPaymentDeadline, order.paymentDeadline.date < Date() {
      throw APIStatus.status(
        .failedPrecondition, "order \(order.number)'s payment deadline has passed", reason: "INVALID_ORDER_STATUS")
    }
    guard order.total.amountMinor > 0 else {
      throw APIStatus.status(
        .failedPrecondition, "order \(order.number) has nothing to pay", reason: "INVALID_ORDER_STATUS")
    }
    if kind == .payfast, order.total.currencyCode != "ZAR" {
      throw APIStatus.status(
        .failedPrecondition, "PayFast takes payments in ZAR only; the order is in \(order.total.currencyCode)",
        reason: "PAYMENT_PROVIDER_UNAVAILABLE", metadata: ["field": "provider"])
    }
  }

  /// A return or cancel URL: empty, or an absolute http(s) URL on an allowed origin.
  private func checkedURL(_ raw: String, field: String, into validation: inout RequestValidation) -> String? {
    let text = raw.trimmingCharacters(in: .whitespaces)
    guard !text.isEmpty else { return nil }
    guard text.count <= 2000, !RequestValidation.containsControlCharacters(text),
      let origin = ReturnURL.origin(of: text)
    else {
      validation.add(field, "must be an absolute http(s) URL")
      return nil
    }
    guard settings.allowedReturnOrigins.contains(origin) else {
      validation.add(field, "must be on an allowed origin (MART_PAYMENT_ALLOWED_RETURN_ORIGINS)")
      return nil
    }
    return text
  }

  static let keyReused = APIStatus.status(
    .alreadyExists, "this idempotency key was used for another order's payment", reason: "IDEMPOTENCY_KEY_REUSED",
    metadata: ["field": "request_id"])

  // MARK: Reading

  func getPayment(
    request: Mart_Payment_V1_GetPaymentRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_Payment {
    let id = try RequestValidation.requiredUUID(request.paymentID, field: "payment_id")
    guard let payment = try await store.payment(id, ownerID: try Caller.ownerScope()) else {
      throw APIStatus.notFound("payment \(id.lowercasedString) not found")
    }
    return payment.proto
  }

  func listOrderPayments(
    request: Mart_Payment_V1_ListOrderPaymentsRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_ListOrderPaymentsResponse {
    var validation = RequestValidation()
    let orderID = validation.uuid(request.orderID, field: "order_id")
    let limit = validation.pageSize(request.pageSize, default: Self.defaultPageSize, maximum: Self.maximumPageSize)
    try validation.check()
    guard let orderID else { throw APIStatus.invalid("order_id", "must be a UUID") }
    let owner = try Caller.ownerScope()
    let fingerprint = PageTokenCodec.fingerprint(["payments", orderID.lowercasedString, owner?.lowercasedString ?? ""])
    let after = try PageTokenCodec.decode(request.pageToken, as: PaymentCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.payments(orderID: orderID, ownerID: owner, after: after, limit: limit), limit: limit,
      fingerprint: fingerprint
    ) { PaymentCursor(micros: $0.createdMicros, id: $0.id) }
    return .with {
      $0.payments = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  // MARK: Refunding

  func refundPayment(
    request: Mart_Payment_V1_RefundPaymentRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_RefundPaymentResponse {
    let actorID = try Caller.requiredUserID()
    var validation = RequestValidation()
    let paymentID = validation.uuid(request.paymentID, field: "payment_id")
    let reason = validation.text(request.reason, field: "reason", maximum: Self.maximumReasonLength)
    let key = validation.idempotencyKey(request.requestID)
    if let key, key.hasPrefix(PaymentStore.automaticKeyPrefix) {
      // The keys of the refunds the service makes by itself: a client's must not pre-empt them.
      validation.add("request_id", "must not start with \"\(PaymentStore.automaticKeyPrefix)\"")
    }
    if request.hasAmount, request.amount.amountMinor <= 0 {
      validation.add("amount.amount_minor", "must be positive (leave amount out to refund everything left)")
    }
    try validation.check()
    guard let paymentID else { throw APIStatus.invalid("payment_id", "must be a UUID") }
    guard let payment = try await store.payment(paymentID) else {
      throw APIStatus.notFound("payment \(paymentID.lowercasedString) not found")
    }
    if request.hasAmount, request.amount.currencyCode != payment.currency {
      throw APIStatus.invalid("amount.currency_code", "must be the payment's currency, \(payment.currency)")
    }
    _ = try calls.client(payment.provider)
    guard payment.provider != .payfast else {
      throw APIStatus.status(
        .failedPrecondition,
        "PayFast payments are refunded from the PayFast merchant dashboard: this mart holds no PayFast API credentials",
        reason: "REFUND_NOT_ALLOWED", metadata: ["provider": payment.provider.rawValue])
    }
    switch try await store.requestRefund(
      of: paymentID, amountMinor: request.hasAmount ? request.amount.amountMinor : nil,
      reason: reason.isEmpty ? nil : reason, actorUserID: actorID, requestID: key,
      callDueAfter: calls.callLease)
    {
    case .replay(let refund, let payment):
      return .with {
        $0.payment = payment.proto
        $0.refund = refund.proto(currency: payment.currency)
      }
    case .created(let refund, let payment):
      let updated = try await calls.refund(refund) ?? payment
      let current = updated.refunds.first { $0.id == refund.id } ?? refund
      return .with {
        $0.payment = updated.proto
        $0.refund = current.proto(currency: updated.currency)
      }
    }
  }
}
