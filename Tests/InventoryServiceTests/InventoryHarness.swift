import Foundation
import GRPCCore
import GRPCInProcessTransport
import InventoryService
import Logging
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import Testing

// Note: no closure literal inside `#expect(...)` in these tests. Swift 6.3.1 has been seen to call
// another closure of the same test function in its place (a mangling collision between closures
// inside and outside macro expansions); values are computed first and then expected.

/// The inventory service in-process, on a scratch database, with a gRPC client and tokens.
struct InventoryHarness: Sendable {
  let client: Mart_Inventory_V1_InventoryService.Client<InProcessTransport.Client>
  let database: PostgresClient
  let transport: InProcessEventTransport
  let adminID: UUID
  let admin: Metadata
  let customer: Metadata
  /// The order service (the reservation methods are internal).
  let orders: Metadata
  /// Tokens of other callers.
  let users: TestUsers

  static let logger = TestBed.logger

  /// Runs the service with `settings` (its reservation sweeper runs too, every
  /// `settings.sweepInterval`).
  static func run(
    _ label: String, settings: InventorySettings = InventorySettings(), _ body: (InventoryHarness) async throws -> Void
  ) async throws {
    let users = try TestUsers()
    let transport = InProcessEventTransport()
    let adminID = UUID()
    try await ScratchDatabase.with(label) { database in
      try await withHost(
        InventoryServiceModule.makeDefinition(settings: settings), service: .inventory, database: database,
        users: users, transport: transport
      ) { host, client in
        try await body(
          InventoryHarness(
            client: Mart_Inventory_V1_InventoryService.Client(wrapping: client), database: host.database,
            transport: transport, adminID: adminID,
            admin: try users.bearer(roles: ["customer", "admin"], subject: adminID),
            customer: try users.bearer(roles: ["customer"]),
            orders: try await users.serviceBearer(.order, to: .inventory),
            users: users))
      }
    }
  }

  // MARK: Set-up

  /// A product with a stock record (as the ProductCreated consumer makes it) and `onHand` units.
  func product(onHand: Int32 = 0, threshold: Int32? = nil) async throws -> String {
    let id = UUID()
    try await database.query("INSERT INTO stock (product_id) VALUES (\(id))", logger: Self.logger)
    if onHand > 0 || threshold != nil {
      _ = try await adjust(id.uuidString.lowercased(), by: onHand, reason: .restock, threshold: threshold)
    }
    return id.uuidString.lowercased()
  }

  /// Publishes a ProductCreated as the product service's relay would.
  func publishProductCreated(_ productID: String, eventID: UUID = UUID(), times: Int = 1) async throws {
    let event = Mart_Product_V1_ProductCreated.with {
      $0.metadata.eventID = eventID.uuidString.lowercased()
      $0.productID = productID
      $0.product = .with { $0.id = productID }
    }
    let envelope = EventEnvelope(
      id: eventID, type: Mart_Product_V1_ProductCreated.protoMessageName, source: "/mart/product", subject: productID,
      time: Date(), topic: EventTopic.products.name, payload: try event.serializedBytes())
    _ = await transport.publish(Array(repeating: OutgoingRecord(envelope), count: times))
  }

  // MARK: Calls

  func adjust(
    _ productID: String, by delta: Int32, reason: Mart_Inventory_V1_AdjustmentReason, threshold: Int32? = nil,
    note: String = "", requestID: String = "", metadata: Metadata? = nil
  ) async throws -> Mart_Inventory_V1_AdjustStockResponse {
    try await client.adjustStock(
      .with {
        $0.productID = productID
        $0.quantityDelta = delta
        $0.reason = reason
        if let threshold { $0.lowStockThreshold = threshold }
        $0.note = note
        $0.requestID = requestID
      }, metadata: metadata ?? admin)
  }

  func stock(_ productID: String, metadata: Metadata? = nil) async throws -> Mart_Inventory_V1_Stock {
    try await client.getStock(.with { $0.productID = productID }, metadata: metadata ?? admin)
  }

  func reserve(_ orderID: String, _ lines: [(String, Int32)]) async throws -> Mart_Inventory_V1_ReserveStockResponse {
    try await client.reserveStock(
      .with {
        $0.orderID = orderID
        $0.lines = lines.map { line in
          .with {
            $0.productID = line.0
            $0.quantity = line.1
          }
        }
      }, metadata: orders)
  }

  func commit(_ orderID: String) async throws -> Mart_Inventory_V1_Reservation {
    try await client.commitReservation(.with { $0.orderID = orderID }, metadata: orders)
  }

  func release(_ orderID: String, reason: String = "order cancelled") async throws -> Mart_Inventory_V1_Reservation {
    try await client.releaseReservation(
      .with {
        $0.orderID = orderID
        $0.reason = reason
      }, metadata: orders)
  }

  func movements(
    _ productID: String, kind: Mart_Inventory_V1_StockMovement.Kind = .unspecified, pageSize: Int32 = 0,
    pageToken: String = ""
  ) async throws -> Mart_Inventory_V1_ListMovementsResponse {
    try await client.listMovements(
      .with {
        $0.productID = productID
        $0.kind = kind
        $0.pageSize = pageSize
        $0.pageToken = pageToken
      }, metadata: admin)
  }

  // MARK: Database

  /// The event types in the outbox, oldest first, with their payloads.
  func outboxEvents(_ type: String? = nil) async throws -> [(type: String, payload: [UInt8])] {
    try await EventFixtures.outboxEvents(database, type: type.map { "mart.inventory.v1." + $0 })
  }

  func count(_ sql: String) async throws -> Int {
    let rows = try await database.query(PostgresQuery(unsafeSQL: sql), logger: Self.logger)
    for try await count in rows.decode(Int.self) { return count }
    return 0
  }
}
