import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// Operations on the product database for the `mart` command (no gRPC, no token): the same store
/// code as CreateCategory and CreateProduct, so every product made here emits ProductCreated
/// through the outbox like one an admin makes over the API.
public enum ProductAdministration {
  /// A category of a catalog to load, with its products.
  public struct CatalogCategory: Sendable {
    public var name: String
    /// Unique: a category whose slug exists is not made again.
    public var slug: String
    public var description: String
    public var products: [CatalogProduct]

    public init(name: String, slug: String, description: String, products: [CatalogProduct]) {
      self.name = name
      self.slug = slug
      self.description = description
      self.products = products
    }
  }

  /// A product of a catalog to load.
  public struct CatalogProduct: Sendable {
    /// Unique: a product whose SKU exists is not made again.
    public var sku: String
    public var name: String
    public var description: String
    public var priceMinor: Int64
    public var currency: String
    public var brand: String?
    public var attributes: [String: String]

    public init(
      sku: String, name: String, description: String, priceMinor: Int64, currency: String, brand: String? = nil,
      attributes: [String: String] = [:]
    ) {
      self.sku = sku
      self.name = name
      self.description = description
      self.priceMinor = priceMinor
      self.currency = currency
      self.brand = brand
      self.attributes = attributes
    }
  }

  /// What `loadCatalog` did.
  public struct CatalogLoad: Sendable, Equatable {
    /// Every product of the catalog by SKU, whether made now or before.
    public var productIDs: [String: UUID]
    public var categoriesCreated: Int
    public var productsCreated: Int
  }

  /// Makes the categories and products of `catalog` that do not exist yet (by slug and by SKU);
  /// running it again changes nothing. Rules and events are those of the API.
  public static func loadCatalog(
    _ catalog: [CatalogCategory], database: PostgresClient, logger: Logger
  ) async throws -> CatalogLoad {
    let store = ProductStore(database: database, outbox: Outbox(service: .product), logger: logger)
    var load = CatalogLoad(productIDs: [:], categoriesCreated: 0, productsCreated: 0)
    for category in catalog {
      let categoryID: UUID
      if let existing = try await id(database, logger, "SELECT id FROM categories WHERE slug = \(category.slug)") {
        categoryID = existing
      } else {
        categoryID =
          try await store.createCategory(
            name: category.name, slug: category.slug, parentID: nil, description: category.description
          ).id
        load.categoriesCreated += 1
      }
      for product in category.products {
        if let existing = try await id(database, logger, "SELECT id FROM products WHERE sku = \(product.sku)") {
          load.productIDs[product.sku] = existing
          continue
        }
        let created = try await store.create(
          ProductFields(
            sku: product.sku, name: product.name, description: product.description, priceMinor: product.priceMinor,
            currency: product.currency, categoryID: categoryID, brand: product.brand, imageURLs: [],
            attributes: product.attributes, status: .active))
        load.productIDs[product.sku] = created.id
        load.productsCreated += 1
      }
    }
    return load
  }

  private static func id(_ database: PostgresClient, _ logger: Logger, _ query: PostgresQuery) async throws -> UUID? {
    for try await id in try await database.query(query, logger: logger).decode(UUID.self) { return id }
    return nil
  }
}
