import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime
import PostgresNIO

/// The order database: orders with their lines and timeline, CreateOrder's idempotency keys, the
/// saga's steps, and the order events through the outbox.
///
/// Every change of an order happens in a transaction that holds the order's row lock (`SELECT
/// ... FOR UPDATE`), and writes, in that same transaction, its timeline entry, its event and
/// the saga step it calls for. Concurrent changes of one order (a cancellation racing a payment,
/// two saga workers) are therefore serialised, and each sees the other's outcome; the schema's
/// transition trigger is the net under that rule.
struct OrderStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  // MARK: Idempotency keys

  /// What a CreateOrder with an idempotency key may do.
  enum KeyClaim: Equatable {
    /// The key is this request's now: place the order (and `completeKey` in its transaction).
    case claimed
    /// An earlier request with this key and payload placed this order: answer with it.
    case replay(UUID)
    /// An earlier request with this key and payload is still being processed.
    case inFlight
    /// The key was used with another payload.
    case reused
  }

  /// Claims `key` for `userID`'s request with this hash. An expired key (older than `ttl`) is
  /// forgotten first; a key left in flight longer than `inFlightLease` (its request's process
  /// died) is taken over.
  func claimKey(userID: UUID, key: String, requestHash: [UInt8], ttl: Duration, inFlightLease: Duration)
    async throws -> KeyClaim
  {
    let hash = ByteBuffer(bytes: requestHash)
    return try await database.transaction(logger: logger) { connection in
      try await connection.query(
        """
        DELETE FROM idempotency_keys
        WHERE user_id = \(userID) AND key = \(key)
          AND created_at < now() - \(ttl.microseconds) * interval '1 microsecond'
        """, logger: logger)
      let inserted = try await connection.query(
        """
        INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES (\(userID), \(key), \(hash))
        ON CONFLICT (user_id, key) DO NOTHING
        RETURNING true
        """, logger: logger)
      for try await _ in inserted.decode(Bool.self) { return .claimed }
      let rows = try await connection.query(
        """
        SELECT order_id, request_hash = \(hash),
               created_at < now() - \(inFlightLease.microseconds) * interval '1 microsecond'
        FROM idempotency_keys WHERE user_id = \(userID) AND key = \(key)
        FOR UPDATE
        """, logger: logger)
      for try await (orderID, samePayload, abandoned) in rows.decode((UUID?, Bool, Bool).self) {
        guard samePayload else { return .reused }
        if let orderID { return .replay(orderID) }
        guard abandoned else { return .inFlight }
        try await connection.query(
          "UPDATE idempotency_keys SET created_at = now() WHERE user_id = \(userID) AND key = \(key)",
          logger: logger)
        return .claimed
      }
      // Deleted by a concurrent expiry between the two statements: the caller may try again.
      return .inFlight
    }
  }

  /// Lets go of a claimed key whose request failed before it placed an order, so that the
  /// client's corrected retry with the same key is processed afresh.
  ///
  /// Also when the request failed because it was cancelled (its client gave up, or its deadline
  /// passed), which is when a retry with the key is most likely: the release runs in a task of
  /// its own, which the call's cancellation does not reach. Run in the call's task, its query was
  /// refused at once, and each retry got 409 until the in-flight lease ran out (measured: 29 at
  /// 1,000 concurrent customers).
  func abandonKey(userID: UUID, key: String) async {
    let (database, logger) = (database, logger)
    await Task {
      do {
        try await database.query(
          "DELETE FROM idempotency_keys WHERE user_id = \(userID) AND key = \(key) AND order_id IS NULL",
          logger: logger)
      } catch {
        // The in-flight lease frees it later anyway.
        logger.warning(
          "could not release an idempotency key", metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      }
    }.value
  }

  /// The open saga steps by kind: how many, how many are retrying after a failure, and how long
  /// the oldest due one has been waiting (seconds; 0 when none is due). Read by the partial index
  /// of open steps.
  func openStepCounts() async throws -> [SagaStepKind: (open: Int, retrying: Int, overdueSeconds: Double)] {
    let rows = try await database.query(
      """
      SELECT kind, count(*)::int8, (count(*) FILTER (WHERE attempts > 0))::int8,
             coalesce(extract(epoch FROM now() - min(due_at) FILTER (WHERE due_at <= now())), 0)::float8
      FROM order_saga_steps WHERE done_at IS NULL GROUP BY kind
      """, logger: logger)
    var counts: [SagaStepKind: (open: Int, retrying: Int, overdueSeconds: Double)] = [:]
    for try await (kind, open, retrying, overdue) in rows.decode((String, Int64, Int64, Double).self) {
      if let kind = SagaStepKind(rawValue: kind) { counts[kind] = (Int(open), Int(retrying), overdue) }
    }
    return counts
  }

  /// Forgets keys older than `ttl` (the saga worker calls this now and then).
  func pruneKeys(olderThan ttl: Duration) async throws {
    try await database.query(
      "DELETE FROM idempotency_keys WHERE created_at < now() - \(ttl.microseconds) * interval '1 microsecond'",
      logger: logger)
  }

  // MARK: Placing

  /// Stores a priced order, PENDING, with its lines, its first timeline entry, its OrderPlaced
  /// event and the saga's first step (reserve the stock, due now), all in one transaction; and
  /// binds the idempotency key, if any, to it.
  func place(
    userID: UUID, request: OrderRequest, lines: [OrderLineRecord], currency: String, subtotalMinor subtotal: Int64,
    shippingFeeMinor: Int64, provider: PaymentProvider, paymentWindow: Duration
  ) async throws -> OrderRecord {
    let address = request.shippingAddress
    let addressLines = address.lines
    let line2: String? = addressLines.count > 1 ? addressLines[1] : nil
    let line3: String? = addressLines.count > 2 ? addressLines[2] : nil
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        INSERT INTO orders (
          user_id, currency, subtotal_minor, shipping_fee_minor, total_minor, shipping_recipient_name,
          shipping_line1, shipping_line2, shipping_line3, shipping_city, shipping_region, shipping_postal_code,
          shipping_country_code, shipping_phone, payment_provider, payment_deadline, customer_note)
        VALUES (
          \(userID), \(currency), \(subtotal), \(shippingFeeMinor), \(subtotal + shippingFeeMinor),
          \(address.recipientName), \(addressLines.first ?? ""), \(line2), \(line3), \(address.city),
          \(address.region), \(address.postalCode), \(address.countryCode), \(address.phone), \(provider.rawValue),
          now() + \(paymentWindow.microseconds) * interval '1 microsecond', \(request.customerNote))
        RETURNING \(unescaped: OrderRecord.columns)
        """, logger: logger)
      guard var order = try await Self.orders(rows).first else {
        throw PostgresStoreError("INSERT INTO orders returned no row")
      }
      try await connection.query(
        """
        INSERT INTO order_lines (order_id, line_no, product_id, sku, name, image_url, unit_price_minor, quantity,
                                 line_total_minor)
        SELECT \(order.id), l.line_no, l.product_id, l.sku, l.name, NULLIF(l.image_url, ''), l.unit_price_minor,
               l.quantity, l.unit_price_minor * l.quantity
        FROM unnest(\(Array(1...lines.count))::int[], \(lines.map(\.productID))::uuid[], \(lines.map(\.sku))::text[],
                    \(lines.map(\.name))::text[], \(lines.map { $0.imageURL ?? "" })::text[],
                    \(lines.map(\.unitPriceMinor))::int8[], \(lines.map(\.quantity))::int8[])
          AS l(line_no, product_id, sku, name, image_url, unit_price_minor, quantity)
        """, logger: logger)
      order.lines = lines
      if let key = request.idempotencyKey {
        try await connection.query(
          "UPDATE idempotency_keys SET order_id = \(order.id) WHERE user_id = \(userID) AND key = \(key)",
          logger: logger)
      }
      try await appendTimeline(
        order, .placed, "Order \(order.number) placed: \(order.itemCount) item(s)", actor: .user(userID),
        on: connection)
      try await schedule(.reserveStock, for: order.id, on: connection)
      try await publish(Self.placedEvent(order), of: order, on: connection)
      return order
    }
  }

  // MARK: Reading

  /// The order with its lines; nil if there is none, or it is not `ownerID`'s (when given).
  func order(_ id: UUID, ownerID: UUID? = nil) async throws -> OrderRecord? {
    try await database.withConnection { connection in
      try await order(id, ownerID: ownerID, lock: false, on: connection)
    }
  }

  func order(_ id: UUID, ownerID: UUID? = nil, lock: Bool, on connection: PostgresConnection) async throws
    -> OrderRecord?
  {
    let rows = try await connection.query(
      """
      SELECT \(unescaped: OrderRecord.columns) FROM orders
      WHERE id = \(id) AND (\(ownerID)::uuid IS NULL OR user_id = \(ownerID))
      \(unescaped: lock ? "FOR UPDATE" : "")
      """, logger: logger)
    guard var order = try await Self.orders(rows).first else { return nil }
    order.lines = try await lines(of: [id], on: connection)[id] ?? []
    return order
  }

  /// Orders newest first (at most `limit + 1`), of one user and in one status when given,
  /// after `cursor`.
  func orders(userID: UUID?, status: OrderStatus?, after cursor: OrderCursor?, limit: Int) async throws
    -> [OrderRecord]
  {
    try await database.withConnection { connection in
      let rows = try await connection.query(
        """
        SELECT \(unescaped: OrderRecord.columns) FROM orders
        WHERE (\(userID)::uuid IS NULL OR user_id = \(userID))
          AND (\(status?.rawValue)::text IS NULL OR status = \(status?.rawValue))
          AND (\(cursor?.micros)::int8 IS NULL
               OR (created_at, id)
                  < ('epoch'::timestamptz + \(cursor?.micros)::int8 * interval '1 microsecond', \(cursor?.id)))
        ORDER BY created_at DESC, id DESC
        LIMIT \(limit + 1)
        """, logger: logger)
      var orders = try await Self.orders(rows)
      let lines = try await lines(of: orders.map(\.id), on: connection)
      for index in orders.indices { orders[index].lines = lines[orders[index].id] ?? [] }
      return orders
    }
  }

  /// The order's timeline, oldest first, after entry `afterID` when given.
  func timeline(of orderID: UUID, afterID: Int64? = nil) async throws -> [TimelineRecord] {
    try await database.withConnection { try await timeline(of: orderID, afterID: afterID, on: $0) }
  }

  func timeline(of orderID: UUID, afterID: Int64? = nil, on connection: PostgresConnection) async throws
    -> [TimelineRecord]
  {
    let rows = try await connection.query(
      """
      SELECT \(unescaped: TimelineRecord.columns) FROM order_timeline
      WHERE order_id = \(orderID) AND (\(afterID)::int8 IS NULL OR id > \(afterID))
      ORDER BY id
      """, logger: logger)
    var entries: [TimelineRecord] = []
    for try await row in rows.decode(TimelineRecord.Row.self) { entries.append(TimelineRecord(row)) }
    return entries
  }

  private func lines(of orderIDs: [UUID], on connection: PostgresConnection) async throws -> [UUID: [OrderLineRecord]] {
    guard !orderIDs.isEmpty else { return [:] }
    let rows = try await connection.query(
      """
      SELECT order_id, \(unescaped: OrderLineRecord.columns) FROM order_lines
      WHERE order_id = ANY(\(orderIDs)) ORDER BY order_id, line_no
      """, logger: logger)
    var byOrder: [UUID: [OrderLineRecord]] = [:]
    for try await (orderID, productID, sku, name, imageURL, unitPrice, quantity) in rows.decode(
      (UUID, UUID, String, String, String?, Int64, Int64).self)
    {
      byOrder[orderID, default: []].append(
        OrderLineRecord(
          productID: productID, sku: sku, name: name, imageURL: imageURL, unitPriceMinor: unitPrice,
          quantity: quantity))
    }
    return byOrder
  }

  // MARK: Changing an order

  /// Runs `change` on the order, locked, in a transaction; NOT_FOUND if there is no such order
  /// (or it is not `ownerID`'s). `change` writes through `OrderChange`, which keeps the row, the
  /// timeline, the events and the saga's steps together.
  func change<Result: Sendable>(
    _ orderID: UUID, ownerID: UUID? = nil,
    _ body: @Sendable (inout OrderChange) async throws -> Result
  ) async throws -> Result {
    try await database.transaction(logger: logger) { connection in
      guard let order = try await order(orderID, ownerID: ownerID, lock: true, on: connection) else {
        throw APIStatus.notFound("order \(orderID.lowercasedString) not found")
      }
      var change = OrderChange(order: order, store: self, connection: connection)
      return try await body(&change)
    }
  }

  /// The order, locked, for a change inside the caller's transaction (an event handler's inbox
  /// transaction); nil if there is no such order.
  func change(_ orderID: UUID, on connection: PostgresConnection) async throws -> OrderChange? {
    guard let order = try await order(orderID, lock: true, on: connection) else { return nil }
    return OrderChange(order: order, store: self, connection: connection)
  }

  /// Saves the changed columns of `order` (whose row the transaction holds), bumping its version.
  func save(_ order: OrderRecord, on connection: PostgresConnection) async throws -> OrderRecord {
    let rows = try await connection.query(
      """
      UPDATE orders SET
        status = \(order.status.rawValue), payment_id = \(order.paymentID),
        payment_received_at = \(order.paymentReceivedAt), paid_amount_minor = \(order.paidAmountMinor),
        cancel_reason = \(order.cancelReason?.rawValue), cancel_note = \(order.cancelNote),
        carrier = \(order.carrier), tracking_number = \(order.trackingNumber), tracking_url = \(order.trackingURL),
        paid_at = \(order.paidAt), shipped_at = \(order.shippedAt), delivered_at = \(order.deliveredAt),
        cancelled_at = \(order.cancelledAt), refunded_at = \(order.refundedAt),
        version = version + 1, updated_at = now()
      WHERE id = \(order.id)
      RETURNING \(unescaped: OrderRecord.columns)
      """, logger: logger)
    guard var saved = try await Self.orders(rows).first else {
      throw PostgresStoreError("UPDATE orders returned no row")
    }
    saved.lines = order.lines
    return saved
  }

  func appendTimeline(
    _ order: OrderRecord, _ kind: TimelineKind, _ message: String, actor: Actor, on connection: PostgresConnection
  ) async throws {
    try await connection.query(
      """
      INSERT INTO order_timeline (order_id, kind, status, message, actor)
      VALUES (\(order.id), \(kind.rawValue), \(order.status.rawValue), \(message), \(actor.stored))
      """, logger: logger)
    // Watchers of the order (WatchOrder, in any process) hear of it at commit.
    try await connection.query(
      "SELECT pg_notify(\(OrderTimelineSignals.channel), \(order.id.lowercasedString))", logger: logger)
  }

  func publish<Event: DomainEvent>(_ event: Event, of order: OrderRecord, on connection: PostgresConnection)
    async throws
  {
    _ = try await outbox.append(
      event, aggregateType: "order", aggregateID: order.id.lowercasedString, on: connection, logger: logger)
  }

  // MARK: Saga steps

  /// Schedules the step (due at `dueAt`, default now). A step of that kind that already ran is
  /// armed again: a compensation called for twice (cancelled while the reservation was being
  /// made) runs twice, and each run is idempotent. The step continues the current trace.
  func schedule(_ kind: SagaStepKind, for orderID: UUID, at dueAt: Date? = nil, on connection: PostgresConnection)
    async throws
  {
    try await connection.query(
      """
      INSERT INTO order_saga_steps (order_id, kind, due_at, traceparent)
      VALUES (\(orderID), \(kind.rawValue), COALESCE(\(dueAt), now()), \(RequestContext.traceparent))
      ON CONFLICT (order_id, kind) DO UPDATE
        SET due_at = EXCLUDED.due_at, done_at = NULL, attempts = 0, last_error = NULL,
            generation = order_saga_steps.generation + 1, traceparent = EXCLUDED.traceparent
      """, logger: logger)
    // Delivered at commit: the saga worker wakes for it then, not a poll interval later.
    if dueAt == nil { try await connection.query("SELECT pg_notify(\(OrderSaga.channel), '')", logger: logger) }
  }

  /// Marks the step done (or, for one that has not run, no longer needed).
  func finish(_ kind: SagaStepKind, for orderID: UUID, on connection: PostgresConnection) async throws {
    try await connection.query(
      """
      UPDATE order_saga_steps SET done_at = now()
      WHERE order_id = \(orderID) AND kind = \(kind.rawValue) AND done_at IS NULL
      """, logger: logger)
  }

  /// Marks the step a worker leased done, unless it was armed again meanwhile (then it must run
  /// again, and stays due).
  func complete(_ step: SagaStepRecord, on connection: PostgresConnection) async throws {
    try await connection.query(
      """
      UPDATE order_saga_steps SET done_at = now()
      WHERE id = \(step.id) AND generation = \(step.generation) AND done_at IS NULL
      """, logger: logger)
  }

  /// Takes up to `limit` due steps for `lease`: until then no other worker takes them; after it,
  /// any worker does (this one died, or is slow).
  func leaseDueSteps(limit: Int, lease: Duration) async throws -> (steps: [SagaStepRecord], oldestWait: Duration) {
    // The lease moves due_at; the CTE keeps each step's due time from before it, to say how
    // long the oldest step taken had waited (the saga's queueing delay).
    let rows = try await database.query(
      """
      WITH due AS (
        SELECT id, due_at FROM order_saga_steps WHERE done_at IS NULL AND due_at <= now()
        ORDER BY due_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
      UPDATE order_saga_steps AS step SET due_at = now() + \(lease.microseconds) * interval '1 microsecond'
      FROM due WHERE step.id = due.id
      RETURNING step.id, step.order_id, step.kind, step.attempts, step.generation,
                (extract(epoch FROM now() - due.due_at) * 1000000)::int8, step.traceparent
      """, logger: logger)
    var steps: [SagaStepRecord] = []
    var oldestWait = Duration.zero
    for try await (id, orderID, kind, attempts, generation, waitedMicroseconds, traceparent) in rows.decode(
      (Int64, UUID, SagaStepKind, Int32, Int64, Int64, String?).self)
    {
      steps.append(
        SagaStepRecord(
          id: id, orderID: orderID, kind: kind, attempts: attempts, generation: generation, traceparent: traceparent))
      oldestWait = max(oldestWait, .microseconds(waitedMicroseconds))
    }
    return (steps, oldestWait)
  }

  /// Records a failed attempt: the step is due again after `backoff`. The first failure, and
  /// every tenth after it, goes into the order's timeline, so a compensation that keeps failing
  /// is visible where the order is.
  func recordFailure(of step: SagaStepRecord, error: String, backoff: Duration) async throws {
    try await database.transaction(logger: logger) { connection in
      // The order's row first, as every change of the order takes it: the other order would
      // deadlock with a change that re-arms this step.
      try await connection.query("SELECT 1 FROM orders WHERE id = \(step.orderID) FOR UPDATE", logger: logger)
      try await connection.query(
        """
        UPDATE order_saga_steps
        SET attempts = attempts + 1, last_error = \(error),
            due_at = now() + \(backoff.microseconds) * interval '1 microsecond'
        WHERE id = \(step.id) AND done_at IS NULL
        """, logger: logger)
      if step.attempts % 10 == 0 {
        try await connection.query(
          """
          INSERT INTO order_timeline (order_id, kind, status, message, actor)
          SELECT id, 'step_retrying', status, \("\(step.kind.rawValue) failed (attempt \(step.attempts + 1)): \(error)"), 'system'
          FROM orders WHERE id = \(step.orderID)
          """, logger: logger)
      }
    }
  }

  /// Steps not done, by kind, and how many of them have failed at least once (for the metrics).
  func pendingSteps() async throws -> [(kind: SagaStepKind, pending: Int64, failing: Int64)] {
    let rows = try await database.query(
      """
      SELECT kind, count(*)::int8, count(*) FILTER (WHERE attempts > 0)::int8
      FROM order_saga_steps WHERE done_at IS NULL GROUP BY kind
      """, logger: logger)
    var result: [(kind: SagaStepKind, pending: Int64, failing: Int64)] = []
    for try await (kind, pending, failing) in rows.decode((SagaStepKind, Int64, Int64).self) {
      result.append((kind, pending, failing))
    }
    return result
  }

  // MARK: Events

  static func placedEvent(_ order: OrderRecord) -> Mart_Order_V1_OrderPlaced {
    .with {
      $0.orderID = order.id.lowercasedString
      $0.orderNumber = order.number
      $0.userID = order.userID.lowercasedString
      $0.lines = order.lines.map { $0.proto(currency: order.currency) }
      $0.subtotal = order.money(order.subtotalMinor)
      $0.shippingFee = order.money(order.shippingFeeMinor)
      $0.total = order.money(order.totalMinor)
      $0.paymentProvider = order.paymentProvider.proto
      $0.shippingAddress = order.shippingAddress.proto
      $0.placeTime = .init(date: order.createdAt)
      $0.paymentDeadline = .init(date: order.paymentDeadline)
    }
  }

  // MARK: Rows

  static func orders(_ rows: PostgresRowSequence) async throws -> [OrderRecord] {
    var records: [OrderRecord] = []
    for try await row in rows.decode(OrderRecord.Row.self) { records.append(OrderRecord(row)) }
    return records
  }
}

/// One change of one locked order, inside its transaction: the order as it is now, and the
/// writes that go with a change (see `OrderStore.change`).
struct OrderChange: Sendable {
  private(set) var order: OrderRecord
  let store: OrderStore
  let connection: PostgresConnection

  init(order: OrderRecord, store: OrderStore, connection: PostgresConnection) {
    self.order = order
    self.store = store
    self.connection = connection
  }

  /// Applies `update` to the order and saves it.
  mutating func update(_ update: (inout OrderRecord) -> Void) async throws {
    var changed = order
    update(&changed)
    order = try await store.save(changed, on: connection)
  }

  func note(_ kind: TimelineKind, _ message: String, actor: Actor) async throws {
    try await store.appendTimeline(order, kind, message, actor: actor, on: connection)
  }

  func publish<Event: DomainEvent>(_ event: Event) async throws {
    try await store.publish(event, of: order, on: connection)
  }

  func schedule(_ kind: SagaStepKind, at dueAt: Date? = nil) async throws {
    try await store.schedule(kind, for: order.id, at: dueAt, on: connection)
  }

  func finish(_ kind: SagaStepKind) async throws {
    try await store.finish(kind, for: order.id, on: connection)
  }

  func complete(_ step: SagaStepRecord) async throws {
    try await store.complete(step, on: connection)
  }
}
