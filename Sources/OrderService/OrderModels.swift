import Foundation
import MartProto
import MartRuntime
import SwiftProtobuf

/// Settings of the order service.
///
/// | Variable | Default |
/// |---|---|
/// | `MART_ORDER_PAYMENT_WINDOW` | `30m`: an order not paid this long after it is placed is cancelled (PAYMENT_TIMEOUT) |
/// | `MART_ORDER_RESERVATION_GRACE` | `10m`: how long the stock reservation outlives the payment deadline |
/// | `MART_ORDER_SHIPPING_FEE_MINOR` | `0`: the flat shipping fee, in the order currency's minor units |
/// | `MART_ORDER_FREE_SHIPPING_FROM_MINOR` | unset: a subtotal at or above this ships free |
/// | `MART_ORDER_DEFAULT_PAYMENT_PROVIDER` | `sandbox`: the provider of an order that names none |
/// | `MART_ORDER_IDEMPOTENCY_KEY_TTL` | `24h`: how long an `Idempotency-Key` (request_id) is remembered |
/// | `MART_ORDER_SAGA_POLL_INTERVAL` | `500ms`: how often the saga worker looks for due steps it was not woken for |
/// | `MART_ORDER_SAGA_STEP_LEASE` | `30s`: how long a step stays with the worker that took it before another may |
/// | `MART_ORDER_MAX_SAGA_DELAY` | `1s`: how far behind the saga worker may fall before new orders are refused (503, Retry-After) |
public struct OrderSettings: Sendable {
  public var paymentWindow: Duration
  public var reservationGrace: Duration
  public var shippingFeeMinor: Int64
  public var freeShippingFromMinor: Int64?
  public var defaultPaymentProvider: PaymentProvider
  public var idempotencyKeyTTL: Duration
  public var sagaPollInterval: Duration
  /// How long a worker owns a step it took: a worker that dies mid-step leaves it to another
  /// (or to itself after a restart) once this has passed.
  public var stepLease: Duration
  /// The longest wait between two attempts of a failing step.
  public var maximumStepBackoff: Duration
  /// How long a step's call to another service may take before the attempt counts as failed.
  public var stepTimeout: Duration
  /// How long a request may hold its idempotency key in flight before a retry may take it over
  /// (a process that died mid-request must not block the key until it expires).
  public var inFlightKeyLease: Duration
  /// Whether only a customer whose email is verified may order (`MART_ORDER_REQUIRE_VERIFIED_EMAIL`,
  /// default false: like most shops, an account orders at once and verifies its email when it
  /// likes). Read from the access token's `email_verified`, so a customer who just verified signs
  /// in again (or refreshes) first.
  public var requireVerifiedEmail: Bool = false
  /// How far behind the saga worker may be (`OrderSagaBacklog`) before CreateOrder refuses new
  /// orders with UNAVAILABLE (OVERLOADED, RetryInfo; 503 with Retry-After at the edge).
  public var maximumSagaDelay: Duration = .seconds(1)

  public init(
    paymentWindow: Duration = .seconds(30 * 60), reservationGrace: Duration = .seconds(10 * 60),
    shippingFeeMinor: Int64 = 0, freeShippingFromMinor: Int64? = nil,
    defaultPaymentProvider: PaymentProvider = .sandbox,
    idempotencyKeyTTL: Duration = .seconds(24 * 3600), sagaPollInterval: Duration = .milliseconds(500),
    stepLease: Duration = .seconds(30), maximumStepBackoff: Duration = .seconds(60),
    stepTimeout: Duration = .seconds(10), inFlightKeyLease: Duration = .seconds(60)
  ) {
    self.paymentWindow = paymentWindow
    self.reservationGrace = reservationGrace
    self.shippingFeeMinor = shippingFeeMinor
    self.freeShippingFromMinor = freeShippingFromMinor
    self.defaultPaymentProvider = defaultPaymentProvider
    self.idempotencyKeyTTL = idempotencyKeyTTL
    self.sagaPollInterval = sagaPollInterval
    self.stepLease = stepLease
    self.maximumStepBackoff = maximumStepBackoff
    self.stepTimeout = stepTimeout
    self.inFlightKeyLease = inFlightKeyLease
  }

