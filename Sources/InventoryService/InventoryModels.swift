import Foundation
import MartProto
import MartRuntime
import SwiftProtobuf

/// Settings of the inventory service.
///
/// | Variable | Default |
/// |---|---|
/// | `MART_INVENTORY_RESERVATION_TTL` | `15m`: how long a reservation holds stock before the sweeper releases it |
/// | `MART_INVENTORY_SWEEP_INTERVAL` | `15s`: how often the sweeper looks for expired reservations |
public struct InventorySettings: Sendable {
  public var reservationTTL: Duration
  public var sweepInterval: Duration
  /// Expired reservations released per sweeper transaction batch.
  public var sweepBatchSize: Int

  public init(
    reservationTTL: Duration = .seconds(15 * 60), sweepInterval: Duration = .seconds(15), sweepBatchSize: Int = 100
  ) {
    self.reservationTTL = reservationTTL
    self.sweepInterval = sweepInterval
    self.sweepBatchSize = max(1, sweepBatchSize)
  }

  public init(environment env: EnvironmentReader) throws {
    let defaults = InventorySettings()
    self.init(
      reservationTTL: try env.duration("MART_INVENTORY_RESERVATION_TTL", default: defaults.reservationTTL),
      sweepInterval: try env.duration("MART_INVENTORY_SWEEP_INTERVAL", default: defaults.sweepInterval))
  }
}

extension Int32 {
  /// A stored quantity in the proto's int32 (the schema caps quantities at Int32.max).
  init(quantity: Int64) {
    self.init(clamping: quantity)
  }
}

/// A stock row.
struct StockRecord: Sendable, Equatable {
  var productID: UUID
  var onHand: Int64
  var reserved: Int64
  var threshold: Int64
  var alerted: Bool
  var updatedAt: Date?

  var available: Int64 { onHand - reserved }

  /// A product without a stock row reads as all zeros.
  static func empty(_ productID: UUID) -> StockRecord {
    StockRecord(productID: productID, onHand: 0, reserved: 0, threshold: 0, alerted: false, updatedAt: nil)
  }

  /// The API's Stock; without `full`, only what a shop shows its customers (available units).
  func proto(full: Bool = true) -> Mart_Inventory_V1_Stock {
    .with {
      $0.productID = productID.lowercasedString
      $0.available = Int32(quantity: max(0, available))
      if full {
        $0.onHand = Int32(quantity: onHand)
        $0.reserved = Int32(quantity: reserved)
        $0.lowStockThreshold = Int32(quantity: threshold)
      }
      if let updatedAt { $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt) }
    }
  }
}

/// The movement kinds and adjustment reasons as stored.
enum MovementKind: String, PostgresTextEnum {
  case adjustment, reservation, release, commit
  case `return`

  var proto: Mart_Inventory_V1_StockMovement.Kind {
    switch self {
    case .adjustment: .adjustment
    case .reservation: .reservation
    case .release: .release
    case .commit: .commit
    case .return: .return
    }
  }

  init?(_ proto: Mart_Inventory_V1_StockMovement.Kind) {
    switch proto {
    case .adjustment: self = .adjustment
    case .reservation: self = .reservation
    case .release: self = .release
    case .commit: self = .commit
    case .return: self = .return
    case .unspecified, .UNRECOGNIZED: return nil
    }
  }
}

enum AdjustmentReason: String, PostgresTextEnum {
  case restock, damage, correction
  case `return`

  var proto: Mart_Inventory_V1_AdjustmentReason {
    switch self {
    case .restock: .restock
    case .damage: .damage
    case .correction: .correction
    case .return: .return
    }
  }

  init?(_ proto: Mart_Inventory_V1_AdjustmentReason) {
    switch proto {
    case .restock: self = .restock
    case .damage: self = .damage
    case .correction: self = .correction
    case .return: self = .return
    case .unspecified, .UNRECOGNIZED: return nil
    }
  }
}

/// A stock_movements row.
struct MovementRecord: Sendable, Equatable {
  var id: UUID
  var seq: Int64
  var productID: UUID
  var kind: MovementKind
  var reason: AdjustmentReason?
  var onHandDelta: Int64
  var reservedDelta: Int64
  var onHandAfter: Int64
  var reservedAfter: Int64
  var note: String?
  var orderID: UUID?
  var actorUserID: UUID?
  var requestID: UUID?
  var createdAt: Date

