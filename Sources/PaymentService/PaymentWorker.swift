import Foundation
import Logging
import MartProto
import MartRuntime
import Metrics
import ServiceLifecycle

/// Makes the provider calls the payment database says are due: a payment's start that timed
/// out or met a 5xx (or whose process died before recording the answer), the withdrawal of a
/// superseded or cancelled payment, and refunds, which events and admins ask for as rows. Each call carries the idempotency key of its payment or
/// refund, so a call made twice has one effect. A call that fails again waits longer (capped
/// backoff); none is dropped. A payment whose order's deadline passed is no longer started.
///
/// Woken by `NOTIFY` when a transaction that leaves a call due commits, and otherwise looks every
/// `workerPollInterval`.
struct PaymentWorker: Service {
  static let batchSize = 16

  let store: PaymentStore
  let calls: ProviderCalls
  let settings: PaymentSettings
  let logger: Logger
  private let wakeup = Wakeup()

  init(store: PaymentStore, calls: ProviderCalls, settings: PaymentSettings, logger: Logger) {
    self.store = store
    self.calls = calls
    self.settings = settings
    var logger = logger
    logger[metadataKey: "component"] = "payment-worker"
    self.logger = logger
  }

  func run() async throws {
    await cancelWhenGracefulShutdown {
      await withDiscardingTaskGroup { group in
        group.addTask {
          await Wakeup.listen(
            on: PaymentStore.workerChannel, database: store.database, wakeup: wakeup, maximumBackoff: .seconds(10),
            logger: logger)
        }
        group.addTask { await work() }
      }
    }
  }

  private func work() async {
    let lease = calls.callLease
    while !Task.isCancelled {
      var taken = 0
      do {
        let payments = try await store.leaseDuePayments(limit: Self.batchSize, lease: lease)
        let refunds = try await store.leaseDueRefunds(limit: Self.batchSize, lease: lease)
        taken = payments.count + refunds.count
        await withDiscardingTaskGroup { group in
          for payment in payments { group.addTask { await makeDueCall(payment) } }
          for refund in refunds { group.addTask { await perform(refund) } }
        }
      } catch {
        if Task.isCancelled { return }
        logger.warning(
          "could not take due provider calls; retrying",
          metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      }
      if taken > 0 { continue }
      await wakeup.wait(upTo: settings.workerPollInterval)
    }
  }

  /// The call a payment is due for: withdrawing it (cancelled or failed), asking how it stands
  /// (started, undecided), or starting it (unless its order's deadline has passed).
  func makeDueCall(_ payment: PaymentRecord) async {
    do {
      if payment.status == .cancelled || payment.status == .failed {
        try await calls.withdraw(payment)
        return
      }
      if payment.providerPaymentID != nil {
        try await calls.recheck(payment)
        return
      }
      if let deadline = payment.orderDeadline, deadline < Date() {
        try await store.apply(.cancelled, to: payment.id)
        return
      }
      let checkout = Checkout(
        returnURL: nil, cancelURL: nil, sandboxOutcome: .stayPending, customerName: "",
        itemName: "Order \(payment.orderNumber ?? payment.orderID.lowercasedString)")
      _ = try await calls.start(payment, checkout: checkout)
      Counter(label: "mart_payment_provider_retries_total", dimensions: [("call", "start")]).increment()
    } catch is ProviderUnavailable {
      // Recorded with its backoff by the call.
      Counter(label: "mart_payment_provider_failures_total", dimensions: [("call", "start")]).increment()
    } catch {
      logger.warning(
        "could not make a payment's provider call",
        metadata: [
          "payment_id": "\(payment.id.lowercasedString)", "error": "\(APIStatus.redactedDescription(of: error))",
        ])
    }
  }

  func perform(_ refund: RefundRecord) async {
    do {
      try await calls.refund(refund)
      Counter(label: "mart_payment_refund_calls_total").increment()
    } catch {
      Counter(label: "mart_payment_provider_failures_total", dimensions: [("call", "refund")]).increment()
      logger.warning(
        "could not refund at the provider; retrying",
        metadata: [
          "refund_id": "\(refund.id.lowercasedString)", "error": "\(APIStatus.redactedDescription(of: error))",
        ])
    }
  }
}
