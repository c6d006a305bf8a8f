import Foundation
import GRPCCore
import InventoryService
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import ProductService
import SwiftProtobuf
import Testing
import UserService

/// The inventory service in-process over gRPC, on a scratch database of its own per test.
@Suite struct InventoryServiceTests {
  @Test func productCreatedMakesOneStockRecordHoweverOftenItArrives() async throws {
    try await InventoryHarness.run("inventory_created") { service in
      let product = UUID().uuidString.lowercased()
      let other = UUID().uuidString.lowercased()
      // The same event three times (a broker redelivers), then a second event for the same
      // product, then another product's.
      try await service.publishProductCreated(product, times: 3)
      try await service.publishProductCreated(product)
      try await service.publishProductCreated(other)
      let arrived = await eventually { try await service.count("SELECT count(*)::int FROM inbox") == 3 }
      #expect(arrived)
      #expect(try await service.count("SELECT count(*)::int FROM stock") == 2)
      let stock = try await service.stock(product)
      #expect(stock.onHand == 0)
      #expect(stock.available == 0)
      // The record takes adjustments.
      #expect(try await service.adjust(product, by: 4, reason: .restock).stock.available == 4)
      try await service.publishProductCreated(product)
      let again = await eventually { try await service.count("SELECT count(*)::int FROM inbox") == 4 }
      #expect(again)
      #expect(try await service.stock(product).onHand == 4)
    }
  }

  /// Hosts in one test call each other over the in-process network: the inventory service
  /// verifies a user's token with the keys the user service publishes (GetJwks), without ports.
  @Test func userTokensVerifyAgainstTheUserServiceOverTheInProcessNetwork() async throws {
    let network = InProcessNetwork()
    let auth = AuthConfiguration.ephemeral()
    let users = UserServiceModule.makeDefinition(
      options: UserServiceOptions(passwordCost: .testing, keyEncryption: .random()))
    try await ScratchDatabase.with("net_user") { userDatabase in
      try await ScratchDatabase.with("net_inventory") { inventoryDatabase in
        try await withHost(
          users, configuration: ServiceConfiguration(service: .user, port: 0, database: userDatabase.configuration),
          auth: auth, network: network
        ) { _, userGRPC in
          try await withHost(
            InventoryServiceModule.makeDefinition(settings: InventorySettings()),
            configuration: ServiceConfiguration(
              service: .inventory, port: 0, database: inventoryDatabase.configuration),
            auth: auth, network: network
          ) { _, inventoryGRPC in
            let userService = Mart_User_V1_UserService.Client(wrapping: userGRPC)
            _ = try await userService.register(
              .with {
                $0.email = "net@example.com"
                $0.password = "correct horse battery staple"
                $0.fullName = "Net User"
              })
            let registered = try await userService.login(
              .with {
                $0.email = "net@example.com"
                $0.password = "correct horse battery staple"
              })
            let inventory = Mart_Inventory_V1_InventoryService.Client(wrapping: inventoryGRPC)
            let customer: Metadata = ["authorization": "Bearer \(registered.tokens.accessToken)"]
            // An admin-only call: a verified customer token is PERMISSION_DENIED; one the service
            // could not verify would be UNAUTHENTICATED, and unreachable keys UNAVAILABLE.
            let error = await rpcError {
              _ = try await inventory.listMovements(.with { $0.productID = UUID().uuidString }, metadata: customer)
            }
            #expect(error?.code == .permissionDenied)
          }
        }
      }
    }
  }

