import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import PostgresNIO
import SwiftProtobuf

/// The sort orders of ListProducts, resolved (SORT_UNSPECIFIED is never stored here).
enum ProductSort: String, Sendable {
  case relevance, priceAsc, priceDesc, name, newest
}

/// Where a page of ListProducts starts: the sort key of the last product of the previous page.
/// Only the key of the request's sort is set; `id` breaks ties, so the order is total.
struct ProductCursor: Codable, Sendable, Equatable {
  var id: UUID
  var price: Int64?
  var name: String?
  /// `created_at` in microseconds since 1970.
  var created: Int64?
  /// The `ts_rank` (a float4) as its bit pattern, so it round-trips exactly.
  var rank: UInt32?
}

/// The filters of ListProducts, validated.
struct ProductListQuery: Sendable {
  var text: String?
  var categoryID: UUID?
  var minPrice: Int64?
  var maxPrice: Int64?
  var status: ProductStatus
  var sort: ProductSort
  var after: ProductCursor?
  var limit: Int
}

/// Where a page of ListCategories starts.
struct CategoryCursor: Codable, Sendable, Equatable {
  var name: String
  var id: UUID
}

/// A SQL statement built piece by piece, with its parameters bound as `$n`.
struct SQLBuilder {
  var sql = ""
  var binds = PostgresBindings()

  mutating func append(_ text: String) {
    sql += text
  }

  /// Binds `value` and returns its placeholder.
  mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value) -> String {
    binds.append(value)
    return "$\(binds.count)"
  }

  var query: PostgresQuery { PostgresQuery(unsafeSQL: sql, binds: binds) }
}

