import Foundation
import GRPCCore
import GRPCInProcessTransport
import InventoryService
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import OrderService
import PaymentService
import PostgresNIO
import ProductService
import Testing

// Note: no closure literal inside `#expect(...)` in these tests (see InventoryHarness).

/// The order service with the real product and inventory services, in-process on one network and
/// one event transport (the catalogue's ProductCreated makes the stock rows; a test publishes
/// the payment service's events), each on its own scratch database.
struct OrderHarness: Sendable {
  let orders: Mart_Order_V1_OrderService.Client<InProcessTransport.Client>
  let products: Mart_Product_V1_ProductService.Client<InProcessTransport.Client>
  let inventory: Mart_Inventory_V1_InventoryService.Client<InProcessTransport.Client>
  let orderDatabase: PostgresClient
  /// The payment service, when the harness runs it (`payments:`).
  let payments: Mart_Payment_V1_PaymentService.Client<InProcessTransport.Client>?
  let paymentDatabase: PostgresClient?
  let transport: any EventTransport
  let users: TestUsers
  let admin: Metadata
  let customerID: UUID
  let customer: Metadata

  /// Runs the three services with `settings`, their events on `transport` (in-process unless
  /// given, e.g. the test broker's, which the caller runs); and the payment service with
  /// `payments`, when given.
  static func run(
    _ label: String, settings: OrderSettings = OrderSettings(),
    transport: any EventTransport = InProcessEventTransport(), payments paymentSettings: PaymentSettings? = nil,
    _ body: (OrderHarness) async throws -> Void
  ) async throws {
    let users = try TestUsers()
    let network = InProcessNetwork()
    let customerID = UUID()
    func configuration(_ service: MartService, _ database: ScratchDatabase) -> ServiceConfiguration {
      ServiceConfiguration(service: service, port: 0, database: database.configuration)
    }
    try await ScratchDatabase.with("\(label)_p") { productDatabase in
      try await ScratchDatabase.with("\(label)_i") { inventoryDatabase in
        try await ScratchDatabase.with("\(label)_o") { orderDatabase in
          try await withHost(
            users.withTestKeys(ProductServiceModule.definition),
            configuration: configuration(.product, productDatabase),
            auth: users.auth, transport: transport, network: network
          ) { _, productGRPC in
            try await withHost(
              users.withTestKeys(InventoryServiceModule.makeDefinition(settings: InventorySettings())),
              configuration: configuration(.inventory, inventoryDatabase), auth: users.auth, transport: transport,
              network: network
            ) { _, inventoryGRPC in
              try await withHost(
                users.withTestKeys(OrderServiceModule.makeDefinition(settings: settings)),
                configuration: configuration(.order, orderDatabase), auth: users.auth, transport: transport,
                network: network
              ) { orderHost, orderGRPC in
                func harness(_ payment: (ServiceHost<InProcessServer>, GRPCClient<InProcessTransport.Client>)?)
                  throws -> OrderHarness
                {
                  OrderHarness(
                    orders: .init(wrapping: orderGRPC), products: .init(wrapping: productGRPC),
                    inventory: .init(wrapping: inventoryGRPC), orderDatabase: orderHost.database,
                    payments: payment.map { .init(wrapping: $0.1) }, paymentDatabase: payment?.0.database,
                    transport: transport, users: users,
                    admin: try users.bearer(roles: ["customer", "admin"]), customerID: customerID,
                    customer: try users.bearer(roles: ["customer"], subject: customerID))
                }
                guard let paymentSettings else { return try await body(try harness(nil)) }
                try await ScratchDatabase.with("\(label)_pay") { paymentDatabase in
                  try await withHost(
                    users.withTestKeys(PaymentServiceModule.makeDefinition(settings: paymentSettings)),
                    configuration: configuration(.payment, paymentDatabase), auth: users.auth, transport: transport,
                    network: network
                  ) { paymentHost, paymentGRPC in
                    try await body(try harness((paymentHost, paymentGRPC)))
                  }
                }
              }
            }
          }
        }
      }
    }
  }

  // MARK: Set-up

