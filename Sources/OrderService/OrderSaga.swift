import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime
import Metrics
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The order saga's worker: performs the steps the order database says are due.
///
/// A step is a row of `order_saga_steps`, written in the transaction of the change that calls
/// for it (see OrderStore), so it is persisted before it is acted on. The worker leases due
/// steps, performs each (a call to the inventory service, idempotent by order id), and records
/// the outcome with the order's row locked, marking the step done in that same transaction. A
/// step that fails is retried with capped exponential backoff, never dropped; its failures are
/// in the step's row, the order's timeline and the `mart_order_saga_step_failures_total`
/// counter. A worker that dies mid-step leaves the step leased; when the lease passes it runs
/// again. Timeouts are steps with a due time, so they survive restarts too.
///
/// Woken by `NOTIFY` when a transaction that schedules a step commits, and otherwise looks every
/// `sagaPollInterval` (for steps that come due by time, and as a safety net).
public struct OrderSaga: Service {
  static let channel = "mart_order_saga"
  static let batchSize = 32

  let store: OrderStore
  let inventory: any Mart_Inventory_V1_InventoryService.ClientProtocol
  let settings: OrderSettings
  let backlog: OrderSagaBacklog
  let logger: Logger
  private let wakeup = Wakeup()

  init(
    store: OrderStore, inventory: any Mart_Inventory_V1_InventoryService.ClientProtocol, settings: OrderSettings,
    backlog: OrderSagaBacklog, logger: Logger
  ) {
    self.store = store
    self.inventory = inventory
    self.settings = settings
    self.backlog = backlog
    var logger = logger
    logger[metadataKey: "component"] = "order-saga"
    self.logger = logger
  }

  public func run() async throws {
    await cancelWhenGracefulShutdown {
      await withDiscardingTaskGroup { group in
        group.addTask {
          await Wakeup.listen(
            on: Self.channel, database: store.database, wakeup: wakeup, maximumBackoff: .seconds(10), logger: logger)
        }
        group.addTask { await work() }
      }
    }
  }

