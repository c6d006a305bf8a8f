import Foundation
import GRPCCore
import InventoryService
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import ProductService
import Testing

@testable import OrderService

/// The saga's events over the real broker, and a step that fails until its service comes back.
@Suite struct OrderSagaTests {
  /// The catalogue's ProductCreated, OrderPlaced and the payment's PaymentSucceeded all go through
  /// the test broker: the order ends PAID and OrderPlaced is on the orders topic.
  @Test func anOrderIsPaidWithItsEventsOverTheBroker() async throws {
    let prefix = TestBed.uniquePrefix("orders")
    let transport = try TestBed.kafkaTransport(prefix: prefix)
    try await withServices([transport]) {
      try await OrderHarness.run("order_kafka", transport: transport) { mart in
        let item = try await mart.product(sku: "BROKER", price: 700, onHand: 3)
        let placed = try await mart.place([(item, 2)])
        #expect(try await mart.waitFor(placed.id, .awaitingPayment) == .awaitingPayment)
        try await mart.paymentSucceeded(placed)
        #expect(try await mart.waitFor(placed.id, .paid) == .paid)
        let stock = try await mart.stock(item)
        #expect(stock.onHand == 1 && stock.reserved == 0)

        let orders = try await transport.subscribe(group: "order-events-reader", topics: [EventTopic.orders.name])
        var types: [String] = []
        while types.count < 2, let record = try await orders.next() {
          types.append(record.header("ce_type") ?? "")
        }
        await orders.close()
        #expect(types == ["mart.order.v1.OrderPlaced", "mart.order.v1.OrderPaid"])
      }
    }
  }

  /// With the inventory service away, the reservation fails and is retried with backoff, never
  /// dropped, and shows in the order's timeline; when the service is back, the order moves on.
  @Test func aFailingStepIsRetriedVisiblyUntilItsServiceIsBack() async throws {
    let users = try TestUsers()
    let network = InProcessNetwork()
    let transport = InProcessEventTransport()
    // The in-process network holds a call to a service not up yet until its deadline, as a
    // service still starting would: each attempt fails after 300 ms.
    let settings = OrderSettings(
      sagaPollInterval: .milliseconds(100), maximumStepBackoff: .milliseconds(400),
      stepTimeout: .milliseconds(300))
    try await ScratchDatabase.with("retry_p") { productDatabase in
      try await ScratchDatabase.with("retry_i") { inventoryDatabase in
        try await ScratchDatabase.with("retry_o") { orderDatabase in
          try await withHost(
            users.withTestKeys(ProductServiceModule.definition),
            configuration: ServiceConfiguration(service: .product, port: 0, database: productDatabase.configuration),
            auth: users.auth, transport: transport, network: network
          ) { _, productGRPC in
            try await withHost(
              users.withTestKeys(OrderServiceModule.makeDefinition(settings: settings)),
              configuration: ServiceConfiguration(service: .order, port: 0, database: orderDatabase.configuration),
              auth: users.auth, transport: transport, network: network
            ) { orderHost, orderGRPC in
              let admin = try users.bearer(roles: ["customer", "admin"])
              let customer = try users.bearer(roles: ["customer"])
              let product = try await Mart_Product_V1_ProductService.Client(wrapping: productGRPC).createProduct(
                .with {
                  $0.sku = "PATIENT"
                  $0.name = "Patient"
                  $0.price = .with {
                    $0.currencyCode = "ZAR"
                    $0.amountMinor = 100
                  }
                }, metadata: admin)
              let orders = Mart_Order_V1_OrderService.Client(wrapping: orderGRPC)
              let placed = try await orders.createOrder(
                OrderHarness.request([(product.id, 1)]), metadata: customer)
              let orderID = try #require(UUID(uuidString: placed.id))
              func attempts() async throws -> Int32 {
                let rows = try await orderHost.database.query(
                  "SELECT attempts FROM order_saga_steps WHERE order_id = \(orderID) AND kind = 'reserve_stock'",
                  logger: TestBed.logger)
                var attempts: Int32 = 0
                for try await value in rows.decode(Int32.self) { attempts = value }
                return attempts
              }
              #expect(await eventually { try await attempts() >= 3 })
              let timeline = try await orders.getOrderTimeline(.with { $0.orderID = placed.id }, metadata: customer)
              #expect(timeline.entries.map(\.kind).contains(.stepRetrying))
              #expect(
                try await orders.getOrder(.with { $0.orderID = placed.id }, metadata: customer).status == .pending)

              // The inventory service comes up, first where the order service cannot reach it: the
              // product's stock record comes from the catalogue's event with nothing on hand, and a
              // reservation landing before the restock would rightly cancel the order as out of stock.
              let inventoryModule = users.withTestKeys(
                InventoryServiceModule.makeDefinition(settings: InventorySettings()))
              let inventoryConfiguration = ServiceConfiguration(
                service: .inventory, port: 0, database: inventoryDatabase.configuration)
              try await withHost(
                inventoryModule, configuration: inventoryConfiguration,
                auth: users.auth, transport: transport, network: InProcessNetwork()
              ) { _, inventoryGRPC in
                let inventory = Mart_Inventory_V1_InventoryService.Client(wrapping: inventoryGRPC)
                let stocked = await eventually {
                  _ = try await inventory.adjustStock(
                    .with {
                      $0.productID = product.id
                      $0.quantityDelta = 1
                      $0.reason = .restock
                    }, metadata: admin)
                  return true
                }
                #expect(stocked)
              }
              #expect(
                try await orders.getOrder(.with { $0.orderID = placed.id }, metadata: customer).status == .pending)
              // Then it is back where the order service finds it, and the next attempt goes through.
              try await withHost(
                inventoryModule, configuration: inventoryConfiguration,
                auth: users.auth, transport: transport, network: network
              ) { _, _ in
                // The default wait (30 s): under a loaded machine the next attempt may be later
                // than the backoff alone says (it failed once in three runs with 10 s).
                let reserved = await eventually {
                  try await orders.getOrder(.with { $0.orderID = placed.id }, metadata: customer).status
                    == .awaitingPayment
                }
                #expect(reserved)
              }
            }
          }
        }
      }
    }
  }
}
