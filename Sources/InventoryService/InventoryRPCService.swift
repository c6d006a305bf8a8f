import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime

/// Where a page of ListMovements starts: the ledger position of the last movement returned.
struct MovementCursor: Codable, Sendable, Equatable {
  var seq: Int64
}

/// The gRPC handlers of mart.inventory.v1.InventoryService. Who may call what (public, admin,
/// internal) is enforced by the server's auth interceptor from the proto's access options before
/// a handler runs; the handlers validate input and apply the stock rules.
struct InventoryRPCService: Mart_Inventory_V1_InventoryService.SimpleServiceProtocol {
  let store: InventoryStore
  let settings: InventorySettings
  let logger: Logger

  static let maximumBatchSize = 100
  static let maximumLines = 100
  static let defaultMovementPageSize = 50
  static let maximumMovementPageSize = 200
  static let maximumNoteLength = 1000
  static let maximumReasonLength = 200
  static let maximumReservationSeconds: Double = 7 * 24 * 3600

  func getStock(
    request: Mart_Inventory_V1_GetStockRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_Stock {
    let id = try RequestValidation.requiredUUID(request.productID, field: "product_id")
    let stock = try await store.stock([id])[id] ?? .empty(id)
    // Customers see what they can order; the warehouse figures are for admins and services.
    let caller = Caller.current
    return stock.proto(full: caller?.isAdmin == true || caller?.isService == true)
  }

  func batchGetStock(
    request: Mart_Inventory_V1_BatchGetStockRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_BatchGetStockResponse {
    var validation = RequestValidation()
    let ids = validation.uuidList(request.productIds, maximum: Self.maximumBatchSize, field: "product_ids")
    try validation.check()
    let found = try await store.stock(ids)
    return .with { $0.stocks = ids.map { (found[$0] ?? .empty($0)).proto() } }
  }

  func adjustStock(
    request: Mart_Inventory_V1_AdjustStockRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_AdjustStockResponse {
    let actor = try Caller.requiredUserID()
    let adjustment = try Self.adjustment(request, actor: actor)
    let (stock, movement) = try await store.adjust(adjustment)
    return .with {
      $0.stock = stock.proto()
      $0.movement = movement.proto
    }
  }

  func listMovements(
    request: Mart_Inventory_V1_ListMovementsRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_ListMovementsResponse {
    var validation = RequestValidation()
    let id = validation.uuid(request.productID, field: "product_id")
    let limit = validation.pageSize(
      request.pageSize, default: Self.defaultMovementPageSize, maximum: Self.maximumMovementPageSize)
    var kind: MovementKind?
    switch request.kind {
    case .unspecified: kind = nil
    case .UNRECOGNIZED: validation.add("kind", "is not a known movement kind")
    default: kind = MovementKind(request.kind)
    }
    try validation.check()
    guard let id else { throw APIStatus.invalid("product_id", "must be a UUID") }
    let fingerprint = PageTokenCodec.fingerprint(["movements", id.lowercasedString, kind?.rawValue ?? ""])
    let after = try PageTokenCodec.decode(request.pageToken, as: MovementCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.movements(productID: id, kind: kind, beforeSeq: after?.seq, limit: limit), limit: limit,
      fingerprint: fingerprint
    ) { MovementCursor(seq: $0.seq) }
    return .with {
      $0.movements = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func reserveStock(
    request: Mart_Inventory_V1_ReserveStockRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_ReserveStockResponse {
    let (orderID, lines) = try Self.reservation(request)
    var ttl = settings.reservationTTL
    if request.hasExpireTime {
      // The caller's expiry (the order service holds stock past its payment deadline).
      let seconds = request.expireTime.date.timeIntervalSinceNow
      guard seconds > 0, seconds <= Self.maximumReservationSeconds else {
        throw APIStatus.invalid("expire_time", "must be in the future, at most 7 days ahead")
      }
      ttl = .milliseconds(Int64(seconds * 1000))
    }
    switch try await store.reserve(orderID: orderID, lines: lines, ttl: ttl) {
    case .reserved(let reservation):
      return .with { $0.reservation = reservation.proto }
    case .short(let short):
      return .with { $0.insufficientStock = .with { $0.shortLines = short.map(\.proto) } }
    }
  }

  func releaseReservation(
    request: Mart_Inventory_V1_ReleaseReservationRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_Reservation {
    var validation = RequestValidation()
    let orderID = validation.uuid(request.orderID, field: "order_id")
    let reason = validation.text(request.reason, field: "reason", maximum: Self.maximumReasonLength)
    try validation.check()
    guard let orderID else { throw APIStatus.invalid("order_id", "must be a UUID") }
    return try await store.release(orderID: orderID, reason: reason).proto
  }

  func commitReservation(
    request: Mart_Inventory_V1_CommitReservationRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_Reservation {
    let orderID = try RequestValidation.requiredUUID(request.orderID, field: "order_id")
    return try await store.commit(orderID: orderID).proto
  }

  func returnReservation(
    request: Mart_Inventory_V1_ReturnReservationRequest, context: ServerContext
  ) async throws -> Mart_Inventory_V1_Reservation {
    var validation = RequestValidation()
    let orderID = validation.uuid(request.orderID, field: "order_id")
    let reason = validation.text(request.reason, field: "reason", maximum: 500)
    try validation.check()
    guard let orderID else { throw APIStatus.invalid("order_id", "must be a UUID") }
    return try await store.returnToStock(orderID: orderID, reason: reason.isEmpty ? "order cancelled" : reason).proto
  }

  // MARK: Validation

  static func adjustment(_ request: Mart_Inventory_V1_AdjustStockRequest, actor: UUID) throws -> Adjustment {
    var validation = RequestValidation()
    let productID = validation.uuid(request.productID, field: "product_id")
    let delta = Int64(request.quantityDelta)
    let reason = AdjustmentReason(request.reason)
    switch reason {
    case nil: validation.add("reason", "is required: RESTOCK, DAMAGE, CORRECTION or RETURN")
    case .restock?, .return?:
      if delta < 0 {
        validation.add("quantity_delta", "must be positive for \((reason?.rawValue ?? "").uppercased())")
      }
    case .damage?:
      if delta > 0 { validation.add("quantity_delta", "must be negative for DAMAGE") }
    case .correction?: break
    }
    if delta == 0, !request.hasLowStockThreshold {
      validation.add("quantity_delta", "must not be zero (unless only low_stock_threshold changes)")
    }
    if request.hasLowStockThreshold, request.lowStockThreshold < 0 {
      validation.add("low_stock_threshold", "must not be negative (0 disables the alert)")
    }
    let note = validation.text(request.note, field: "note", maximum: maximumNoteLength, allowingNewlines: true)
    let requestID = validation.optionalUUID(request.requestID, field: "request_id")
    try validation.check()
    guard let productID, let reason else { throw APIStatus.invalid(validation.violations) }
    return Adjustment(
      productID: productID, delta: delta, reason: reason, note: note.isEmpty ? nil : note,
      threshold: request.hasLowStockThreshold ? Int64(request.lowStockThreshold) : nil, actorUserID: actor,
      requestID: requestID)
  }

  static func reservation(_ request: Mart_Inventory_V1_ReserveStockRequest) throws -> (UUID, [LineRecord]) {
    var validation = RequestValidation()
    let orderID = validation.uuid(request.orderID, field: "order_id")
    if request.lines.isEmpty {
      validation.add("lines", "must have at least one line")
    } else if request.lines.count > maximumLines {
      validation.add("lines", "must have at most \(maximumLines) lines")
    }
    var lines: [LineRecord] = []
    var seen = Set<UUID>()
    for (index, line) in request.lines.prefix(maximumLines).enumerated() {
      let productID = validation.uuid(line.productID, field: "lines[\(index)].product_id")
      if !line.hasQuantity || line.quantity <= 0 {
        validation.add("lines[\(index)].quantity", "must be a positive number of units")
      }
      guard let productID else { continue }
      if !seen.insert(productID).inserted {
        validation.add("lines[\(index)].product_id", "names a product that another line already has")
      }
      lines.append(LineRecord(productID: productID, quantity: Int64(line.quantity)))
    }
    try validation.check()
    guard let orderID else { throw APIStatus.invalid("order_id", "must be a UUID") }
    return (orderID, lines)
  }
}
