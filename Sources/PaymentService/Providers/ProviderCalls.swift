import AsyncHTTPClient
import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import Metrics

/// The configured providers, and the calls to them that change a payment: starting it and
/// refunding it. The RPC handlers make these calls at once; the worker makes again those that
/// could not be made or whose outcome was not recorded. Each call carries an idempotency key
/// derived from our payment or refund id, so making it twice charges or refunds once.
struct ProviderCalls: Sendable {
  let store: PaymentStore
  let settings: PaymentSettings
  let sandbox: SandboxProvider?
  let stripe: StripeProvider?
  let payfast: PayFastProvider?
  let logger: Logger

  init(store: PaymentStore, settings: PaymentSettings, http: HTTPClient, logger: Logger) {
    let providerHTTP = ProviderHTTP(client: http, timeout: settings.providerTimeout)
    self.store = store
    self.settings = settings
    self.sandbox = settings.sandboxEnabled ? SandboxProvider() : nil
    self.stripe = settings.stripe.map { StripeProvider(settings: $0, http: providerHTTP) }
    self.payfast = settings.payfast.map { PayFastProvider(settings: $0, http: providerHTTP) }
    self.logger = logger
  }

  /// The provider, if it is configured; FAILED_PRECONDITION (PAYMENT_PROVIDER_UNAVAILABLE) if not.
  func client(_ kind: PaymentProvider) throws -> any PaymentProviderClient {
    let client: (any PaymentProviderClient)? =
      switch kind {
      case .sandbox: sandbox
      case .stripe: stripe
      case .payfast: payfast
      }
    guard let client else {
      throw APIStatus.status(
        .failedPrecondition, "the \(kind.rawValue) payment provider is not enabled on this mart",
        reason: "PAYMENT_PROVIDER_UNAVAILABLE", metadata: ["provider": kind.rawValue])
    }
    return client
  }

  /// How long a call in flight holds its row: past it, the worker takes the call over (its maker
  /// died, say), with the same idempotency key.
  var callLease: Duration { settings.providerTimeout * 2 + .seconds(5) }

  /// How long to wait before the next attempt of a call that failed `attempts` times.
  func backoff(after attempts: Int32) -> Duration {
    min(.milliseconds(500) * (1 << min(Int(attempts), 16)), settings.maximumRetryBackoff)
  }

  // MARK: Starting a payment

  /// Starts `payment` at its provider and records the outcome: what the customer needs next, and
  /// the sandbox's immediate result (applied through the path webhooks take). A provider that
  /// refuses fails the payment; one that does not answer leaves it PENDING for the worker and
  /// throws `ProviderUnavailable`.
  func start(_ payment: PaymentRecord, checkout: Checkout) async throws -> (PaymentRecord, ProviderStart) {
    let provider = try client(payment.provider)
    let start: ProviderStart
    do {
      start = try await provider.start(payment, checkout: checkout)
    } catch let error as ProviderUnavailable {
      logger.warning(
        "payment provider unavailable; the call will be retried",
        metadata: [
          "payment_id": "\(payment.id.lowercasedString)", "provider": "\(payment.provider.rawValue)",
          "error": "\(error.description)",
        ])
      try await store.recordCallFailure(
        payment: payment.id, error: error.description, backoff: backoff(after: payment.callAttempts))
      throw error
    } catch let error as ProviderRefused {
      logger.warning(
        "payment provider refused a payment",
        metadata: ["payment_id": "\(payment.id.lowercasedString)", "error": "\(error.description)"])
      let failed = try await store.apply(.failed(code: error.code, message: error.message), to: payment.id)
      return (failed ?? payment, ProviderStart())
    }
    var recorded = try await store.recordStart(payment.id, start)
    if let outcome = start.outcome,
      let applied = try await store.apply(outcome, to: payment.id, providerPaymentID: start.providerPaymentID)
    {
      recorded = applied
    }
    return (recorded, start)
  }

  /// Withdraws a cancelled, superseded or failed payment at its provider, so that its checkout
  /// can no longer be completed. A provider that does not answer: tried again with backoff. One
  /// that refuses (the PaymentIntent already succeeded, say): given up, as money that arrived is
  /// refunded as a surplus or by the order's rules.
  func withdraw(_ payment: PaymentRecord) async throws {
    do {
      try await client(payment.provider).cancel(payment)
    } catch let error as ProviderUnavailable {
      try await store.recordCallFailure(
        payment: payment.id, error: error.description, backoff: backoff(after: payment.callAttempts))
      return
    } catch {
      logger.warning(
        "could not withdraw a payment at its provider",
        metadata: [
          "payment_id": "\(payment.id.lowercasedString)", "error": "\(APIStatus.redactedDescription(of: error))",
        ])
    }
    try await store.finishCall(payment.id)
  }

  /// Asks the provider how a started payment stands (PROCESSING, or PENDING with no news for a
  /// while) and applies what it says; asks again later if it is still undecided.
  func recheck(_ payment: PaymentRecord) async throws {
    let outcome: ProviderOutcome?
    do {
      outcome = try await client(payment.provider).lookUp(payment)
    } catch let error as ProviderUnavailable {
      try await store.recordCallFailure(
        payment: payment.id, error: error.description, backoff: backoff(after: payment.callAttempts))
      return
    }
    if let outcome, outcome != .processing {
      try await store.apply(outcome, to: payment.id)
    } else {
      try await store.recheckLater(payment.id)
    }
  }

  // MARK: Refunding

  /// Asks the provider for a PENDING refund and records the answer. Unanswered: left due for the
  /// worker, with backoff. Refused: the refund FAILED.
  @discardableResult
  func refund(_ refund: RefundRecord) async throws -> PaymentRecord? {
    guard let payment = try await store.payment(refund.paymentID) else { return nil }
    let outcome: RefundOutcome
    do {
      // Asked for already and pending there: look, rather than ask again (a repeated POST with
      // the same key only replays Stripe's first answer, and only for a day).
      if refund.providerRefundID != nil {
        outcome = try await client(payment.provider).lookUp(refund)
      } else {
        outcome = try await client(payment.provider).refund(refund, of: payment)
      }
    } catch let error as ProviderUnavailable {
      logger.warning(
        "refund provider unavailable; the call will be retried",
        metadata: ["refund_id": "\(refund.id.lowercasedString)", "error": "\(error.description)"])
      try await store.recordRefundCallFailure(
        refund.id, error: error.description, backoff: backoff(after: refund.callAttempts))
      return try await store.payment(refund.paymentID)
    } catch let error as ProviderRefused {
      outcome = .failed(providerRefundID: nil, message: error.description)
    } catch let error as GoogleRPCStatus {
      // The provider is no longer configured: the refund cannot be made here.
      outcome = .failed(providerRefundID: nil, message: error.message)
    }
    if case .failed = outcome {
      // Money that should go back did not: someone has to look (README: "Payments").
      Counter(label: "mart_payment_refunds_failed_total", dimensions: [("provider", payment.provider.rawValue)])
        .increment()
    }
    return try await store.recordRefund(refund.id, outcome)
  }
}