  var proto: Mart_Inventory_V1_StockMovement {
    .with {
      $0.id = id.lowercasedString
      $0.productID = productID.lowercasedString
      $0.kind = kind.proto
      $0.reason = reason?.proto ?? .unspecified
      $0.onHandDelta = Int32(clamping: onHandDelta)
      $0.reservedDelta = Int32(clamping: reservedDelta)
      $0.onHandAfter = Int32(quantity: onHandAfter)
      $0.reservedAfter = Int32(quantity: reservedAfter)
      $0.note = note ?? ""
      $0.orderID = orderID?.lowercasedString ?? ""
      $0.actorUserID = actorUserID?.lowercasedString ?? ""
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
    }
  }
}

/// One product and quantity of a reservation.
struct LineRecord: Sendable, Equatable, Hashable {
  var productID: UUID
  var quantity: Int64

  var proto: Mart_Inventory_V1_ReservationLine {
    .with {
      $0.productID = productID.lowercasedString
      $0.quantity = Int32(quantity: quantity)
    }
  }
}

enum ReservationStatus: String, PostgresTextEnum {
  case active, released, committed, returned

  var proto: Mart_Inventory_V1_Reservation.Status {
    switch self {
    case .active: .active
    case .released: .released
    case .committed: .committed
    case .returned: .returned
    }
  }
}

/// A reservation with its lines (sorted by product id).
struct ReservationRecord: Sendable, Equatable {
  var orderID: UUID
  var status: ReservationStatus
  var releaseReason: String?
  var expiresAt: Date
  var createdAt: Date
  var updatedAt: Date
  var lines: [LineRecord]

  var proto: Mart_Inventory_V1_Reservation {
    .with {
      $0.orderID = orderID.lowercasedString
      $0.status = status.proto
      $0.lines = lines.map(\.proto)
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt)
    }
  }
}

/// A line that could not be reserved.
struct ShortLineRecord: Sendable, Equatable {
  var productID: UUID
  var requested: Int64
  var available: Int64

  var proto: Mart_Inventory_V1_ShortLine {
    .with {
      $0.productID = productID.lowercasedString
      $0.requested = Int32(quantity: requested)
      $0.available = Int32(quantity: max(0, available))
    }
  }
}

/// What ReserveStock did.
enum ReserveOutcome: Sendable, Equatable {
  case reserved(ReservationRecord)
  case short([ShortLineRecord])
}

/// A validated AdjustStock.
struct Adjustment: Sendable, Equatable {
  var productID: UUID
  var delta: Int64
  var reason: AdjustmentReason
  var note: String?
  var threshold: Int64?
  var actorUserID: UUID
  var requestID: UUID?
}

// MARK: Rows: each record's columns, in the order of its `Row`, decoded as one tuple.

extension StockRecord {
  static let columns = "product_id, on_hand, reserved, low_stock_threshold, low_stock_alerted, updated_at"
  typealias Row = (UUID, Int64, Int64, Int64, Bool, Date)

  init(_ row: Row) {
    let updatedAt: Date
    (productID, onHand, reserved, threshold, alerted, updatedAt) = row
    self.updatedAt = updatedAt
  }
}

extension MovementRecord {
  static let columns = """
    id, seq, product_id, kind, reason, on_hand_delta, reserved_delta, on_hand_after, reserved_after, note,
    order_id, actor_user_id, request_id, created_at
    """
  typealias Row = (
    UUID, Int64, UUID, MovementKind, AdjustmentReason?, Int64, Int64, Int64, Int64, String?, UUID?, UUID?, UUID?, Date
  )

  init(_ row: Row) {
    (
      id, seq, productID, kind, reason, onHandDelta, reservedDelta, onHandAfter, reservedAfter, note, orderID,
      actorUserID, requestID, createdAt
    ) = row
  }
}

extension ReservationRecord {
  /// Without the lines, which are rows of their own.
  static let columns = "order_id, status, release_reason, expires_at, created_at, updated_at"
  typealias Row = (UUID, ReservationStatus, String?, Date, Date, Date)

  init(_ row: Row) {
    (orderID, status, releaseReason, expiresAt, createdAt, updatedAt) = row
    lines = []
  }
}