  public init(environment env: EnvironmentReader) throws {
    let defaults = OrderSettings()
    let provider = env.string("MART_ORDER_DEFAULT_PAYMENT_PROVIDER", default: defaults.defaultPaymentProvider.rawValue)
    guard let defaultProvider = PaymentProvider(rawValue: provider) else {
      throw ConfigurationError(
        variable: "MART_ORDER_DEFAULT_PAYMENT_PROVIDER", value: provider, reason: "expected sandbox, stripe or payfast")
    }
    self.init(
      paymentWindow: try env.duration("MART_ORDER_PAYMENT_WINDOW", default: defaults.paymentWindow),
      reservationGrace: try env.duration("MART_ORDER_RESERVATION_GRACE", default: defaults.reservationGrace),
      shippingFeeMinor: Int64(try env.nonNegativeInteger("MART_ORDER_SHIPPING_FEE_MINOR", default: 0)),
      freeShippingFromMinor: try env.string("MART_ORDER_FREE_SHIPPING_FROM_MINOR").map { _ in
        Int64(try env.nonNegativeInteger("MART_ORDER_FREE_SHIPPING_FROM_MINOR", default: 0))
      },
      defaultPaymentProvider: defaultProvider,
      idempotencyKeyTTL: try env.duration("MART_ORDER_IDEMPOTENCY_KEY_TTL", default: defaults.idempotencyKeyTTL),
      sagaPollInterval: try env.duration("MART_ORDER_SAGA_POLL_INTERVAL", default: defaults.sagaPollInterval),
      stepLease: try env.duration("MART_ORDER_SAGA_STEP_LEASE", default: defaults.stepLease))
    requireVerifiedEmail = try env.bool("MART_ORDER_REQUIRE_VERIFIED_EMAIL", default: false)
    maximumSagaDelay = try env.duration("MART_ORDER_MAX_SAGA_DELAY", default: maximumSagaDelay)
  }

  /// The shipping fee of an order with this subtotal: the flat fee, or nothing from the
  /// free-shipping threshold on.
  func shippingFee(subtotalMinor: Int64) -> Int64 {
    if let freeFrom = freeShippingFromMinor, subtotalMinor >= freeFrom { return 0 }
    return shippingFeeMinor
  }
}

// MARK: Stored enums

enum OrderStatus: String, PostgresTextEnum, CaseIterable {
  case pending
  case awaitingPayment = "awaiting_payment"
  case paid, cancelled, shipped, delivered, refunded

  var proto: Mart_Order_V1_Order.Status {
    switch self {
    case .pending: .pending
    case .awaitingPayment: .awaitingPayment
    case .paid: .paid
    case .cancelled: .cancelled
    case .shipped: .shipped
    case .delivered: .delivered
    case .refunded: .refunded
    }
  }

  init?(_ proto: Mart_Order_V1_Order.Status) {
    guard let status = Self.allCases.first(where: { $0.proto == proto }) else { return nil }
    self = status
  }

  /// CANCELLED and REFUNDED: nothing moves the order any more.
  var isTerminal: Bool { self == .cancelled || self == .refunded }
}

enum CancelReason: String, PostgresTextEnum, CaseIterable {
  case customerRequest = "customer_request"
  case adminRequest = "admin_request"
  case outOfStock = "out_of_stock"
  case paymentTimeout = "payment_timeout"
  case paymentFailed = "payment_failed"

  var proto: Mart_Order_V1_Order.CancelReason {
    switch self {
    case .customerRequest: .customerRequest
    case .adminRequest: .adminRequest
    case .outOfStock: .outOfStock
    case .paymentTimeout: .paymentTimeout
    case .paymentFailed: .paymentFailed
    }
  }
}

enum TimelineKind: String, PostgresTextEnum, CaseIterable {
  case placed
  case stockReserved = "stock_reserved"
  case stockReservationFailed = "stock_reservation_failed"
  case paymentStarted = "payment_started"
  case paymentFailed = "payment_failed"
  case paymentReceived = "payment_received"
  case paid, cancelled, shipped, delivered, refunded
  case stockReleased = "stock_released"
  case stockCommitted = "stock_committed"
  case stepRetrying = "step_retrying"

  var proto: Mart_Order_V1_TimelineEntry.Kind {
    switch self {
    case .placed: .placed
    case .stockReserved: .stockReserved
    case .stockReservationFailed: .stockReservationFailed
    case .paymentStarted: .paymentStarted
    case .paymentFailed: .paymentFailed
    case .paymentReceived: .paymentReceived
    case .paid: .paid
    case .cancelled: .cancelled
    case .shipped: .shipped
    case .delivered: .delivered
    case .refunded: .refunded
    case .stockReleased: .stockReleased
    case .stockCommitted: .stockCommitted
    case .stepRetrying: .stepRetrying
    }
  }
}

