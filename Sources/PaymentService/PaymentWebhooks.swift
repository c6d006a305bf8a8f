import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime

/// The providers' webhooks. Nothing in a webhook is believed before it is verified, and a
/// verified one changes only what the provider itself confirms: Stripe's events are re-read from
/// Stripe (they arrive out of order), PayFast's ITN passes PayFast's four checks. Each delivery
/// is recorded in `webhook_events` in the transaction that applies it, so a redelivery changes
/// nothing. Never logged: a body, a signature, a secret.
extension PaymentRPCService {
  // MARK: Stripe

  func stripeWebhook(
    request: Mart_Payment_V1_StripeWebhookRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_WebhookResponse {
    guard let stripe = calls.stripe else { _ = try calls.client(.stripe); return .init() }
    let body = [UInt8](request.httpBody.data)
    do {
      try StripeSignature.verify(
        header: request.signature, payload: body, secrets: stripe.settings.webhookSecrets,
        tolerance: stripe.settings.webhookTolerance)
    } catch {
      logger.warning("refused a Stripe webhook", metadata: ["reason": "\(error.description)"])
      throw APIStatus.status(
        .invalidArgument, "the Stripe-Signature header does not verify: \(error.description)",
        reason: "INVALID_WEBHOOK_SIGNATURE", metadata: ["field": "signature"],
        extra: [.badRequest(violations: [.init(field: "signature", description: error.description)])])
    }
    guard let event = try? JSONDecoder().decode(StripeObjects.Event.self, from: Data(body)) else {
      throw APIStatus.invalid("http_body", "is not a Stripe event")
    }
    if try await store.wasRecorded(provider: .stripe, eventID: event.id) { return .init() }
    let delivery = PaymentStore.WebhookDelivery(provider: .stripe, eventID: event.id, payload: body)
    do {
      switch (event.type, event.data.object.object) {
      case (let type, "payment_intent") where type.hasPrefix("payment_intent."):
        // Events arrive out of order: act on the PaymentIntent as Stripe has it now.
        let intent = try await stripe.paymentIntent(event.data.object.id)
        try await applyStripe(intent, delivery: delivery)
      case (_, "refund"):
        let refund = try await stripe.refundObject(event.data.object.id)
        try await applyStripe(refund, delivery: delivery)
      case ("charge.refunded", "charge"), ("charge.refund.updated", "charge"):
        guard let intentID = event.data.object.paymentIntent,
          let payment = try await store.payment(provider: .stripe, providerPaymentID: intentID)
        else { break }
        for refund in payment.refunds where refund.status == .pending {
          guard let providerID = refund.providerRefundID else { continue }
          try await applyStripe(try await stripe.refundObject(providerID), delivery: nil)
        }
      default:
        break
      }
      try await store.record(delivery)
    } catch let error as ProviderUnavailable {
      // Stripe retries a webhook that is not answered with 2xx.
      throw APIStatus.status(
        .unavailable, "Stripe could not be asked about this event; retry later", reason: "PAYMENT_PROVIDER_UNAVAILABLE",
        metadata: ["detail": error.description])
    } catch let error as ProviderRefused where error.isNotFound {
      logger.warning(
        "a Stripe webhook names an object Stripe does not have",
        metadata: ["event_id": "\(event.id)", "error": "\(error.description)"])
      try await store.record(delivery)
    } catch let error as ProviderRefused {
      // Stripe refused to tell (a rotated or restricted key, say): not recorded, so that Stripe
      // delivers the event again once it can be read, rather than a payment lost for good.
      logger.error(
        "Stripe refused to confirm a webhook's object; the event is left for Stripe to redeliver",
        metadata: ["event_id": "\(event.id)", "error": "\(error.description)"])
      throw APIStatus.status(
        .unavailable, "Stripe could not be asked about this event; retry later", reason: "PAYMENT_PROVIDER_UNAVAILABLE")
    }
    return .init()
  }

  private func applyStripe(_ intent: StripeObjects.PaymentIntent, delivery: PaymentStore.WebhookDelivery) async throws {
    var payment: PaymentRecord?
    if let id = intent.metadata?["payment_id"].flatMap(UUID.init(uuidString:)) {
      payment = try await store.payment(id)
    } else {
      payment = try await store.payment(provider: .stripe, providerPaymentID: intent.id)
    }
    guard let payment, payment.provider == .stripe,
      payment.providerPaymentID == nil || payment.providerPaymentID == intent.id
    else {
      logger.warning(
        "a Stripe webhook for a PaymentIntent of no payment here", metadata: ["payment_intent": "\(intent.id)"])
      return
    }
    guard let outcome = intent.outcome else { return }
    if outcome == .succeeded, intent.amount != payment.amountMinor || intent.currency.uppercased() != payment.currency {
      logger.error(
        "a Stripe PaymentIntent succeeded for another amount than its payment's; not applied",
        metadata: ["payment_id": "\(payment.id.lowercasedString)", "payment_intent": "\(intent.id)"])
      return
    }
    try await store.apply(outcome, to: payment.id, providerPaymentID: intent.id, delivery: delivery)
  }

  private func applyStripe(_ refund: StripeObjects.Refund, delivery: PaymentStore.WebhookDelivery?) async throws {
    var ours = try await store.refund(provider: .stripe, providerRefundID: refund.id)
    if ours == nil, let id = refund.metadata?["refund_id"].flatMap(UUID.init(uuidString:)) {
      ours = try await store.refund(id)
    }
    guard let ours else { return }
    try await store.recordRefund(ours.id, refund.outcome, delivery: delivery)
  }

  // MARK: PayFast

  func payfastWebhook(
    request: Mart_Payment_V1_PayfastWebhookRequest, context: ServerContext
  ) async throws -> Mart_Payment_V1_WebhookResponse {
    guard let payfast = calls.payfast else { _ = try calls.client(.payfast); return .init() }
    let config = payfast.settings
    let body = String(decoding: request.httpBody.data, as: UTF8.self)
    guard let fields = FormEncoding.decode(body), !fields.isEmpty else {
      throw APIStatus.invalid("http_body", "is not a form-encoded PayFast notification")
    }
    // Check 1: the signature, over the fields before `signature` as they were posted, blanks
    // included, plus the passphrase.
    guard let signatureIndex = fields.firstIndex(where: { $0.0 == "signature" }) else {
      throw Self.refusedITN("it has no signature", field: "signature")
    }
    let signed = Array(fields[..<signatureIndex])
    let expected = PayFastSignature.signature(signed, passphrase: config.passphrase)
    guard PayFastSignature.constantTimeEquals(expected, fields[signatureIndex].1) else {
      throw Self.refusedITN("its signature does not verify", field: "signature")
    }
    // Check 2: it comes from PayFast's addresses, as the gateway saw the caller.
    // (A direct caller is judged by its own address, whatever it claims.)
    let source = ForwardedClient.clientAddress(peer: context.remotePeer)
    guard let source, config.sourceRanges.contains(where: { $0.contains(source) }) else {
      logger.warning(
        "refused a PayFast ITN from outside PayFast's ranges",
        metadata: ["source": "\(source?.description ?? "unknown")"])
      throw APIStatus.status(
        .permissionDenied, "the notification does not come from PayFast's addresses",
        reason: "INVALID_WEBHOOK_SIGNATURE", metadata: ["field": "source_ip"])
    }
    // Only what the signature covers is read.
    var values: [String: String] = [:]
    for (name, value) in signed where values[name] == nil { values[name] = value }
    guard values["merchant_id"] == config.merchantID else {
      throw Self.refusedITN("it is for another merchant", field: "merchant_id")
    }
    guard let paymentID = values["m_payment_id"].flatMap(UUID.init(uuidString:)),
      let payment = try await store.payment(paymentID), payment.provider == .payfast
    else {
      logger.warning("a PayFast ITN for no payment here")
      return .init()
    }
    // Check 3: the amount is the payment's.
    guard let gross = values["amount_gross"].flatMap(PayFastAmount.parse), gross == payment.amountMinor else {
      logger.error(
        "refused a PayFast ITN whose amount is not the payment's",
        metadata: ["payment_id": "\(payment.id.lowercasedString)"])
      throw Self.refusedITN("amount_gross is not the payment's amount", field: "amount_gross")
    }
    // Check 4: PayFast confirms, server to server, that it sent exactly this.
    let confirmed: Bool
    do {
      confirmed = try await payfast.confirms(PayFastSignature.parameterString(signed))
    } catch let error as ProviderUnavailable {
      throw APIStatus.status(
        .unavailable, "PayFast could not confirm the notification; retry later", reason: "PAYMENT_PROVIDER_UNAVAILABLE",
        metadata: ["detail": error.description])
    }
    guard confirmed else { throw Self.refusedITN("PayFast does not confirm it", field: "http_body") }

    guard let pfPaymentID = values["pf_payment_id"], !pfPaymentID.isEmpty, let status = values["payment_status"]
    else { throw Self.refusedITN("pf_payment_id or payment_status is missing", field: "pf_payment_id") }
    let delivery = PaymentStore.WebhookDelivery(
      provider: .payfast, eventID: "\(pfPaymentID):\(status)", payload: [UInt8](request.httpBody.data))
    switch status {
    case "COMPLETE":
      try await store.apply(.succeeded, to: payment.id, providerPaymentID: pfPaymentID, delivery: delivery)
    case "FAILED", "CANCELLED":
      try await store.apply(
        .failed(code: "payfast_\(status.lowercased())", message: "PayFast reports the payment \(status.lowercased())"),
        to: payment.id, providerPaymentID: pfPaymentID, delivery: delivery)
    default:
      try await store.record(delivery)
    }
    return .init()
  }

  static func refusedITN(_ why: String, field: String) -> GoogleRPCStatus {
    APIStatus.status(
      .invalidArgument, "the PayFast notification was refused: \(why)", reason: "INVALID_WEBHOOK_SIGNATURE",
      metadata: ["field": field], extra: [.badRequest(violations: [.init(field: field, description: why)])])
  }
}
