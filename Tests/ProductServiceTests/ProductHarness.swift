import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import MartProto
import MartRuntime
import MartTestSupport
import PostgresNIO
import ProductService
import SwiftProtobuf
import Testing

/// User tokens for tests: the user service is not running, so the service under test verifies
/// user tokens against this key (its definition's `makeUserKeyProvider` is replaced).
struct TestUsers: Sendable {
  let auth = AuthConfiguration.ephemeral()
  let key: TokenSigningKey

  init() throws {
    let random = try #require(AuthConfiguration.ephemeral().serviceKey)
    key = TokenSigningKey(kid: "test-users", privateKey: random.privateKey)
  }

  var keyProvider: StaticKeyProvider { StaticKeyProvider([key.kid: key.privateKey.publicKey]) }

  func token(roles: [String], subject: UUID = UUID()) throws -> String {
    let now = Int64(Date().timeIntervalSince1970)
    return try key.sign(
      AccessTokenClaims(
        sub: subject.uuidString.lowercased(), roles: roles, iss: auth.issuer, aud: auth.audience, iat: now,
        exp: now + 3600))
  }

  func bearer(roles: [String], subject: UUID = UUID()) throws -> Metadata {
    ["authorization": "Bearer \(try token(roles: roles, subject: subject))"]
  }
}

/// The product service in-process, on a scratch database, with a gRPC client.
struct ProductHarness: Sendable {
  let client: Mart_Product_V1_ProductService.Client<HTTP2ClientTransport.Posix>
  let database: PostgresClient
  let admin: Metadata
  let customer: Metadata
  /// Another service (BatchGetProducts is internal).
  let service: Metadata

  static func run(_ label: String, _ body: (ProductHarness) async throws -> Void) async throws {
    let users = try TestUsers()
    var definition = ProductServiceModule.definition
    let keys = users.keyProvider
    definition.makeUserKeyProvider = { _ in keys }
    try await ScratchDatabase.with(label) { database in
      let host = try ServiceHost(
        definition: definition,
        configuration: ServiceConfiguration(service: .product, port: 0, database: database.configuration),
        directory: ServiceDirectory(endpoints: [:]), auth: users.auth, transport: InProcessEventTransport(),
        logger: TestBed.logger)
      try await withServices(host.lifecycleServices) {
        let address = try #require(try await host.server.listeningAddress?.ipv4)
        // (No closure literal inside #expect: Swift 6.3.1 can swap such a closure with another closure
        // of the same function, see the report of issue 5.)
        let serving = await eventually { await healthStatus(port: address.port, service: "") == .serving }
        #expect(serving)
        try await withGRPCClient(
          transport: .http2NIOPosix(
            target: .ipv4(address: "127.0.0.1", port: address.port), transportSecurity: .plaintext)
        ) { grpc in
          let issuer = try #require(ServiceTokenIssuer(service: .order, configuration: users.auth))
          let serviceToken = try await issuer.token()
          try await body(
            ProductHarness(
              client: Mart_Product_V1_ProductService.Client(wrapping: grpc), database: host.database,
              admin: try users.bearer(roles: ["customer", "admin"]), customer: try users.bearer(roles: ["customer"]),
              service: ["authorization": "Bearer \(serviceToken)"]))
        }
      }
    }
  }

  func createProduct(
    sku: String, name: String, description: String = "", price: Int64 = 1000, currency: String = "ZAR",
    category: String = "", brand: String = ""
  ) async throws -> Mart_Product_V1_Product {
    try await client.createProduct(
      .with {
        $0.sku = sku
        $0.name = name
        $0.description_p = description
        $0.price = .with {
          $0.currencyCode = currency
          $0.amountMinor = price
        }
        $0.categoryID = category
        $0.brand = brand
      }, metadata: admin)
  }

  func get(_ id: String, metadata: Metadata = [:]) async throws -> Mart_Product_V1_Product {
    try await client.getProduct(.with { $0.productID = id }, metadata: metadata)
  }

  func archive(_ id: String, metadata: Metadata? = nil) async throws -> Mart_Product_V1_Product {
    try await client.archiveProduct(.with { $0.productID = id }, metadata: metadata ?? admin)
  }

  func update(
    _ id: String, _ product: Mart_Product_V1_Product, paths: [String], version: Int64, metadata: Metadata? = nil
  ) async throws -> Mart_Product_V1_Product {
    try await client.updateProduct(
      .with {
        $0.productID = id
        $0.product = product
        $0.updateMask = Google_Protobuf_FieldMask(protoPaths: paths)
        $0.version = version
      }, metadata: metadata ?? admin)
  }

  func rename(_ id: String, to name: String, version: Int64) async throws -> Mart_Product_V1_Product {
    try await update(id, .with { $0.name = name }, paths: ["name"], version: version)
  }

  func list(
    query: String = "", sort: Mart_Product_V1_ListProductsRequest.Sort = .unspecified, category: String = "",
    minPrice: Int64? = nil, maxPrice: Int64? = nil, status: Mart_Product_V1_Product.Status = .unspecified,
    pageSize: Int32 = 0, pageToken: String = "", metadata: Metadata = [:]
  ) async throws -> Mart_Product_V1_ListProductsResponse {
    try await client.listProducts(
      .with {
        $0.query = query
        $0.sort = sort
        $0.categoryID = category
        if let minPrice { $0.minPriceMinor = minPrice }
        if let maxPrice { $0.maxPriceMinor = maxPrice }
        $0.status = status
        $0.pageSize = pageSize
        $0.pageToken = pageToken
      }, metadata: metadata)
  }

  /// The ids ListProducts returns (first page).
  func listIDs(
    query: String = "", sort: Mart_Product_V1_ListProductsRequest.Sort = .unspecified, category: String = "",
    minPrice: Int64? = nil, maxPrice: Int64? = nil
  ) async throws -> [String] {
    try await list(query: query, sort: sort, category: category, minPrice: minPrice, maxPrice: maxPrice).products.map(
      \.id)
  }

  func createCategory(_ name: String, slug: String = "", parent: String = "") async throws -> Mart_Product_V1_Category {
    try await client.createCategory(
      .with {
        $0.name = name
        $0.slug = slug
        $0.parentID = parent
      }, metadata: admin)
  }

  /// The event types in the outbox, oldest first.
  func outboxEvents() async throws -> [(type: String, payload: [UInt8])] {
    let rows = try await database.query("SELECT event_type, payload FROM outbox ORDER BY id", logger: TestBed.logger)
    var events: [(type: String, payload: [UInt8])] = []
    for try await (type, payload) in rows.decode((String, ByteBuffer).self) {
      events.append((type, Array(payload.readableBytesView)))
    }
    return events
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