/// The saga's steps (see OrderSaga).
enum SagaStepKind: String, PostgresTextEnum, CaseIterable {
  case reserveStock = "reserve_stock"
  case commitStock = "commit_stock"
  case releaseStock = "release_stock"
  case returnStock = "return_stock"
  case paymentDeadline = "payment_deadline"
}

/// Who caused a timeline entry: a user, or the system (the saga, a timeout, an event).
enum Actor: Sendable, Equatable {
  case user(UUID)
  case system

  var stored: String {
    switch self {
    case .user(let id): id.lowercasedString
    case .system: "system"
    }
  }
}

// MARK: Records

/// An order row (without its lines, which are rows of their own).
struct OrderRecord: Sendable, Equatable {
  var id: UUID
  var number: String
  var userID: UUID
  var status: OrderStatus
  var currency: String
  var subtotalMinor: Int64
  var shippingFeeMinor: Int64
  var totalMinor: Int64
  var shippingAddress: PostalAddress
  var paymentProvider: PaymentProvider
  var paymentID: UUID?
  var paymentReceivedAt: Date?
  var paidAmountMinor: Int64?
  var paymentDeadline: Date
  var customerNote: String?
  var cancelReason: CancelReason?
  var cancelNote: String?
  var carrier: String?
  var trackingNumber: String?
  var trackingURL: String?
  var version: Int64
  var createdAt: Date
  var createdMicros: Int64
  var updatedAt: Date
  var paidAt: Date?
  var shippedAt: Date?
  var deliveredAt: Date?
  var cancelledAt: Date?
  var refundedAt: Date?
  var lines: [OrderLineRecord] = []

  var itemCount: Int64 { lines.reduce(0) { $0 + $1.quantity } }

  func money(_ minor: Int64) -> Mart_Common_V1_Money {
    Mart_Common_V1_Money(minor: minor, currency: currency)
  }

  var proto: Mart_Order_V1_Order {
    .with {
      $0.id = id.lowercasedString
      $0.number = number
      $0.userID = userID.lowercasedString
      $0.status = status.proto
      $0.lines = lines.map { $0.proto(currency: currency) }
      $0.subtotal = money(subtotalMinor)
      $0.shippingFee = money(shippingFeeMinor)
      $0.total = money(totalMinor)
      $0.itemCount = Int32(clamping: itemCount)
      $0.shippingAddress = shippingAddress.proto
      $0.paymentProvider = paymentProvider.proto
      $0.paymentID = paymentID?.lowercasedString ?? ""
      $0.customerNote = customerNote ?? ""
      if let carrier, let trackingNumber, let shippedAt {
        $0.shipment = .with {
          $0.carrier = carrier
          $0.trackingNumber = trackingNumber
          $0.trackingURL = trackingURL ?? ""
          $0.shipTime = Google_Protobuf_Timestamp(date: shippedAt)
          if let deliveredAt { $0.deliverTime = Google_Protobuf_Timestamp(date: deliveredAt) }
        }
      }
      $0.cancelReason = cancelReason?.proto ?? .unspecified
      $0.cancelNote = cancelNote ?? ""
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt)
      if let paidAt { $0.payTime = Google_Protobuf_Timestamp(date: paidAt) }
      if let cancelledAt { $0.cancelTime = Google_Protobuf_Timestamp(date: cancelledAt) }
      $0.paymentDeadline = Google_Protobuf_Timestamp(date: paymentDeadline)
    }
  }
}

/// A line of an order: the product as it was priced when the order was placed.
struct OrderLineRecord: Sendable, Equatable {
  var productID: UUID
  var sku: String
  var name: String
  var imageURL: String?
  var unitPriceMinor: Int64
  var quantity: Int64

  var lineTotalMinor: Int64 { unitPriceMinor * quantity }

  func proto(currency: String) -> Mart_Order_V1_OrderLine {
    .with {
      $0.productID = productID.lowercasedString
      $0.sku = sku
      $0.name = name
      $0.quantity = Int32(clamping: quantity)
      $0.unitPrice = .with {
        $0.currencyCode = currency
        $0.amountMinor = unitPriceMinor
      }
      $0.lineTotal = .with {
        $0.currencyCode = currency
        $0.amountMinor = lineTotalMinor
      }
      $0.imageURL = imageURL ?? ""
    }
  }
}