/// The product database: products, categories, and their events through the outbox.
struct ProductStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  static let productColumns = ProductRecord.columns
  static let categoryColumns = CategoryRecord.columns

  // MARK: Products

  func create(_ fields: ProductFields) async throws -> ProductRecord {
    do {
      return try await database.transaction(logger: logger) { connection in
        if let category = fields.categoryID {
          try await requireCategory(category, field: "category_id", on: connection)
        }
        let attributes = try Self.json(fields.attributes)
        let rows = try await connection.query(
          """
          INSERT INTO products AS p (sku, name, description, price_minor, currency, category_id, brand, image_urls,
                                     attributes)
          VALUES (\(fields.sku), \(fields.name), \(fields.description), \(fields.priceMinor), \(fields.currency),
                  \(fields.categoryID), \(fields.brand), \(fields.imageURLs), \(attributes)::jsonb)
          RETURNING \(unescaped: Self.productColumns)
          """, logger: logger)
        guard let product = try await Self.products(rows).first else {
          throw RPCError(code: .internalError, message: "the insert returned no row")
        }
        try await outbox.append(
          Mart_Product_V1_ProductCreated.with {
            $0.productID = product.id.lowercasedString
            $0.product = product.proto
          }, aggregateType: "product", aggregateID: product.id.lowercasedString, on: connection, logger: logger)
        return product
      }
    } catch {
      throw Self.mapped(error)
    }
  }

  func product(id: UUID) async throws -> ProductRecord? {
    let rows = try await database.query(
      "SELECT \(unescaped: Self.productColumns) FROM products p WHERE p.id = \(id)", logger: logger)
    return try await Self.products(rows).first
  }

  /// The products with these ids that exist, by id.
  func products(ids: [UUID]) async throws -> [UUID: ProductRecord] {
    let rows = try await database.query(
      "SELECT \(unescaped: Self.productColumns) FROM products p WHERE p.id = ANY(\(ids))", logger: logger)
    var byID: [UUID: ProductRecord] = [:]
    for product in try await Self.products(rows) { byID[product.id] = product }
    return byID
  }

  /// Applies `change` to the product at `version`: NOT_FOUND, ABORTED (VERSION_MISMATCH) when the
  /// version is stale, ALREADY_EXISTS (SKU_ALREADY_EXISTS). A change that changes nothing returns
  /// the product as it is (same version, no event).
  func update(
    id: UUID, expectedVersion: Int64, change: @Sendable (ProductFields) throws -> ProductFields
  ) async throws -> ProductRecord {
    do {
      return try await database.transaction(logger: logger) { connection in
        let current = try await Self.products(
          connection.query(
            "SELECT \(unescaped: Self.productColumns) FROM products p WHERE p.id = \(id) FOR UPDATE", logger: logger)
        ).first
        guard let current else { throw APIStatus.notFound("product \(id.lowercasedString) not found") }
        guard current.version == expectedVersion else { throw Self.versionMismatch(current: current.version) }
        let fields = try change(current.fields)
        let changed = ProductValidation.changedPaths(from: current.fields, to: fields)
        if changed.isEmpty { return current }
        if let category = fields.categoryID, category != current.fields.categoryID {
          try await requireCategory(category, field: "product.category_id", on: connection)
        }
        let attributes = try Self.json(fields.attributes)
        let rows = try await connection.query(
          """
          UPDATE products AS p SET sku = \(fields.sku), name = \(fields.name), description = \(fields.description),
            price_minor = \(fields.priceMinor), currency = \(fields.currency), category_id = \(fields.categoryID),
            brand = \(fields.brand), image_urls = \(fields.imageURLs), attributes = \(attributes)::jsonb,
            status = \(fields.status.rawValue), version = p.version + 1, updated_at = now()
          WHERE p.id = \(id) AND p.version = \(expectedVersion)
          RETURNING \(unescaped: Self.productColumns)
          """, logger: logger)
        guard let updated = try await Self.products(rows).first else {
          throw Self.versionMismatch(current: nil)
        }
        try await outbox.append(
          Mart_Product_V1_ProductUpdated.with {
            $0.productID = updated.id.lowercasedString
            $0.product = updated.proto
            $0.changedFields = Google_Protobuf_FieldMask(protoPaths: changed.map(\.rawValue))
            $0.oldPrice = current.price
            $0.newPrice = updated.price
            $0.version = updated.version
          }, aggregateType: "product", aggregateID: updated.id.lowercasedString, on: connection, logger: logger)
        if current.fields.status == .active, updated.fields.status == .archived {
          try await appendArchived(updated, on: connection)
        }
        return updated
      }
    } catch {
      throw Self.mapped(error)
    }
  }

  /// Archives a product; archiving an archived product returns it unchanged (no event).
  func archive(id: UUID) async throws -> ProductRecord {
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        UPDATE products AS p SET status = 'archived', version = p.version + 1, updated_at = now()
        WHERE p.id = \(id) AND p.status = 'active'
        RETURNING \(unescaped: Self.productColumns)
        """, logger: logger)
      if let archived = try await Self.products(rows).first {
        try await appendArchived(archived, on: connection)
        return archived
      }
      let existing = try await Self.products(
        connection.query("SELECT \(unescaped: Self.productColumns) FROM products p WHERE p.id = \(id)", logger: logger)
      ).first
      guard let existing else { throw APIStatus.notFound("product \(id.lowercasedString) not found") }
      return existing
    }
  }

  private func appendArchived(_ product: ProductRecord, on connection: PostgresConnection) async throws {
    try await outbox.append(
      Mart_Product_V1_ProductArchived.with {
        $0.productID = product.id.lowercasedString
        $0.sku = product.fields.sku
        $0.version = product.version
      }, aggregateType: "product", aggregateID: product.id.lowercasedString, on: connection, logger: logger)
  }

  /// One page of products (at most `query.limit + 1`, so the caller can tell whether there is a
  /// next page), each with its text-search rank (0 without a query).
  func list(_ query: ProductListQuery) async throws -> [(product: ProductRecord, rank: Float)] {
    var builder = SQLBuilder()
    var conditions: [String] = []
    var cte = ""
    if let category = query.categoryID {
      let placeholder = builder.bind(category)
      cte = """
        WITH RECURSIVE tree AS (
          SELECT id FROM categories WHERE id = \(placeholder)
          UNION ALL
          SELECT c.id FROM categories c JOIN tree ON c.parent_id = tree.id
        )

        """
      conditions.append("p.category_id IN (SELECT id FROM tree)")
    }
    var from = "products p"
    var rank = "0::real"
    if let text = query.text {
      from += ", websearch_to_tsquery('english', \(builder.bind(text))) AS q"
      conditions.append("p.search @@ q")
      rank = "ts_rank(p.search, q)"
    }
    conditions.append("p.status = \(builder.bind(query.status.rawValue))")
    if let minimum = query.minPrice { conditions.append("p.price_minor >= \(builder.bind(minimum))") }
    if let maximum = query.maxPrice { conditions.append("p.price_minor <= \(builder.bind(maximum))") }

    let order: String
    switch query.sort {
    case .relevance:
      order = "\(rank) DESC, p.id DESC"
      if let after = query.after, let bits = after.rank {
        let value = builder.bind(Float(bitPattern: bits))
        conditions.append("(\(rank), p.id) < (\(value)::real, \(builder.bind(after.id)))")
      }
    case .priceAsc:
      order = "p.price_minor, p.id"
      if let after = query.after, let price = after.price {
        conditions.append("(p.price_minor, p.id) > (\(builder.bind(price)), \(builder.bind(after.id)))")
      }
    case .priceDesc:
      order = "p.price_minor DESC, p.id DESC"
      if let after = query.after, let price = after.price {
        conditions.append("(p.price_minor, p.id) < (\(builder.bind(price)), \(builder.bind(after.id)))")
      }
    case .name:
      order = "p.name, p.id"
      if let after = query.after, let name = after.name {
        conditions.append("(p.name, p.id) > (\(builder.bind(name)), \(builder.bind(after.id)))")
      }
    case .newest:
      order = "p.created_at DESC, p.id DESC"
      if let after = query.after, let created = after.created {
        let timestamp = "('epoch'::timestamptz + \(builder.bind(created)) * interval '1 microsecond')"
        conditions.append("(p.created_at, p.id) < (\(timestamp), \(builder.bind(after.id)))")
      }
    }
    builder.append(cte)
    builder.append("SELECT \(Self.productColumns), \(rank) FROM \(from) WHERE ")
    builder.append(conditions.joined(separator: " AND "))
    builder.append(" ORDER BY \(order) LIMIT \(builder.bind(query.limit + 1))")

    let rows = try await database.query(builder.query, logger: logger)
    var page: [(product: ProductRecord, rank: Float)] = []
    for try await row in rows.decode(ProductRecord.RankedRow.self) {
      let (
        id, sku, name, description, priceMinor, currency, categoryID, brand, imageURLs, attributes, status, version,
        createdAt, updatedAt, createdMicros, rank
      ) = row
      let product = try ProductRecord(
        (
          id, sku, name, description, priceMinor, currency, categoryID, brand, imageURLs, attributes, status, version,
          createdAt, updatedAt, createdMicros
        ))
      page.append((product, rank))
    }
    return page
  }

  // MARK: Categories

  func createCategory(name: String, slug: String, parentID: UUID?, description: String?) async throws
    -> CategoryRecord
  {
    do {
      return try await database.transaction(logger: logger) { connection in
        if let parentID { try await requireCategory(parentID, field: "parent_id", on: connection) }
        let rows = try await connection.query(
          """
          INSERT INTO categories AS c (name, slug, parent_id, description)
          VALUES (\(name), \(slug), \(parentID), \(description))
          RETURNING \(unescaped: Self.categoryColumns)
          """, logger: logger)
        guard let category = try await Self.categories(rows).first else {
          throw RPCError(code: .internalError, message: "the insert returned no row")
        }
        return category
      }
    } catch {
      throw Self.mapped(error)
    }
  }

  /// Categories by name (at most `limit + 1`), optionally only the children of `parentID`.
  func categories(parentID: UUID?, after: CategoryCursor?, limit: Int) async throws -> [CategoryRecord] {
    var builder = SQLBuilder()
    var conditions = ["true"]
    if let parentID { conditions.append("c.parent_id = \(builder.bind(parentID))") }
    if let after {
      conditions.append("(c.name, c.id) > (\(builder.bind(after.name)), \(builder.bind(after.id)))")
    }
    builder.append(
      "SELECT \(Self.categoryColumns) FROM categories c WHERE \(conditions.joined(separator: " AND ")) "
        + "ORDER BY c.name, c.id LIMIT \(builder.bind(limit + 1))")
    return try await Self.categories(database.query(builder.query, logger: logger))
  }

  /// NOT_FOUND unless the category exists.
  private func requireCategory(_ id: UUID, field: String, on connection: PostgresConnection) async throws {
    let rows = try await connection.query("SELECT 1 FROM categories WHERE id = \(id)", logger: logger)
    for try await _ in rows { return }
    throw APIStatus.notFound("\(field): category \(id.lowercasedString) not found")
  }

  // MARK: Rows and errors

  static func products(_ rows: PostgresRowSequence) async throws -> [ProductRecord] {
    var products: [ProductRecord] = []
    for try await row in rows.decode(ProductRecord.Row.self) { products.append(try ProductRecord(row)) }
    return products
  }

  static func categories(_ rows: PostgresRowSequence) async throws -> [CategoryRecord] {
    var categories: [CategoryRecord] = []
    for try await row in rows.decode(CategoryRecord.Row.self) { categories.append(CategoryRecord(row)) }
    return categories
  }

  static func json(_ attributes: [String: String]) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(attributes), as: UTF8.self)
  }

  static func versionMismatch(current: Int64?) -> GoogleRPCStatus {
    APIStatus.status(
      .aborted, "the product was changed by someone else (version mismatch): read it again and retry",
      reason: "VERSION_MISMATCH", metadata: current.map { ["current_version": "\($0)"] } ?? [:])
  }

  /// Turns the unique keys of the catalogue into ALREADY_EXISTS; anything else passes through.
  static func mapped(_ error: any Error) -> any Error {
    guard error.postgresSQLState == "23505" else { return error.unwrappingTransactionError }
    switch error.postgresConstraint {
    case "products_sku_key":
      return APIStatus.status(.alreadyExists, "another product has this SKU", reason: "SKU_ALREADY_EXISTS")
    case "categories_slug_key":
      return APIStatus.status(.alreadyExists, "another category has this slug", reason: "SLUG_ALREADY_EXISTS")
    case "categories_name_key":
      return RPCError(code: .alreadyExists, message: "another category has this name")
    default:
      return error.unwrappingTransactionError
    }
  }
}