  @Test func aProductCreatedInTheCatalogueGetsAStockRecordOverTheBroker() async throws {
    let users = try TestUsers()
    let transport = try TestBed.kafkaTransport(prefix: TestBed.uniquePrefix("inventory"))
    try await withServices([transport]) {
      try await ScratchDatabase.with("e2e_product") { productDatabase in
        try await ScratchDatabase.with("e2e_inventory") { inventoryDatabase in
          try await withHost(
            InventoryServiceModule.makeDefinition(settings: InventorySettings()), service: .inventory,
            database: inventoryDatabase, users: users, transport: transport
          ) { inventoryHost, inventoryGRPC in
            try await withHost(
              ProductServiceModule.definition, service: .product, database: productDatabase, users: users,
              transport: transport
            ) { _, productGRPC in
              let admin = try users.bearer(roles: ["customer", "admin"])
              let products = Mart_Product_V1_ProductService.Client(wrapping: productGRPC)
              let inventory = Mart_Inventory_V1_InventoryService.Client(wrapping: inventoryGRPC)
              let request = Mart_Product_V1_CreateProductRequest.with {
                $0.sku = "KAFKA-1"
                $0.name = "Broker mug"
                $0.price = .with {
                  $0.currencyCode = "ZAR"
                  $0.amountMinor = 1000
                }
              }
              let product = try await products.createProduct(request, metadata: admin)
              let productID = try #require(UUID(uuidString: product.id))
              let database = inventoryHost.database
              let created = await eventually(attempts: 600) {
                let rows = try await database.query(
                  "SELECT count(*)::int FROM stock WHERE product_id = \(productID)", logger: TestBed.logger)
                for try await count in rows.decode(Int.self) { return count == 1 }
                return false
              }
              #expect(created)
              let adjustRequest = Mart_Inventory_V1_AdjustStockRequest.with {
                $0.productID = product.id
                $0.quantityDelta = 3
                $0.reason = .restock
              }
              let adjusted = try await inventory.adjustStock(adjustRequest, metadata: admin)
              #expect(adjusted.stock.onHand == 3)
            }
          }
        }
      }
    }
  }

  @Test func adjustmentsAreRecordedAndStockNeverGoesNegative() async throws {
    try await InventoryHarness.run("inventory_adjust") { service in
      let product = try await service.product()
      let restock = try await service.adjust(product, by: 10, reason: .restock, note: "delivery 42")
      #expect(restock.stock.onHand == 10)
      #expect(restock.stock.available == 10)
      #expect(restock.movement.kind == .adjustment)
      #expect(restock.movement.reason == .restock)
      #expect(restock.movement.onHandDelta == 10)
      #expect(restock.movement.onHandAfter == 10)
      #expect(restock.movement.actorUserID == service.adminID.uuidString.lowercased())
      #expect(restock.movement.note == "delivery 42")
      #expect(restock.movement.hasCreateTime)
      #expect(try await service.adjust(product, by: -3, reason: .damage).stock.onHand == 7)

      // Below zero: refused, nothing recorded.
      let negative = await rpcError { _ = try await service.adjust(product, by: -8, reason: .correction) }
      #expect(negative?.code == .failedPrecondition)
      #expect(negative?.reason == "STOCK_WOULD_GO_NEGATIVE")
      // Below what is reserved: refused too.
      let order = UUID().uuidString
      _ = try await service.reserve(order, [(product, 5)])
      let belowReserved = await rpcError { _ = try await service.adjust(product, by: -3, reason: .damage) }
      #expect(belowReserved?.code == .failedPrecondition)
      let stock = try await service.stock(product)
      #expect(stock.onHand == 7)
      #expect(stock.reserved == 5)
      #expect(stock.available == 2)

      // The ledger, newest first, in pages; by kind.
      let all = try await service.movements(product)
      #expect(all.movements.map(\.kind) == [.reservation, .adjustment, .adjustment])
      #expect(all.movements.map(\.onHandAfter) == [7, 7, 10])
      #expect(all.movements.map(\.reservedAfter) == [5, 0, 0])
      #expect(all.movements.first?.orderID == order.lowercased())
      let firstPage = try await service.movements(product, pageSize: 2)
      #expect(firstPage.movements.count == 2)
      let secondPage = try await service.movements(product, pageSize: 2, pageToken: firstPage.nextPageToken)
      #expect(secondPage.movements.map(\.id) == [try #require(all.movements.last).id])
      #expect(secondPage.nextPageToken.isEmpty)
      #expect(try await service.movements(product, kind: .adjustment).movements.count == 2)
      let otherFilter = await invalidFields {
        _ = try await service.movements(product, kind: .reservation, pageToken: firstPage.nextPageToken)
      }
      #expect(otherFilter == ["page_token"])

      // Idempotent by request id; a reused key for another adjustment is refused.
      let key = UUID().uuidString
      let first = try await service.adjust(product, by: 2, reason: .return, requestID: key)
      let retry = try await service.adjust(product, by: 2, reason: .return, requestID: key)
      #expect(retry.movement == first.movement)
      #expect(retry.stock.onHand == 9)
      #expect(try await service.stock(product).onHand == 9)
      let reused = await rpcError { _ = try await service.adjust(product, by: 5, reason: .return, requestID: key) }
      #expect(reused?.code == .alreadyExists)
      #expect(reused?.reason == "IDEMPOTENCY_KEY_REUSED")
      #expect(try await service.count("SELECT count(*)::int FROM stock_movements WHERE kind = 'adjustment'") == 3)

      // Input rules, access, and unknown products.
      let noReason = await invalidFields { _ = try await service.adjust(product, by: 1, reason: .unspecified) }
      #expect(noReason == ["reason"])
      let wrongSign = await invalidFields { _ = try await service.adjust(product, by: -1, reason: .restock) }
      #expect(wrongSign == ["quantity_delta"])
      let zero = await invalidFields { _ = try await service.adjust(product, by: 0, reason: .correction) }
      #expect(zero == ["quantity_delta"])
      let badThreshold = await invalidFields {
        _ = try await service.adjust(product, by: 1, reason: .restock, threshold: -1)
      }
      #expect(badThreshold == ["low_stock_threshold"])
      let customer = await rpcError {
        _ = try await service.adjust(product, by: 1, reason: .restock, metadata: service.customer)
      }
      #expect(customer?.code == .permissionDenied)
      let unknown = await rpcError { _ = try await service.adjust(UUID().uuidString, by: 1, reason: .restock) }
      #expect(unknown?.code == .notFound)
      #expect(try await service.outboxEvents("StockAdjusted").count == 3)
    }
  }

