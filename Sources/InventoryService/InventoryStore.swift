import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import PostgresNIO

/// The inventory database: stock rows, the movements ledger, reservations, and their events
/// through the outbox.
///
/// Locking, so that concurrent calls cannot deadlock: a transaction that touches a reservation
/// locks the reservation row first, then the stock rows of its lines, always in product-id order
/// (`lockStock`); AdjustStock locks one stock row. Every change of on_hand or reserved is written
/// with its movement in the same transaction (the schema's ledger triggers check it), and the
/// schema's `reserved <= on_hand` check backs up the availability checks made here under the locks.
struct InventoryStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  static let stockColumns = StockRecord.columns
  static let movementColumns = MovementRecord.columns
  static let reservationColumns = ReservationRecord.columns

  // MARK: Stock

  /// Creates the stock row of a new product at zero; nothing if it exists (a redelivered event).
  func createStock(productID: UUID, on connection: PostgresConnection) async throws {
    try await connection.query(
      "INSERT INTO stock (product_id) VALUES (\(productID)) ON CONFLICT (product_id) DO NOTHING", logger: logger)
  }

  /// The stock rows of these products that exist, by product id.
  func stock(_ productIDs: [UUID]) async throws -> [UUID: StockRecord] {
    let rows = try await database.query(
      "SELECT \(unescaped: Self.stockColumns) FROM stock WHERE product_id = ANY(\(productIDs))", logger: logger)
    var byID: [UUID: StockRecord] = [:]
    for record in try await Self.stock(rows) { byID[record.productID] = record }
    return byID
  }

  /// Applies an admin's adjustment: NOT_FOUND without a stock row, FAILED_PRECONDITION
  /// (STOCK_WOULD_GO_NEGATIVE) if on_hand would drop below zero or below what is reserved. With a
  /// request id, a retry returns the movement recorded the first time.
  func adjust(_ adjustment: Adjustment) async throws -> (stock: StockRecord, movement: MovementRecord) {
    if let requestID = adjustment.requestID, let earlier = try await earlierAdjustment(requestID, adjustment) {
      return earlier
    }
    do {
      return try await database.transaction(logger: logger) { connection in
        let locked = try await Self.stock(
          connection.query(
            "SELECT \(unescaped: Self.stockColumns) FROM stock WHERE product_id = \(adjustment.productID) FOR UPDATE",
            logger: logger))
        guard let current = locked.first else {
          throw APIStatus.notFound(
            "product \(adjustment.productID.lowercasedString) has no stock record (it is created with the product)")
        }
        let onHand = current.onHand + adjustment.delta
        guard onHand >= 0, onHand >= current.reserved else { throw Self.wouldGoNegative(current, adjustment.delta) }
        guard onHand <= Int64(Int32.max) else {
          throw APIStatus.invalid("quantity_delta", "would take on-hand stock above \(Int32.max)")
        }
        let updated = try await Self.stock(
          connection.query(
            """
            UPDATE stock SET on_hand = \(onHand),
              low_stock_threshold = COALESCE(\(adjustment.threshold), low_stock_threshold),
              version = version + 1, updated_at = now()
            WHERE product_id = \(adjustment.productID)
            RETURNING \(unescaped: Self.stockColumns)
            """, logger: logger))
        guard let stock = updated.first else { throw RPCError(code: .internalError, message: "stock row vanished") }
        let movement = try await Self.movements(
          connection.query(
            """
            INSERT INTO stock_movements (product_id, kind, reason, on_hand_delta, reserved_delta, on_hand_after,
                                         reserved_after, note, actor_user_id, request_id)
            VALUES (\(adjustment.productID), 'adjustment', \(adjustment.reason.rawValue), \(adjustment.delta), 0,
                    \(stock.onHand), \(stock.reserved), \(adjustment.note), \(adjustment.actorUserID),
                    \(adjustment.requestID))
            RETURNING \(unescaped: Self.movementColumns)
            """, logger: logger)
        ).first
        guard let movement else { throw RPCError(code: .internalError, message: "the insert returned no row") }
        try await outbox.append(
          Mart_Inventory_V1_StockAdjusted.with {
            $0.productID = stock.productID.lowercasedString
            $0.quantityDelta = Int32(clamping: adjustment.delta)
            $0.reason = adjustment.reason.proto
            $0.note = adjustment.note ?? ""
            $0.actorUserID = adjustment.actorUserID.lowercasedString
            $0.stock = stock.proto()
            $0.movementID = movement.id.lowercasedString
          }, aggregateType: "stock", aggregateID: stock.productID.lowercasedString, on: connection, logger: logger)
        let checked = try await checkLowStock([stock], on: connection)
        return (checked.first ?? stock, movement)
      }
    } catch {
      let unwrapped = error.unwrappingTransactionError
      if error.postgresConstraint == "stock_movements_request_id_key", let requestID = adjustment.requestID,
        let earlier = try await earlierAdjustment(requestID, adjustment)
      {
        // A concurrent retry with the same key won the race.
        return earlier
      }
      if error.postgresSQLState == "23514",
        ["stock_reserved_within_on_hand", "stock_on_hand_nonnegative"].contains(error.postgresConstraint)
      {
        throw APIStatus.status(
          .failedPrecondition, "on-hand stock cannot drop below zero or below the reserved units",
          reason: "STOCK_WOULD_GO_NEGATIVE")
      }
      throw unwrapped
    }
  }

  /// The result of an earlier adjustment with this request id; ALREADY_EXISTS
  /// (IDEMPOTENCY_KEY_REUSED) if that was a different adjustment.
  private func earlierAdjustment(_ requestID: UUID, _ adjustment: Adjustment) async throws -> (
    stock: StockRecord, movement: MovementRecord
  )? {
    let rows = try await database.query(
      "SELECT \(unescaped: Self.movementColumns) FROM stock_movements WHERE request_id = \(requestID)", logger: logger)
    guard let movement = try await Self.movements(rows).first else { return nil }
    guard movement.productID == adjustment.productID, movement.onHandDelta == adjustment.delta,
      movement.reason == adjustment.reason, movement.note == adjustment.note
    else {
      throw APIStatus.status(
        .alreadyExists, "request_id was already used for a different adjustment", reason: "IDEMPOTENCY_KEY_REUSED")
    }
    let current = try await stock([movement.productID])[movement.productID] ?? .empty(movement.productID)
    var stock = current
    stock.onHand = movement.onHandAfter
    stock.reserved = movement.reservedAfter
    stock.updatedAt = movement.createdAt
    return (stock, movement)
  }

  static func wouldGoNegative(_ stock: StockRecord, _ delta: Int64) -> GoogleRPCStatus {
    APIStatus.status(
      .failedPrecondition,
      "on-hand stock cannot drop below zero or below the reserved units "
        + "(on hand \(stock.onHand), reserved \(stock.reserved), change \(delta))",
      reason: "STOCK_WOULD_GO_NEGATIVE",
      metadata: ["on_hand": "\(stock.onHand)", "reserved": "\(stock.reserved)"])
  }

  /// A product's movements, newest first (at most `limit + 1`), optionally of one kind, before
  /// ledger position `beforeSeq`.
  func movements(productID: UUID, kind: MovementKind?, beforeSeq: Int64?, limit: Int) async throws
    -> [MovementRecord]
  {
    let rows = try await database.query(
      """
      SELECT \(unescaped: Self.movementColumns) FROM stock_movements
      WHERE product_id = \(productID) AND (\(kind?.rawValue)::text IS NULL OR kind = \(kind?.rawValue))
        AND (\(beforeSeq)::bigint IS NULL OR seq < \(beforeSeq))
      ORDER BY seq DESC
      LIMIT \(limit + 1)
      """, logger: logger)
    return try await Self.movements(rows)
  }

  // MARK: Reservations

  /// Reserves every line or none. A repeated call for the same order returns the reservation as it
  /// is now (ALREADY_EXISTS (RESERVATION_CONFLICT) if the lines differ); a short line reserves
  /// nothing, records no reservation, and publishes StockReservationFailed.
  func reserve(orderID: UUID, lines: [LineRecord], ttl: Duration) async throws -> ReserveOutcome {
    let lines = lines.sorted { $0.productID.uuidString < $1.productID.uuidString }
    return try await database.transaction(logger: logger) { connection -> ReserveOutcome in
      // The key makes the call idempotent: a concurrent call for the same order waits here for
      // this transaction and then finds the reservation (or, if this one was short, makes its own
      // attempt).
      let inserted = try await Self.reservations(
        connection.query(
          """
          INSERT INTO reservations (order_id, expires_at)
          VALUES (\(orderID), now() + \(ttl.microseconds) * interval '1 microsecond')
          ON CONFLICT (order_id) DO NOTHING
          RETURNING \(unescaped: Self.reservationColumns)
          """, logger: logger)
      ).first
      guard var reservation = inserted else {
        guard let existing = try await reservation(orderID, lock: false, on: connection) else {
          throw RPCError(code: .aborted, message: "the reservation changed concurrently; retry")
        }
        guard Set(existing.lines) == Set(lines) else {
          throw APIStatus.status(
            .alreadyExists, "order \(orderID.lowercasedString) already has a reservation with other lines",
            reason: "RESERVATION_CONFLICT")
        }
        return .reserved(existing)
      }

      let productIDs = lines.map(\.productID)
      let locked = try await lockStock(productIDs, on: connection)
      let short = lines.compactMap { line -> ShortLineRecord? in
        let available = locked[line.productID]?.available ?? 0
        return line.quantity > available
          ? ShortLineRecord(productID: line.productID, requested: line.quantity, available: available) : nil
      }
      if !short.isEmpty {
        try await connection.query("DELETE FROM reservations WHERE order_id = \(orderID)", logger: logger)
        try await outbox.append(
          Mart_Inventory_V1_StockReservationFailed.with {
            $0.orderID = orderID.lowercasedString
            $0.shortLines = short.map(\.proto)
          }, aggregateType: "reservation", aggregateID: orderID.lowercasedString, on: connection, logger: logger)
        return .short(short)
      }

      let quantities = lines.map(\.quantity)
      let updated = try await changeStock(
        productIDs, quantities: quantities, onHandSign: 0, reservedSign: 1, kind: .reservation, orderID: orderID,
        on: connection)
      try await connection.query(
        """
        INSERT INTO reservation_lines (order_id, product_id, quantity)
        SELECT \(orderID), l.product_id, l.quantity
        FROM unnest(\(productIDs)::uuid[], \(quantities)::bigint[]) AS l(product_id, quantity)
        """, logger: logger)
      reservation.lines = lines
      try await outbox.append(
        Mart_Inventory_V1_StockReserved.with {
          $0.orderID = orderID.lowercasedString
          $0.lines = lines.map(\.proto)
        }, aggregateType: "reservation", aggregateID: orderID.lowercasedString, on: connection, logger: logger)
      _ = try await checkLowStock(updated, on: connection)
      return .reserved(reservation)
    }
  }

  /// Turns an active reservation into a sale. NOT_FOUND without one; a committed one is returned
  /// unchanged; FAILED_PRECONDITION (RESERVATION_NOT_ACTIVE) for a released one.
  func commit(orderID: UUID) async throws -> ReservationRecord {
    try await database.transaction(logger: logger) { connection in
      guard let reservation = try await reservation(orderID, lock: true, on: connection) else {
        throw APIStatus.notFound("no reservation for order \(orderID.lowercasedString)")
      }
      switch reservation.status {
      case .committed, .returned: return reservation
      case .released: throw Self.notActive(reservation, action: "commit")
      case .active: break
      }
      let productIDs = reservation.lines.map(\.productID)
      _ = try await lockStock(productIDs, on: connection)
      let updated = try await changeStock(
        productIDs, quantities: reservation.lines.map(\.quantity), onHandSign: -1, reservedSign: -1, kind: .commit,
        orderID: orderID, on: connection)
      let committed = try await setStatus(reservation, .committed, reason: nil, on: connection)
      try await outbox.append(
        Mart_Inventory_V1_StockCommitted.with {
          $0.orderID = orderID.lowercasedString
          $0.lines = reservation.lines.map(\.proto)
        }, aggregateType: "reservation", aggregateID: orderID.lowercasedString, on: connection, logger: logger)
      _ = try await checkLowStock(updated, on: connection)
      return committed
    }
  }

  /// Gives an active reservation's units back. NOT_FOUND without one; a released one is returned
  /// unchanged; FAILED_PRECONDITION (RESERVATION_NOT_ACTIVE) for a committed one.
  func release(orderID: UUID, reason: String) async throws -> ReservationRecord {
    try await database.transaction(logger: logger) { connection in
      guard let reservation = try await reservation(orderID, lock: true, on: connection) else {
        throw APIStatus.notFound("no reservation for order \(orderID.lowercasedString)")
      }
      switch reservation.status {
      case .released: return reservation
      case .committed, .returned: throw Self.notActive(reservation, action: "release")
      case .active: return try await releaseLocked(reservation, reason: reason, on: connection)
      }
    }
  }

  /// Puts a committed reservation's units back on hand (a paid order cancelled before it
  /// shipped). NOT_FOUND without one; a returned one is returned unchanged; FAILED_PRECONDITION
  /// (RESERVATION_NOT_ACTIVE) for one that was never committed.
  func returnToStock(orderID: UUID, reason: String) async throws -> ReservationRecord {
    try await database.transaction(logger: logger) { connection in
      guard let reservation = try await reservation(orderID, lock: true, on: connection) else {
        throw APIStatus.notFound("no reservation for order \(orderID.lowercasedString)")
      }
      switch reservation.status {
      case .returned: return reservation
      case .active, .released: throw Self.notActive(reservation, action: "return")
      case .committed: break
      }
      let productIDs = reservation.lines.map(\.productID)
      _ = try await lockStock(productIDs, on: connection)
      _ = try await changeStock(
        productIDs, quantities: reservation.lines.map(\.quantity), onHandSign: 1, reservedSign: 0, kind: .return,
        orderID: orderID, note: reason, on: connection)
      return try await setStatus(reservation, .returned, reason: nil, on: connection)
    }
  }

  /// Active reservations whose time is up, oldest deadline first.
  func expiredReservations(limit: Int) async throws -> [UUID] {
    let rows = try await database.query(
      """
      SELECT order_id FROM reservations WHERE status = 'active' AND expires_at <= now()
      ORDER BY expires_at LIMIT \(limit)
      """, logger: logger)
    var ids: [UUID] = []
    for try await id in rows.decode(UUID.self) { ids.append(id) }
    return ids
  }

  /// Releases the reservation if it is still active and expired (another sweeper, or a commit,
  /// may have got there first: then nothing). Returns whether it released it.
  func releaseIfExpired(orderID: UUID) async throws -> Bool {
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        SELECT \(unescaped: Self.reservationColumns) FROM reservations
        WHERE order_id = \(orderID) AND status = 'active' AND expires_at <= now()
        FOR UPDATE SKIP LOCKED
        """, logger: logger)
      guard var reservation = try await Self.reservations(rows).first else { return false }
      reservation.lines = try await lines(of: orderID, on: connection)
      _ = try await releaseLocked(reservation, reason: "expired", on: connection)
      return true
    }
  }

  /// Releases an active reservation whose row this transaction has locked.
  private func releaseLocked(_ reservation: ReservationRecord, reason: String, on connection: PostgresConnection)
    async throws -> ReservationRecord
  {
    let productIDs = reservation.lines.map(\.productID)
    _ = try await lockStock(productIDs, on: connection)
    let updated = try await changeStock(
      productIDs, quantities: reservation.lines.map(\.quantity), onHandSign: 0, reservedSign: -1, kind: .release,
      orderID: reservation.orderID, on: connection)
    let released = try await setStatus(
      reservation, .released, reason: reason.isEmpty ? "released" : reason, on: connection)
    try await outbox.append(
      Mart_Inventory_V1_StockReleased.with {
        $0.orderID = reservation.orderID.lowercasedString
        $0.lines = reservation.lines.map(\.proto)
        $0.reason = reason
      }, aggregateType: "reservation", aggregateID: reservation.orderID.lowercasedString, on: connection,
      logger: logger)
    _ = try await checkLowStock(updated, on: connection)
    return released
  }

  static func notActive(_ reservation: ReservationRecord, action: String) -> GoogleRPCStatus {
    APIStatus.status(
      .failedPrecondition,
      "cannot \(action) the reservation of order \(reservation.orderID.lowercasedString): it is "
        + reservation.status.rawValue,
      reason: "RESERVATION_NOT_ACTIVE", metadata: ["status": reservation.status.rawValue])
  }

  // MARK: Shared steps

  /// Locks the stock rows of these products in product-id order (the one order every
  /// transaction uses, so that two of them never wait for each other) and returns them.
  private func lockStock(_ productIDs: [UUID], on connection: PostgresConnection) async throws -> [UUID: StockRecord] {
    let rows = try await connection.query(
      """
      SELECT \(unescaped: Self.stockColumns) FROM stock WHERE product_id = ANY(\(productIDs))
      ORDER BY product_id FOR UPDATE
      """, logger: logger)
    var byID: [UUID: StockRecord] = [:]
    for record in try await Self.stock(rows) { byID[record.productID] = record }
    return byID
  }

  /// Moves on_hand and reserved of each product by its quantity times the signs, and records a
  /// movement per product. The rows must be locked already.
  private func changeStock(
    _ productIDs: [UUID], quantities: [Int64], onHandSign: Int64, reservedSign: Int64, kind: MovementKind,
    orderID: UUID, note: String? = nil, on connection: PostgresConnection
  ) async throws -> [StockRecord] {
    let onHandDeltas = quantities.map { $0 * onHandSign }
    let reservedDeltas = quantities.map { $0 * reservedSign }
    let updated = try await Self.stock(
      connection.query(
        """
        UPDATE stock AS s SET on_hand = s.on_hand + d.on_hand_delta, reserved = s.reserved + d.reserved_delta,
          version = s.version + 1, updated_at = now()
        FROM unnest(\(productIDs)::uuid[], \(onHandDeltas)::bigint[], \(reservedDeltas)::bigint[])
          AS d(product_id, on_hand_delta, reserved_delta)
        WHERE s.product_id = d.product_id
        RETURNING s.product_id, s.on_hand, s.reserved, s.low_stock_threshold, s.low_stock_alerted, s.updated_at
        """, logger: logger))
    guard updated.count == productIDs.count else {
      throw RPCError(code: .internalError, message: "a reserved product has no stock row")
    }
    let byID = Dictionary(updated.map { ($0.productID, $0) }, uniquingKeysWith: { first, _ in first })
    let onHandAfter = productIDs.map { byID[$0]?.onHand ?? 0 }
    let reservedAfter = productIDs.map { byID[$0]?.reserved ?? 0 }
    try await connection.query(
      """
      INSERT INTO stock_movements (product_id, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after,
                                   order_id, note)
      SELECT m.product_id, \(kind.rawValue), m.on_hand_delta, m.reserved_delta, m.on_hand_after, m.reserved_after,
             \(orderID), \(note)
      FROM unnest(\(productIDs)::uuid[], \(onHandDeltas)::bigint[], \(reservedDeltas)::bigint[],
                  \(onHandAfter)::bigint[], \(reservedAfter)::bigint[])
        AS m(product_id, on_hand_delta, reserved_delta, on_hand_after, reserved_after)
      """, logger: logger)
    return updated
  }

  /// Publishes LowStock once per crossing: when available is at or below a non-zero threshold
  /// and no alert is outstanding; clears the alert once available is above the threshold again.
  /// The rows must be locked. Returns them with the alert flag as it is now.
  private func checkLowStock(_ records: [StockRecord], on connection: PostgresConnection) async throws
    -> [StockRecord]
  {
    var result: [StockRecord] = []
    for var record in records {
      let low = record.threshold > 0 && record.available <= record.threshold
      if low, !record.alerted {
        try await connection.query(
          "UPDATE stock SET low_stock_alerted = true WHERE product_id = \(record.productID)", logger: logger)
        record.alerted = true
        try await outbox.append(
          Mart_Inventory_V1_LowStock.with {
            $0.productID = record.productID.lowercasedString
            $0.available = Int32(quantity: max(0, record.available))
            $0.lowStockThreshold = Int32(quantity: record.threshold)
            $0.stock = record.proto()
          }, aggregateType: "stock", aggregateID: record.productID.lowercasedString, on: connection, logger: logger)
      } else if !low, record.alerted {
        try await connection.query(
          "UPDATE stock SET low_stock_alerted = false WHERE product_id = \(record.productID)", logger: logger)
        record.alerted = false
      }
      result.append(record)
    }
    return result
  }

  private func reservation(_ orderID: UUID, lock: Bool, on connection: PostgresConnection) async throws
    -> ReservationRecord?
  {
    let rows =
      lock
      ? try await connection.query(
        "SELECT \(unescaped: Self.reservationColumns) FROM reservations WHERE order_id = \(orderID) FOR UPDATE",
        logger: logger)
      : try await connection.query(
        "SELECT \(unescaped: Self.reservationColumns) FROM reservations WHERE order_id = \(orderID)", logger: logger)
    guard var reservation = try await Self.reservations(rows).first else { return nil }
    reservation.lines = try await lines(of: orderID, on: connection)
    return reservation
  }

  private func lines(of orderID: UUID, on connection: PostgresConnection) async throws -> [LineRecord] {
    let rows = try await connection.query(
      "SELECT product_id, quantity FROM reservation_lines WHERE order_id = \(orderID)", logger: logger)
    var lines: [LineRecord] = []
    for try await (productID, quantity) in rows.decode((UUID, Int64).self) {
      lines.append(LineRecord(productID: productID, quantity: quantity))
    }
    return lines.sorted { $0.productID.uuidString < $1.productID.uuidString }
  }

  private func setStatus(
    _ reservation: ReservationRecord, _ status: ReservationStatus, reason: String?, on connection: PostgresConnection
  ) async throws -> ReservationRecord {
    let rows = try await connection.query(
      """
      UPDATE reservations SET status = \(status.rawValue), release_reason = \(reason), updated_at = now()
      WHERE order_id = \(reservation.orderID)
      RETURNING \(unescaped: Self.reservationColumns)
      """, logger: logger)
    guard var updated = try await Self.reservations(rows).first else {
      throw RPCError(code: .internalError, message: "reservation row vanished")
    }
    updated.lines = reservation.lines
    return updated
  }

  // MARK: Rows

  static func stock(_ rows: PostgresRowSequence) async throws -> [StockRecord] {
    var records: [StockRecord] = []
    for try await row in rows.decode(StockRecord.Row.self) { records.append(StockRecord(row)) }
    return records
  }

  static func movements(_ rows: PostgresRowSequence) async throws -> [MovementRecord] {
    var records: [MovementRecord] = []
    for try await row in rows.decode(MovementRecord.Row.self) { records.append(MovementRecord(row)) }
    return records
  }

  /// Reservation rows, without their lines.
  static func reservations(_ rows: PostgresRowSequence) async throws -> [ReservationRecord] {
    var records: [ReservationRecord] = []
    for try await row in rows.decode(ReservationRecord.Row.self) { records.append(ReservationRecord(row)) }
    return records
  }
}