  /// A product in the catalogue with `onHand` units in stock; its id.
  func product(sku: String, price: Int64, currency: String = "ZAR", onHand: Int32) async throws -> String {
    let created = try await products.createProduct(
      .with {
        $0.sku = sku
        $0.name = "Product \(sku)"
        $0.price = .with {
          $0.currencyCode = currency
          $0.amountMinor = price
        }
      }, metadata: admin)
    if onHand > 0 {
      // The stock row comes with the catalogue's ProductCreated event.
      let stocked = await eventually {
        _ = try await inventory.adjustStock(
          .with {
            $0.productID = created.id
            $0.quantityDelta = onHand
            $0.reason = .restock
          }, metadata: admin)
        return true
      }
      #expect(stocked, "no stock record for \(sku)")
    }
    return created.id
  }

  func stock(_ productID: String) async throws -> Mart_Inventory_V1_Stock {
    try await inventory.getStock(.with { $0.productID = productID }, metadata: admin)
  }

  static let address = Mart_Common_V1_Address.with {
    $0.recipientName = "Thandi Nkosi"
    $0.lines = ["12 Long Street", "Unit 4"]
    $0.city = "Cape Town"
    $0.postalCode = "8001"
    $0.countryCode = "ZA"
    $0.phone = "+27821234567"
  }

  static func request(_ items: [(String, Int32)], key: String = "") -> Mart_Order_V1_CreateOrderRequest {
    .with {
      $0.items = items.map { item in
        .with {
          $0.productID = item.0
          $0.quantity = item.1
        }
      }
      $0.shippingAddress = address
      $0.requestID = key
    }
  }

  func place(_ items: [(String, Int32)], key: String = "", as metadata: Metadata? = nil) async throws
    -> Mart_Order_V1_Order
  {
    try await orders.createOrder(Self.request(items, key: key), metadata: metadata ?? customer)
  }

  func order(_ id: String, as metadata: Metadata? = nil) async throws -> Mart_Order_V1_Order {
    try await orders.getOrder(.with { $0.orderID = id }, metadata: metadata ?? customer)
  }

  /// Waits for the order to reach `status`; the status it has then.
  func waitFor(_ id: String, _ status: Mart_Order_V1_Order.Status) async throws -> Mart_Order_V1_Order.Status {
    _ = await eventually { try await order(id, as: admin).status == status }
    return try await order(id, as: admin).status
  }

  func timelineKinds(_ id: String) async throws -> [Mart_Order_V1_TimelineEntry.Kind] {
    try await orders.getOrderTimeline(.with { $0.orderID = id }, metadata: customer).entries.map(\.kind)
  }

  /// Publishes a PaymentSucceeded as the payment service's relay would (`times` deliveries of one
  /// event: a redelivery).
  func paymentSucceeded(
    _ order: Mart_Order_V1_Order, paymentID: UUID = UUID(), eventID: UUID = UUID(), times: Int = 1
  ) async throws {
    let event = Mart_Payment_V1_PaymentSucceeded.with {
      $0.metadata.eventID = eventID.uuidString.lowercased()
      $0.paymentID = paymentID.uuidString.lowercased()
      $0.orderID = order.id
      $0.userID = order.userID
      $0.provider = .sandbox
      $0.amount = order.total
    }
    try await publish(event, id: eventID, subject: order.id, times: times)
  }

  /// Publishes a PaymentRefunded as the payment service's relay would.
  func paymentRefunded(_ order: Mart_Order_V1_Order, paymentID: UUID, amountMinor: Int64) async throws {
    let event = Mart_Payment_V1_PaymentRefunded.with {
      $0.paymentID = paymentID.uuidString.lowercased()
      $0.refundID = UUID().uuidString.lowercased()
      $0.orderID = order.id
      $0.userID = order.userID
      $0.provider = .sandbox
      $0.amount = .with {
        $0.currencyCode = order.total.currencyCode
        $0.amountMinor = amountMinor
      }
      $0.refundedTotal = $0.amount
      $0.fullyRefunded = true
      $0.reason = "payment arrived after the order was cancelled"
    }
    try await publish(event, id: UUID(), subject: order.id)
  }

  private func publish<Event: DomainEvent>(_ event: Event, id: UUID, subject: String, times: Int = 1) async throws {
    let envelope = EventEnvelope(
      id: id, type: Event.protoMessageName, source: "/mart/payment", subject: subject, time: Date(),
      topic: Event.topic.name, payload: try event.serializedBytes())
    _ = await transport.publish(Array(repeating: OutgoingRecord(envelope), count: times))
  }
}