  @Test func fiftyConcurrentReservationsOfOneUnitAgainstTenAvailable() async throws {
    try await InventoryHarness.run("inventory_race") { service in
      let product = try await service.product(onHand: 10)
      let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
        for _ in 0..<50 {
          group.addTask {
            let response = try await service.reserve(UUID().uuidString, [(product, 1)])
            switch response.outcome {
            case .reservation?: return true
            case .insufficientStock?, nil: return false
            }
          }
        }
        return try await group.reduce(into: [Bool]()) { $0.append($1) }
      }
      #expect(outcomes.filter { $0 }.count == 10)
      #expect(outcomes.filter { !$0 }.count == 40)
      let stock = try await service.stock(product)
      #expect(stock.available == 0)
      #expect(stock.reserved == 10)
      #expect(stock.onHand == 10)
      #expect(try await service.count("SELECT count(*)::int FROM reservations") == 10)
      #expect(try await service.movements(product, kind: .reservation).movements.count == 10)
      #expect(try await service.outboxEvents("StockReserved").count == 10)
      #expect(try await service.outboxEvents("StockReservationFailed").count == 40)
    }
  }

  @Test func aReservationShortOnOneLineReservesNothing() async throws {
    try await InventoryHarness.run("inventory_all_or_nothing") { service in
      let plenty = try await service.product(onHand: 5)
      let scarce = try await service.product(onHand: 1)
      let unknown = UUID().uuidString.lowercased()
      let order = UUID().uuidString.lowercased()
      let response = try await service.reserve(order, [(plenty, 2), (scarce, 2), (unknown, 1)])
      let short = response.insufficientStock.shortLines
      #expect(Set(short.map(\.productID)) == [scarce, unknown])
      let scarceLine = try #require(short.first { $0.productID == scarce })
      #expect(scarceLine.requested == 2)
      #expect(scarceLine.available == 1)
      #expect(try await service.stock(plenty).reserved == 0)
      #expect(try await service.stock(scarce).reserved == 0)
      #expect(try await service.count("SELECT count(*)::int FROM reservations") == 0)
      #expect(try await service.count("SELECT count(*)::int FROM stock_movements WHERE kind = 'reservation'") == 0)
      let released = await rpcError { _ = try await service.release(order) }
      #expect(released?.code == .notFound)
      let failed = try await service.outboxEvents("StockReservationFailed")
      #expect(failed.count == 1)
      let event = try Mart_Inventory_V1_StockReservationFailed(serializedBytes: try #require(failed.first).payload)
      #expect(event.orderID == order)
      #expect(Set(event.shortLines.map(\.productID)) == [scarce, unknown])

      // Once there is stock, the same order reserves every line.
      _ = try await service.adjust(scarce, by: 1, reason: .restock)
      let retry = try await service.reserve(order, [(plenty, 2), (scarce, 2)])
      #expect(retry.reservation.status == .active)
      #expect(try await service.stock(scarce).available == 0)
      #expect(try await service.stock(plenty).available == 3)
    }
  }

  @Test func aRepeatedReservationRequestChangesNothing() async throws {
    try await InventoryHarness.run("inventory_idempotent") { service in
      let first = try await service.product(onHand: 10)
      let second = try await service.product(onHand: 10)
      let order = UUID().uuidString.lowercased()
      let reserved = try await service.reserve(order, [(first, 2), (second, 3)])
      #expect(reserved.reservation.status == .active)
      #expect(reserved.reservation.orderID == order)
      // The same request again, in another line order, and ten at once.
      let again = try await service.reserve(order, [(second, 3), (first, 2)])
      #expect(again == reserved)
      let concurrent = try await withThrowingTaskGroup(of: Mart_Inventory_V1_ReserveStockResponse.self) { group in
        for _ in 0..<10 { group.addTask { try await service.reserve(order, [(first, 2), (second, 3)]) } }
        return try await group.reduce(into: [Mart_Inventory_V1_ReserveStockResponse]()) { $0.append($1) }
      }
      #expect(concurrent.allSatisfy { $0 == reserved })
      #expect(try await service.stock(first).reserved == 2)
      #expect(try await service.stock(second).reserved == 3)
      #expect(try await service.outboxEvents("StockReserved").count == 1)

      let conflict = await rpcError { _ = try await service.reserve(order, [(first, 1)]) }
      #expect(conflict?.code == .alreadyExists)
      #expect(conflict?.reason == "RESERVATION_CONFLICT")

      // A concurrent burst of new orders for the same order id (none existing yet).
      let burstOrder = UUID().uuidString
      let burst = try await withThrowingTaskGroup(of: Mart_Inventory_V1_ReserveStockResponse.self) { group in
        for _ in 0..<10 { group.addTask { try await service.reserve(burstOrder, [(first, 1)]) } }
        return try await group.reduce(into: [Mart_Inventory_V1_ReserveStockResponse]()) { $0.append($1) }
      }
      #expect(Set(burst.map(\.reservation.orderID)).count == 1)
      #expect(try await service.stock(first).reserved == 3)
    }
  }

  /// A paid order cancelled before shipping: its committed units go back on hand, once.
  @Test func aReturnPutsACommittedSaleBackOnTheShelf() async throws {
    try await InventoryHarness.run("inventory_return") { service in
      let product = try await service.product(onHand: 10)
      let sold = UUID().uuidString
      _ = try await service.reserve(sold, [(product, 4)])
      _ = try await service.commit(sold)
      #expect(try await service.stock(product).onHand == 6)
      let returned = try await service.client.returnReservation(
        .with {
          $0.orderID = sold
          $0.reason = "order cancelled after payment"
        }, metadata: service.orders)
      #expect(returned.status == .returned)
      let stock = try await service.stock(product)
      #expect(stock.onHand == 10)
      #expect(stock.reserved == 0)
      // Again: nothing more comes back.
      let again = try await service.client.returnReservation(.with { $0.orderID = sold }, metadata: service.orders)
      #expect(again.status == .returned)
      #expect(try await service.stock(product).onHand == 10)
      #expect(
        try await service.movements(product).movements.map(\.kind) == [.return, .commit, .reservation, .adjustment])
      // Only a sale can be returned; a customer cannot call it at all.
      let active = UUID().uuidString
      _ = try await service.reserve(active, [(product, 1)])
      let notSold = await rpcError {
        _ = try await service.client.returnReservation(.with { $0.orderID = active }, metadata: service.orders)
      }
      #expect(notSold?.code == .failedPrecondition)
      #expect(notSold?.reason == "RESERVATION_NOT_ACTIVE")
      let byAdmin = await rpcError {
        _ = try await service.client.returnReservation(.with { $0.orderID = sold }, metadata: service.admin)
      }
      #expect(byAdmin?.code == .permissionDenied)
    }
  }

  @Test func commitSellsAndReleaseGivesBack() async throws {
    try await InventoryHarness.run("inventory_commit") { service in
      let product = try await service.product(onHand: 10)
      let sold = UUID().uuidString
      _ = try await service.reserve(sold, [(product, 3)])
      let committed = try await service.commit(sold)
      #expect(committed.status == .committed)
      var stock = try await service.stock(product)
      #expect(stock.onHand == 7)
      #expect(stock.reserved == 0)
      #expect(try await service.commit(sold) == committed)
      let releaseCommitted = await rpcError { _ = try await service.release(sold) }
      #expect(releaseCommitted?.code == .failedPrecondition)
      #expect(releaseCommitted?.reason == "RESERVATION_NOT_ACTIVE")

      let cancelled = UUID().uuidString
      _ = try await service.reserve(cancelled, [(product, 2)])
      #expect(try await service.stock(product).available == 5)
      let released = try await service.release(cancelled)
      #expect(released.status == .released)
      stock = try await service.stock(product)
      #expect(stock.onHand == 7)
      #expect(stock.reserved == 0)
      #expect(try await service.release(cancelled) == released)
      let commitReleased = await rpcError { _ = try await service.commit(cancelled) }
      #expect(commitReleased?.code == .failedPrecondition)
      let missing = await rpcError { _ = try await service.commit(UUID().uuidString) }
      #expect(missing?.code == .notFound)

      #expect(
        try await service.movements(product).movements.map(\.kind) == [
          .release, .reservation, .commit, .reservation, .adjustment,
        ])
      #expect(try await service.outboxEvents("StockCommitted").count == 1)
      let releasedEvents = try await service.outboxEvents("StockReleased")
      #expect(releasedEvents.count == 1)
      let event = try Mart_Inventory_V1_StockReleased(serializedBytes: try #require(releasedEvents.first).payload)
      #expect(event.reason == "order cancelled")
      #expect(event.lines.map(\.quantity) == [2])
    }
  }

  @Test func theSweeperReleasesExpiredReservations() async throws {
    let settings = InventorySettings(reservationTTL: .milliseconds(300), sweepInterval: .milliseconds(100))
    try await InventoryHarness.run("inventory_sweeper", settings: settings) { service in
      let product = try await service.product(onHand: 4)
      let order = UUID().uuidString.lowercased()
      let reserved = try await service.reserve(order, [(product, 3)])
      #expect(reserved.reservation.status == .active)
      let releasedBySweeper = await eventually { try await service.stock(product).reserved == 0 }
      #expect(releasedBySweeper)
      let status = try await service.count(
        "SELECT count(*)::int FROM reservations WHERE status = 'released' AND release_reason = 'expired'")
      #expect(status == 1)
      let events = try await service.outboxEvents("StockReleased")
      #expect(events.count == 1)
      let event = try Mart_Inventory_V1_StockReleased(serializedBytes: try #require(events.first).payload)
      #expect(event.orderID == order)
      #expect(event.reason == "expired")
      // The order service's late commit finds it released.
      let late = await rpcError { _ = try await service.commit(order) }
      #expect(late?.code == .failedPrecondition)
    }
  }

  @Test func theSweeperLeavesUnexpiredReservations() async throws {
    try await InventoryHarness.run("inventory_unexpired") { service in
      let product = try await service.product(onHand: 4)
      _ = try await service.reserve(UUID().uuidString, [(product, 3)])
      let sweeper = try InventoryServiceModule.makeSweeper(
        database: service.database, settings: InventorySettings(), logger: TestBed.logger)
      #expect(try await sweeper.sweep() == 0)
      #expect(try await service.stock(product).reserved == 3)
      // Once its time is up, it goes.
      try await service.database.query("UPDATE reservations SET expires_at = now()", logger: TestBed.logger)
      #expect(try await sweeper.sweep() == 1)
      #expect(try await service.stock(product).reserved == 0)
      #expect(try await sweeper.sweep() == 0)
    }
  }

  @Test func lowStockIsPublishedOncePerCrossing() async throws {
    try await InventoryHarness.run("inventory_low") { service in
      let product = try await service.product(onHand: 5, threshold: 3)
      func lowStockCount() async throws -> Int { try await service.outboxEvents("LowStock").count }
      #expect(try await lowStockCount() == 0)
      _ = try await service.reserve(UUID().uuidString, [(product, 2)])  // available 3: at the threshold
      #expect(try await lowStockCount() == 1)
      let oneMore = UUID().uuidString
      _ = try await service.reserve(oneMore, [(product, 1)])  // 2: still low, no second alert
      _ = try await service.release(oneMore)  // 3: still low
      #expect(try await lowStockCount() == 1)
      _ = try await service.adjust(product, by: 5, reason: .restock)  // 8: recovered
      #expect(try await lowStockCount() == 1)
      _ = try await service.reserve(UUID().uuidString, [(product, 6)])  // 2: low again
      #expect(try await lowStockCount() == 2)
      let events = try await service.outboxEvents("LowStock")
      let last = try Mart_Inventory_V1_LowStock(serializedBytes: try #require(events.last).payload)
      #expect(last.productID == product)
      #expect(last.available == 2)
      #expect(last.lowStockThreshold == 3)
    }
  }

  @Test func readsAndInputRules() async throws {
    try await InventoryHarness.run("inventory_reads") { service in
      let product = try await service.product(onHand: 6, threshold: 2)
      let unknown = UUID().uuidString.lowercased()
      // Customers and anonymous callers see what they can order; admins see the warehouse.
      let anonymous = try await service.client.getStock(.with { $0.productID = product })
      #expect(anonymous.available == 6)
      #expect(!anonymous.hasOnHand)
      #expect(!anonymous.hasLowStockThreshold)
      #expect(try await service.stock(product, metadata: service.customer).hasReserved == false)
      let full = try await service.stock(product)
      #expect(full.onHand == 6)
      #expect(full.lowStockThreshold == 2)
      #expect(try await service.stock(unknown).available == 0)

      let batchRequest = Mart_Inventory_V1_BatchGetStockRequest.with { $0.productIds = [unknown, product, unknown] }
      let batch = try await service.client.batchGetStock(batchRequest, metadata: service.orders)
      #expect(batch.stocks.map(\.productID) == [unknown, product])
      #expect(batch.stocks.map(\.available) == [0, 6])
      let customerBatch = await rpcError {
        _ = try await service.client.batchGetStock(batchRequest, metadata: service.customer)
      }
      #expect(customerBatch?.code == .permissionDenied)

      let noLines = await invalidFields { _ = try await service.reserve(UUID().uuidString, []) }
      #expect(noLines == ["lines"])
      let badLines = await invalidFields {
        _ = try await service.reserve("order-1", [(product, 0), (product, 1), ("x", 1)])
      }
      #expect(badLines == ["order_id", "lines[0].quantity", "lines[1].product_id", "lines[2].product_id"])
      let badStock = await invalidFields { _ = try await service.stock("nope") }
      #expect(badStock == ["product_id"])
      let badPage = await invalidFields { _ = try await service.movements(product, pageSize: -1) }
      #expect(badPage == ["page_size"])
      // Above the maximum is not an error (AIP-158): the service gives the maximum.
      _ = try await service.movements(product, pageSize: 201)
      let customerReserve = await rpcError {
        _ = try await service.client.reserveStock(.init(), metadata: service.customer)
      }
      #expect(customerReserve?.code == .permissionDenied)
    }
  }

  /// Each service has its own key and may call only what proto/ lists it as a caller of
  /// (`mart.api.v1.callers`): the order service reserves stock; the payment and notification
  /// services, with valid service tokens of their own, may not, and the order service's token for
  /// another service is not accepted here.
  @Test func onlyTheServicesAnRPCNamesMayCallIt() async throws {
    try await InventoryHarness.run("inventory_callers") { service in
      let product = try await service.product(onHand: 5)
      let request = Mart_Inventory_V1_ReserveStockRequest.with {
        $0.orderID = UUID().uuidString.lowercased()
        $0.lines = [
          .with {
            $0.productID = product; $0.quantity = 1
          }
        ]
      }
      _ = try await service.client.reserveStock(request, metadata: service.orders)
      for caller in [MartService.payment, .notification] {
        let refused = await rpcError {
          _ = try await service.client.reserveStock(
            request, metadata: try await service.users.serviceBearer(caller, to: .inventory))
        }
        #expect(refused?.code == .permissionDenied, "\(caller)")
        #expect(refused?.message.contains(caller.rawValue) == true)
      }
      let replayed = await rpcError {
        _ = try await service.client.reserveStock(
          request, metadata: try await service.users.serviceBearer(.order, to: .product))
      }
      #expect(replayed?.code == .unauthenticated)
      #expect(try await service.stock(product).reserved == 1)
    }
  }
}