  private func work() async {
    var lastPrune = ContinuousClock.now - .seconds(3600)
    var lastGauges = ContinuousClock.now - .seconds(3600)
    while !Task.isCancelled {
      var leased = 0
      do {
        let (steps, oldestWait) = try await store.leaseDueSteps(limit: Self.batchSize, lease: settings.stepLease)
        backlog.record(oldestWait)
        leased = steps.count
        // Steps of one batch belong to different orders or are of different kinds; each records
        // its outcome under its order's lock, so they may run side by side.
        await withDiscardingTaskGroup { group in
          for step in steps { group.addTask { await perform(step) } }
        }
        if ContinuousClock.now - lastPrune > .seconds(600) {
          try await store.pruneKeys(olderThan: settings.idempotencyKeyTTL)
          lastPrune = .now
        }
        if ContinuousClock.now - lastGauges > .seconds(15) {
          try await recordStepGauges()
          lastGauges = .now
        }
      } catch {
        if Task.isCancelled { return }
        logger.warning(
          "could not take due saga steps; retrying", metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      }
      if leased == Self.batchSize { continue }
      await wakeup.wait(upTo: settings.sagaPollInterval)
    }
  }

  /// Saga instances by the step they wait on (a reservation, the payment deadline, a commit, a
  /// compensation), those retrying after failures, and the age of the oldest overdue step: what
  /// the "saga stuck" alert watches (`mart_order_saga_step_overdue_seconds`).
  private func recordStepGauges() async throws {
    let counts = try await store.openStepCounts()
    for kind in SagaStepKind.allCases {
      let count = counts[kind] ?? (0, 0, 0)
      let dimensions = [("kind", kind.rawValue)]
      Gauge(label: "mart_order_saga_steps_open", dimensions: dimensions).record(count.open)
      Gauge(label: "mart_order_saga_steps_retrying", dimensions: dimensions).record(count.retrying)
      Gauge(label: "mart_order_saga_step_overdue_seconds", dimensions: dimensions).record(count.overdueSeconds)
    }
  }

  /// Performs one leased step and records its outcome, or its failure, in a span that continues
  /// the trace of the change that scheduled it.
  func perform(_ step: SagaStepRecord) async {
    await MartTracing.withSpan("saga \(step.kind.rawValue)", continuing: step.traceparent) { span in
      span.attributes["mart.order.id"] = step.orderID.lowercasedString
      await performInSpan(step)
    }
  }

  private func performInSpan(_ step: SagaStepRecord) async {
    do {
      switch step.kind {
      case .reserveStock: try await reserveStock(step)
      case .commitStock: try await commitStock(step)
      case .releaseStock: try await releaseStock(step)
      case .returnStock: try await returnStock(step)
      case .paymentDeadline: try await paymentDeadlinePassed(step)
      }
      Counter(label: "mart_order_saga_steps_total", dimensions: [("kind", step.kind.rawValue)]).increment()
    } catch {
      let reason = APIStatus.redactedDescription(of: error.unwrappingTransactionError)
      let backoff = min(.milliseconds(200) * (1 << min(Int(step.attempts), 16)), settings.maximumStepBackoff)
      logger.warning(
        "saga step failed; retrying",
        metadata: [
          "order_id": "\(step.orderID.lowercasedString)", "step": "\(step.kind.rawValue)",
          "attempt": "\(step.attempts + 1)", "retry_in": "\(backoff)", "error": "\(reason)",
        ])
      Counter(label: "mart_order_saga_step_failures_total", dimensions: [("kind", step.kind.rawValue)]).increment()
      do {
        try await store.recordFailure(of: step, error: reason, backoff: backoff)
      } catch {
        // The lease runs out and the step is taken again: still not dropped.
        logger.warning(
          "could not record a saga step's failure",
          metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      }
    }
  }

  // MARK: Steps

  /// Reserves the order's stock, all or nothing, held past the payment deadline: AWAITING_PAYMENT
  /// (and the deadline scheduled), or CANCELLED (OUT_OF_STOCK) naming the short lines.
  func reserveStock(_ step: SagaStepRecord) async throws {
    let orderID = step.orderID
    guard let order = try await store.order(orderID) else { return }
    guard order.status == .pending else {
      // Moved on while the step waited (cancelled): nothing to reserve. A release is scheduled
      // with the cancellation, in case a reservation was made after all.
      try await store.change(orderID) { try await $0.complete(step) }
      return
    }
    let expiry = order.paymentDeadline.addingTimeInterval(settings.reservationGrace.timeInterval)
    let response = try await inventory.reserveStock(
      .with {
        $0.orderID = orderID.lowercasedString
        $0.lines = order.lines.map { line in
          .with {
            $0.productID = line.productID.lowercasedString
            $0.quantity = Int32(clamping: line.quantity)
          }
        }
        $0.expireTime = .init(date: expiry)
      }, options: callOptions)
    switch response.outcome {
    case .reservation:
      try await store.change(orderID) { change in
        try await change.complete(step)
        switch change.order.status {
        case .pending:
          try await change.update { $0.status = .awaitingPayment }
          try await change.note(.stockReserved, "Stock reserved for \(order.itemCount) item(s)", actor: .system)
          try await change.schedule(.paymentDeadline, at: change.order.paymentDeadline)
          if change.order.paymentReceivedAt != nil { try await change.schedule(.commitStock) }
        case .cancelled:
          // Cancelled while the reservation was being made: give the stock back.
          try await change.schedule(.releaseStock)
        default:
          break
        }
      }
    case .insufficientStock(let insufficient):
      let skus = Dictionary(order.lines.map { ($0.productID.lowercasedString, $0.sku) }) { first, _ in first }
      let short = insufficient.shortLines.map {
        "\(skus[$0.productID] ?? $0.productID) (ordered \($0.requested), available \($0.available))"
      }
      let note = "Out of stock: " + short.joined(separator: ", ")
      try await store.change(orderID) { change in
        try await change.complete(step)
        guard change.order.status == .pending else { return }
        try await change.note(.stockReservationFailed, note, actor: .system)
        try await change.cancel(reason: .outOfStock, note: note, actor: .system, releaseStock: false)
      }
    case nil:
      throw RPCError(code: .internalError, message: "ReserveStock answered without an outcome")
    }
  }

  /// Turns the reservation into a sale once the payment is in: PAID.
  func commitStock(_ step: SagaStepRecord) async throws {
    let orderID = step.orderID
    guard let order = try await store.order(orderID) else { return }
    guard order.status == .awaitingPayment, order.paymentReceivedAt != nil else {
      try await store.change(orderID) { try await $0.complete(step) }
      return
    }
    if order.refundedAt != nil {
      // The payment was refunded (by an admin) before its stock was committed: nothing is paid
      // for any more, so the order is cancelled and its reservation released, not sold.
      try await store.change(orderID) { change in
        try await change.complete(step)
        guard change.order.status == .awaitingPayment else { return }
        try await change.cancel(
          reason: .adminRequest, note: "The payment was refunded before the order was paid", actor: .system,
          releaseStock: true)
      }
      return
    }
    do {
      _ = try await inventory.commitReservation(
        .with { $0.orderID = orderID.lowercasedString }, options: callOptions)
    } catch let error as RPCError where error.code == .failedPrecondition || error.code == .notFound {
      // The reservation lapsed before the payment was recorded (the grace was too short, or the
      // saga was down that long): the stock may be sold to someone else. Cancel, and say the
      // order was paid, so that the payment service refunds it.
      try await store.change(orderID) { change in
        try await change.complete(step)
        guard change.order.status == .awaitingPayment else { return }
        try await change.cancel(
          reason: .outOfStock, note: "The stock reservation lapsed before the payment was recorded; refunding",
          actor: .system, releaseStock: false)
      }
      return
    }
    try await store.change(orderID) { change in
      try await change.complete(step)
      guard change.order.status == .awaitingPayment, let received = change.order.paymentReceivedAt else { return }
      try await change.note(.stockCommitted, "Stock committed", actor: .system)
      try await change.update {
        $0.status = .paid
        $0.paidAt = received
      }
      let paid = change.order
      try await change.note(
        .paid, "Paid \(Mart_Common_V1_Money.displayText(minor: paid.totalMinor, currency: paid.currency))",
        actor: .system)
      try await change.publish(
        Mart_Order_V1_OrderPaid.with {
          $0.orderID = paid.id.lowercasedString
          $0.orderNumber = paid.number
          $0.userID = paid.userID.lowercasedString
          $0.paymentID = paid.paymentID?.lowercasedString ?? ""
          $0.amount = paid.money(paid.paidAmountMinor ?? paid.totalMinor)
          $0.payTime = .init(date: received)
        })
    }
  }

  /// Gives the reservation back (the order was cancelled before it shipped). Nothing reserved
  /// (NOT_FOUND) is done too.
  func releaseStock(_ step: SagaStepRecord) async throws {
    try await compensate(step, note: "Stock released") { orderID in
      _ = try await inventory.releaseReservation(
        .with {
          $0.orderID = orderID
          $0.reason = "order cancelled"
        }, options: callOptions)
    }
  }

  /// Puts a cancelled paid order's committed stock back on the shelf. Nothing committed
  /// (NOT_FOUND) is done too.
  func returnStock(_ step: SagaStepRecord) async throws {
    try await compensate(step, note: "Stock returned to the shelf") { orderID in
      _ = try await inventory.returnReservation(
        .with {
          $0.orderID = orderID
          $0.reason = "order cancelled after payment"
        }, options: callOptions)
    }
  }

  /// A stock compensation: the inventory call (idempotent by order id), then the step done and,
  /// if the inventory had something to give back, the timeline entry.
  private func compensate(
    _ step: SagaStepRecord, note: String, _ call: (_ orderID: String) async throws -> Void
  ) async throws {
    let orderID = step.orderID
    let changed: Bool
    do {
      try await call(orderID.lowercasedString)
      changed = true
    } catch let error as RPCError where error.code == .notFound {
      changed = false
    }
    try await store.change(orderID) { change in
      try await change.complete(step)
      if changed { try await change.note(.stockReleased, note, actor: .system) }
    }
  }

  /// The payment deadline: an order still unpaid is cancelled (PAYMENT_TIMEOUT) and its stock
  /// released. A payment received in time (even if its stock is still being committed) stands.
  func paymentDeadlinePassed(_ step: SagaStepRecord) async throws {
    let orderID = step.orderID
    try await store.change(orderID) { change in
      try await change.complete(step)
      guard [.pending, .awaitingPayment].contains(change.order.status), change.order.paymentReceivedAt == nil
      else { return }
      try await change.cancel(
        reason: .paymentTimeout, note: "Not paid by the payment deadline", actor: .system, releaseStock: true)
    }
  }

  var callOptions: CallOptions {
    var options = CallOptions.defaults
    options.timeout = settings.stepTimeout
    // An unreachable service fails the attempt at once (it is retried with backoff), rather than
    // holding the step until the timeout.
    options.waitForReady = false
    return options
  }
}

extension OrderChange {
  /// Cancels the order: CANCELLED with its reason, the timeline entry, OrderCancelled (saying
  /// whether it was paid, so that the payment service refunds), no more payment deadline, and
  /// the reservation released if there may be one.
  mutating func cancel(
    reason: CancelReason, note: String?, actor: Actor, releaseStock: Bool, returnStock: Bool = false
  ) async throws {
    let now = Date()
    try await update {
      $0.status = .cancelled
      $0.cancelReason = reason
      $0.cancelNote = note
      $0.cancelledAt = now
    }
    let order = self.order
    try await self.note(.cancelled, "Cancelled: \(note ?? reason.rawValue)", actor: actor)
    try await finish(.paymentDeadline)
    try await finish(.commitStock)
    if releaseStock { try await schedule(.releaseStock) }
    if returnStock { try await schedule(.returnStock) }
    try await publish(
      Mart_Order_V1_OrderCancelled.with {
        $0.orderID = order.id.lowercasedString
        $0.orderNumber = order.number
        $0.userID = order.userID.lowercasedString
        $0.reason = reason.proto
        $0.note = note ?? ""
        $0.wasPaid = order.paymentID != nil
        $0.paymentID = order.paymentID?.lowercasedString ?? ""
        if let paid = order.paidAmountMinor { $0.paidAmount = order.money(paid) }
        $0.lines = order.lines.map { $0.proto(currency: order.currency) }
        $0.cancelTime = .init(date: now)
      })
  }
}

/// How far behind the saga worker is: how long the oldest step of its last batch had been due
/// when the worker took it. Shared with the CreateOrder handler, which refuses new orders while it
/// exceeds `OrderSettings.maximumSagaDelay`.
///
/// Why: the saga has no admission control of its own. Past the flat-out rate, every request was
/// still answered in about a second, but orders piled up behind the worker (measured: 40 orders/s
/// arriving against 26 flat-out left reservation and commit steps 12 s overdue, and placed to PAID
/// took 15 s). Shedding at the intake instead keeps the orders taken within the bound.
public final class OrderSagaBacklog: Sendable {
  private let delay = Mutex(Duration.zero)

  public init() {}

  /// The delay the worker's last lease found (zero when nothing was due).
  public var current: Duration { delay.withLock { $0 } }

  func record(_ oldestWait: Duration) {
    delay.withLock { $0 = oldestWait }
  }
}
