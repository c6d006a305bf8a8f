import Foundation
import GRPCCore
import InventoryService
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import Testing

@testable import OrderService

/// The order service as a process, killed (SIGKILL) while its saga is half way through a few
/// hundred orders: a second process resumes from the database, every order is reserved exactly
/// once, and the payment deadlines, which are rows too, fire after the restart.
@Suite struct OrderSagaCrashTests {
  @Test func aKilledOrderServiceResumesItsSagaFromTheDatabase() async throws {
    // The order process signs with its key of this set, which the in-process inventory trusts.
    let auth = AuthConfiguration.ephemeral()
    let users = try TestUsers()
    let admin = try users.bearer(roles: ["customer", "admin"])
    let count = 300
    try await ScratchDatabase.with("crash_inventory") { inventoryDatabase in
      try await ScratchDatabase.with("crash_order") { orderDatabase in
        try await withHTTP2Host(
          users.withTestKeys(InventoryServiceModule.makeDefinition(settings: InventorySettings())),
          configuration: ServiceConfiguration(service: .inventory, port: 0, database: inventoryDatabase.configuration),
          auth: auth
        ) { inventoryHost, inventoryGRPC in
          let inventory = Mart_Inventory_V1_InventoryService.Client(wrapping: inventoryGRPC)
          let productID = UUID()
          try await inventoryHost.database.query(
            "INSERT INTO stock (product_id) VALUES (\(productID))", logger: TestBed.logger)
          _ = try await inventory.adjustStock(
            .with {
              $0.productID = productID.lowercasedString
              $0.quantityDelta = 10_000
              $0.reason = .restock
            }, metadata: admin)

          // The orders, placed as CreateOrder places them: PENDING, each with its first step due.
          let config = orderDatabase.configuration
          try await withPostgresClient(config) { orders in
            try await MigrationRunner(migrations: OrderServiceModule.definition.migrations, logger: TestBed.logger)
              .migrate(orders)
            let store = OrderStore(database: orders, outbox: Outbox(service: .order), logger: TestBed.logger)
            let request = OrderRequest(
              items: [(productID, 2)],
              shippingAddress: PostalAddress(
                recipientName: "R", lines: ["1 Main Road"], city: "Durban", region: nil, postalCode: nil,
                countryCode: "ZA", phone: nil), paymentProvider: nil, customerNote: nil, idempotencyKey: nil)
            let line = OrderLineRecord(
              productID: productID, sku: "CRASH", name: "Crash", imageURL: nil, unitPriceMinor: 100, quantity: 2)
            for _ in 0..<count {
              _ = try await store.place(
                userID: UUID(), request: request, lines: [line], currency: "ZAR", subtotalMinor: 200,
                shippingFeeMinor: 0,
                provider: .sandbox, paymentWindow: .seconds(8))
            }

            let inventoryPort = try #require(try await inventoryHost.server.listeningAddress?.ipv4?.port)
            let environment =
              auth.keys.environment(for: .service(.order)).merging([
                "MART_ORDER_DATABASE_URL":
                  "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)",
                "MART_ORDER_PORT": "\(try freePort())", "MART_INVENTORY_ADDRESS": "127.0.0.1:\(inventoryPort)",
                "MART_ORDER_SAGA_STEP_LEASE": "1s", "MART_LOG_LEVEL": "error", "KAFKA_BROKERS": "",
              ]) { _, new in new }
            func ordersIn(_ status: String) async throws -> Int {
              let rows = try await orders.query(
                "SELECT count(*)::int8 FROM orders WHERE status = \(status)", logger: TestBed.logger)
              var result = 0
              for try await value in rows.decode(Int64.self) { result = Int(value) }
              return result
            }

            let first = try ChildProcess.mart(["serve", "order"], environment: environment)
            #expect(await eventually(attempts: 600) { try await ordersIn("awaiting_payment") >= 30 })
            first.signal(SIGKILL)
            _ = await first.waitForExit()
            let reservedBeforeKill = try await ordersIn("awaiting_payment")
            #expect(reservedBeforeKill < count, "the saga finished before it could be killed")

            let second = try ChildProcess.mart(["serve", "order"], environment: environment)
            // Each order reserved once: one STOCK_RESERVED entry each (some may have reached
            // their deadline since, so this counts entries, not statuses).
            func reservedEntries() async throws -> Int {
              let rows = try await orders.query(
                "SELECT count(*)::int8 FROM order_timeline WHERE kind = 'stock_reserved'", logger: TestBed.logger)
              var result = 0
              for try await value in rows.decode(Int64.self) { result = Int(value) }
              return result
            }
            #expect(await eventually(attempts: 1200) { try await reservedEntries() >= count })
            #expect(try await reservedEntries() == count)

            // The deadlines, scheduled before the kill for some orders, fire after it for all.
            #expect(await eventually(attempts: 1200) { try await ordersIn("cancelled") == count })
            #expect(
              await eventually(attempts: 600) {
                try await inventory.getStock(.with { $0.productID = productID.lowercasedString }, metadata: admin)
                  .reserved == 0
              })
            second.signal(SIGTERM)
            #expect(await second.waitForExit() == 0, "\(second.standardError.suffix(1500))")
          }
        }
      }
    }
  }
}
