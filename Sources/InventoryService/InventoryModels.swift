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

extension Duration {
  /// Whole microseconds (what PostgreSQL intervals hold).
  var microseconds: Int64 {
    let (seconds, attoseconds) = components
    return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
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
enum MovementKind: String, Sendable {
  case adjustment, reservation, release, commit

  var proto: Mart_Inventory_V1_StockMovement.Kind {
    switch self {
    case .adjustment: .adjustment
    case .reservation: .reservation
    case .release: .release
    case .commit: .commit
    }
  }

  init?(_ proto: Mart_Inventory_V1_StockMovement.Kind) {
    switch proto {
    case .adjustment: self = .adjustment
    case .reservation: self = .reservation
    case .release: self = .release
    case .commit: self = .commit
    case .unspecified, .UNRECOGNIZED: return nil
    }
  }
}

enum AdjustmentReason: String, Sendable {
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
  var kind: String
  var reason: String?
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
      $0.kind = MovementKind(rawValue: kind)?.proto ?? .unspecified
      $0.reason = reason.flatMap(AdjustmentReason.init(rawValue:))?.proto ?? .unspecified
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

enum ReservationStatus: String, Sendable {
  case active, released, committed

  var proto: Mart_Inventory_V1_Reservation.Status {
    switch self {
    case .active: .active
    case .released: .released
    case .committed: .committed
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
