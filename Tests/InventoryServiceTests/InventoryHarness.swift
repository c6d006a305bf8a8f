import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import InventoryService
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import PostgresNIO
import ServiceLifecycle
import Testing

// Note: no closure literal inside `#expect(...)` in these tests. Swift 6.3.1 has been seen to call
// another closure of the same test function in its place (a mangling collision between closures
// inside and outside macro expansions); values are computed first and then expected.

/// User and service tokens for tests: the user service is not running, so the services under
/// test verify user tokens against this key (their definitions' `makeUserKeyProvider` is replaced).
struct TestUsers: Sendable {
  let auth = AuthConfiguration.ephemeral()
  let key: TokenSigningKey

  init() throws {
    let random = try #require(AuthConfiguration.ephemeral().serviceKey)
    key = TokenSigningKey(kid: "test-users", privateKey: random.privateKey)
  }

  func withTestKeys(_ definition: ServiceDefinition) -> ServiceDefinition {
    var definition = definition
    let keys = StaticKeyProvider([key.kid: key.privateKey.publicKey])
    definition.makeUserKeyProvider = { _ in keys }
    return definition
  }

  func bearer(roles: [String], subject: UUID = UUID()) throws -> Metadata {
    let now = Int64(Date().timeIntervalSince1970)
    let token = try key.sign(
      AccessTokenClaims(
        sub: subject.uuidString.lowercased(), roles: roles, iss: auth.issuer, aud: auth.audience, iat: now,
        exp: now + 3600))
    return ["authorization": "Bearer \(token)"]
  }

  func serviceBearer(_ service: MartService) async throws -> Metadata {
    let issuer = try #require(ServiceTokenIssuer(service: service, configuration: auth))
    return ["authorization": "Bearer \(try await issuer.token())"]
  }
}

/// Starts `definition` on `database` (port 0), waits until it serves, and runs `body` with the
/// host and a gRPC client connected to it, while `extra` services run too.
func withHost(
  _ definition: ServiceDefinition, service: MartService, database: ScratchDatabase, users: TestUsers,
  transport: any EventTransport, extra: @Sendable (ServiceHost) throws -> [any Service] = { _ in [] },
  _ body: (ServiceHost, GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
) async throws {
  let host = try ServiceHost(
    definition: users.withTestKeys(definition),
    configuration: ServiceConfiguration(service: service, port: 0, database: database.configuration),
    directory: ServiceDirectory(endpoints: [:]), auth: users.auth, transport: transport,
    retryPolicy: RetryPolicy(maximumAttempts: 3, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100)),
    logger: TestBed.logger)
  try await withServices(host.lifecycleServices + (try extra(host))) {
    let address = try #require(try await host.server.listeningAddress?.ipv4)
    let serving = await eventually { await healthStatus(port: address.port, service: "") == .serving }
    #expect(serving)
    try await withGRPCClient(
      transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: address.port), transportSecurity: .plaintext)
    ) { client in
      try await body(host, client)
    }
  }
}

/// The inventory service in-process, on a scratch database, with a gRPC client and tokens.
struct InventoryHarness: Sendable {
  let client: Mart_Inventory_V1_InventoryService.Client<HTTP2ClientTransport.Posix>
  let database: PostgresClient
  let transport: InProcessEventTransport
  let adminID: UUID
  let admin: Metadata
  let customer: Metadata
  /// The order service (the reservation methods are internal).
  let orders: Metadata

  static let logger = TestBed.logger

  /// Runs the service with `settings`; with `sweeper`, its reservation sweeper runs too.
  static func run(
    _ label: String, settings: InventorySettings = InventorySettings(), sweeper: Bool = false,
    _ body: (InventoryHarness) async throws -> Void
  ) async throws {
    let users = try TestUsers()
    let transport = InProcessEventTransport()
    let adminID = UUID()
    try await ScratchDatabase.with(label) { database in
      try await withHost(
        InventoryServiceModule.makeDefinition(settings: settings), service: .inventory, database: database,
        users: users, transport: transport,
        extra: { host in
          sweeper
            ? [try InventoryServiceModule.makeSweeper(database: host.database, settings: settings, logger: logger)] : []
        }
      ) { host, client in
        try await body(
          InventoryHarness(
            client: Mart_Inventory_V1_InventoryService.Client(wrapping: client), database: host.database,
            transport: transport, adminID: adminID,
            admin: try users.bearer(roles: ["customer", "admin"], subject: adminID),
            customer: try users.bearer(roles: ["customer"]), orders: try await users.serviceBearer(.order)))
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
    let rows = try await database.query("SELECT event_type, payload FROM outbox ORDER BY id", logger: Self.logger)
    var events: [(type: String, payload: [UInt8])] = []
    for try await (eventType, payload) in rows.decode((String, ByteBuffer).self)
    where type.map({ "mart.inventory.v1." + $0 == eventType }) ?? true {
      events.append((eventType, Array(payload.readableBytesView)))
    }
    return events
  }

  func count(_ sql: String) async throws -> Int {
    let rows = try await database.query(PostgresQuery(unsafeSQL: sql), logger: Self.logger)
    for try await count in rows.decode(Int.self) { return count }
    return 0
  }
}

/// The gRPC error a call failed with.
func rpcError(_ body: () async throws -> Void) async -> RPCError? {
  do {
    try await body()
    return nil
  } catch let error as RPCError {
    return error
  } catch {
    Issue.record("expected an RPCError, got \(error)")
    return nil
  }
}

/// The fields an INVALID_ARGUMENT error names (and an issue if the call did not fail so).
func invalidFields(_ call: () async throws -> Void) async -> [String] {
  let error = await rpcError(call)
  #expect(error?.code == .invalidArgument)
  return error?.badRequestFields ?? []
}

extension RPCError {
  /// The fields a BadRequest detail names.
  var badRequestFields: [String] {
    guard let status = try? unpackGoogleRPCStatus() else { return [] }
    return status.details.compactMap(\.badRequest).flatMap { $0.violations.map(\.field) }
  }

  /// The ErrorInfo reason, if any.
  var reason: String? {
    guard let status = try? unpackGoogleRPCStatus() else { return nil }
    return status.details.compactMap(\.errorInfo).first?.reason
  }
}