struct TimelineRecord: Sendable, Equatable {
  var id: Int64
  var kind: TimelineKind
  var status: OrderStatus
  var message: String
  var actor: String
  var createdAt: Date

  var proto: Mart_Order_V1_TimelineEntry {
    .with {
      $0.id = "\(id)"
      $0.kind = kind.proto
      $0.status = status.proto
      $0.message = message
      $0.actor = actor
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
    }
  }
}

/// A saga step a worker has leased.
struct SagaStepRecord: Sendable, Equatable {
  var id: Int64
  var orderID: UUID
  var kind: SagaStepKind
  var attempts: Int32
  /// Which arming of the step this lease is for (see `OrderStore.complete`).
  var generation: Int64
  /// The trace of the change that scheduled the step, which its span continues.
  var traceparent: String?
}

/// A validated CreateOrder, before pricing.
struct OrderRequest: Sendable {
  /// Product and quantity, one line per product, in the order the client listed them.
  var items: [(productID: UUID, quantity: Int64)]
  var shippingAddress: PostalAddress
  var paymentProvider: PaymentProvider?
  var customerNote: String?
  var idempotencyKey: String?
}

/// Where a page of ListOrders starts: the last order returned (newest first).
struct OrderCursor: Codable, Sendable, Equatable {
  var micros: Int64
  var id: UUID

  enum CodingKeys: String, CodingKey {
    case micros = "t"
    case id = "i"
  }
}

// MARK: Rows: each record's columns, in the order of its `Row`, decoded as one tuple.

extension OrderRecord {
  static let columns = """
    id, number, user_id, status, currency::text, subtotal_minor, shipping_fee_minor, total_minor,
    shipping_recipient_name, shipping_line1, shipping_line2, shipping_line3, shipping_city, shipping_region,
    shipping_postal_code, shipping_country_code::text, shipping_phone, payment_provider, payment_id,
    payment_received_at, paid_amount_minor, payment_deadline, customer_note, cancel_reason, cancel_note, carrier,
    tracking_number, tracking_url, version, created_at, (extract(epoch FROM created_at) * 1000000)::int8,
    updated_at, paid_at, shipped_at, delivered_at, cancelled_at, refunded_at
    """
  typealias Row = (
    UUID, String, UUID, OrderStatus, String, Int64, Int64, Int64,
    String, String, String?, String?, String, String?,
    String?, String, String?, PaymentProvider, UUID?,
    Date?, Int64?, Date, String?, CancelReason?, String?, String?,
    String?, String?, Int64, Date, Int64,
    Date, Date?, Date?, Date?, Date?, Date?
  )

  init(_ row: Row) {
    let recipient: String
    let line1: String
    let line2: String?
    let line3: String?
    let city: String
    let region: String?
    let postalCode: String?
    let country: String
    let phone: String?
    (
      id, number, userID, status, currency, subtotalMinor, shippingFeeMinor, totalMinor,
      recipient, line1, line2, line3, city, region,
      postalCode, country, phone, paymentProvider, paymentID,
      paymentReceivedAt, paidAmountMinor, paymentDeadline, customerNote, cancelReason, cancelNote, carrier,
      trackingNumber, trackingURL, version, createdAt, createdMicros,
      updatedAt, paidAt, shippedAt, deliveredAt, cancelledAt, refundedAt
    ) = row
    shippingAddress = PostalAddress(
      recipientName: recipient, lines: [line1, line2, line3].compactMap { $0 }, city: city, region: region,
      postalCode: postalCode, countryCode: country, phone: phone)
  }
}

extension OrderLineRecord {
  static let columns = "product_id, sku, name, image_url, unit_price_minor, quantity::int8"
  typealias Row = (UUID, String, String, String?, Int64, Int64)

  init(_ row: Row) {
    (productID, sku, name, imageURL, unitPriceMinor, quantity) = row
  }
}

extension TimelineRecord {
  static let columns = "id, kind, status, message, actor, created_at"
  typealias Row = (Int64, TimelineKind, OrderStatus, String, String, Date)

  init(_ row: Row) {
    (id, kind, status, message, actor, createdAt) = row
  }
}
