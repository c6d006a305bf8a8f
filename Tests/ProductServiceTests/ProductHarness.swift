import Foundation
import GRPCCore
import GRPCInProcessTransport
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import ProductService
import SwiftProtobuf
import Testing

/// The product service in-process, on a scratch database, with a gRPC client.
struct ProductHarness: Sendable {
  let client: Mart_Product_V1_ProductService.Client<InProcessTransport.Client>
  let database: PostgresClient
  let admin: Metadata
  let customer: Metadata
  /// Another service (BatchGetProducts is internal).
  let service: Metadata

  static func run(_ label: String, _ body: (ProductHarness) async throws -> Void) async throws {
    let users = try TestUsers()
    try await ScratchDatabase.with(label) { database in
      try await withHost(ProductServiceModule.definition, service: .product, database: database, users: users) {
        host, grpc in
        try await body(
          ProductHarness(
            client: Mart_Product_V1_ProductService.Client(wrapping: grpc), database: host.database,
            admin: try users.bearer(roles: ["customer", "admin"]), customer: try users.bearer(roles: ["customer"]),
            service: try await users.serviceBearer(.order, to: .product)))
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
    try await EventFixtures.outboxEvents(database)
  }
}
