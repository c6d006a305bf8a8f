import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime

/// The gRPC handlers of mart.product.v1.ProductService. Who may call what (public, admin,
/// internal) is enforced by the server's auth interceptor from the proto's access options before
/// a handler runs; the handlers validate input and apply the catalogue's rules.
struct ProductRPCService: Mart_Product_V1_ProductService.SimpleServiceProtocol {
  let store: ProductStore
  let logger: Logger

  static let defaultPageSize = 20
  static let maximumPageSize = 100
  static let defaultCategoryPageSize = 100
  static let maximumCategoryPageSize = 500
  static let maximumBatchSize = 100

  func createProduct(
    request: Mart_Product_V1_CreateProductRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_Product {
    let fields = try ProductValidation.create(request)
    return try await store.create(fields).proto
  }

  func getProduct(
    request: Mart_Product_V1_GetProductRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_Product {
    let id = try RequestValidation.requiredUUID(request.productID, field: "product_id")
    guard let product = try await store.product(id: id) else {
      throw APIStatus.notFound("product \(request.productID) not found")
    }
    return product.proto
  }

  func listProducts(
    request: Mart_Product_V1_ListProductsRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_ListProductsResponse {
    var query = try Self.listQuery(request, callerIsAdmin: Caller.current?.isAdmin == true)
    let fingerprint = Self.fingerprint(query)
    query.after = try PageTokenCodec.decode(request.pageToken, as: ProductCursor.self, fingerprint: fingerprint)
    if let after = query.after, !Self.cursor(after, fits: query.sort) {
      throw APIStatus.invalid("page_token", "was issued for a request with another sort order")
    }
    let page = PageTokenCodec.page(try await store.list(query), limit: query.limit, fingerprint: fingerprint) {
      Self.cursor(after: $0.product, rank: $0.rank, sort: query.sort)
    }
    return .with {
      $0.products = page.rows.map(\.product.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func updateProduct(
    request: Mart_Product_V1_UpdateProductRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_Product {
    var validation = RequestValidation()
    let id = validation.uuid(request.productID, field: "product_id")
    let paths = ProductValidation.paths(request.updateMask, present: request.hasUpdateMask, into: &validation)
    if !request.hasProduct {
      validation.add("product", "is required: the new values of the fields in update_mask")
    } else if !request.product.id.isEmpty, let id, UUID(uuidString: request.product.id) != id {
      validation.add("product.id", "must be empty or equal product_id")
    }
    if request.version <= 0 {
      validation.add("version", "is required: the version of the product as you last read it")
    }
    try validation.check()
    guard let id else { throw APIStatus.invalid("product_id", "must be a UUID") }
    let product = request.product
    let updated = try await store.update(id: id, expectedVersion: request.version) { current in
      try ProductValidation.apply(product, paths: paths, to: current)
    }
    return updated.proto
  }

  func archiveProduct(
    request: Mart_Product_V1_ArchiveProductRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_Product {
    let id = try RequestValidation.requiredUUID(request.productID, field: "product_id")
    return try await store.archive(id: id).proto
  }

  func createCategory(
    request: Mart_Product_V1_CreateCategoryRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_Category {
    var validation = RequestValidation()
    let name = ProductValidation.name(
      request.name, field: "name", maximum: ProductValidation.maximumCategoryNameLength, into: &validation)
    let givenSlug = request.slug.trimmingCharacters(in: .whitespaces)
    let slug = givenSlug.isEmpty ? ProductValidation.slug(from: name) : givenSlug
    if givenSlug.isEmpty, slug.isEmpty, !name.isEmpty {
      validation.add("slug", "cannot be derived from this name: give one (lower-case words joined by hyphens)")
    } else if !givenSlug.isEmpty, !ProductValidation.isSlug(givenSlug) {
      validation.add("slug", "must be lower-case letters and digits in words joined by single hyphens, e.g. t-shirts")
    }
    let parent = validation.optionalUUID(request.parentID, field: "parent_id")
    let description = ProductValidation.description(request.description_p, field: "description", into: &validation)
    try validation.check()
    return try await store.createCategory(
      name: name, slug: slug, parentID: parent, description: description.isEmpty ? nil : description
    ).proto
  }

  func listCategories(
    request: Mart_Product_V1_ListCategoriesRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_ListCategoriesResponse {
    var validation = RequestValidation()
    let limit = validation.pageSize(
      request.pageSize, default: Self.defaultCategoryPageSize, maximum: Self.maximumCategoryPageSize)
    let parent = validation.optionalUUID(request.parentID, field: "parent_id")
    try validation.check()
    let fingerprint = PageTokenCodec.fingerprint(["categories", parent?.lowercasedString ?? ""])
    let after = try PageTokenCodec.decode(request.pageToken, as: CategoryCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.categories(parentID: parent, after: after, limit: limit), limit: limit,
      fingerprint: fingerprint
    ) { CategoryCursor(name: $0.name, id: $0.id) }
    return .with {
      $0.categories = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func batchGetProducts(
    request: Mart_Product_V1_BatchGetProductsRequest, context: ServerContext
  ) async throws -> Mart_Product_V1_BatchGetProductsResponse {
    var validation = RequestValidation()
    let ids = validation.uuidList(request.productIds, maximum: Self.maximumBatchSize, field: "product_ids")
    try validation.check()
    let found = try await store.products(ids: ids)
    return .with { response in
      for id in ids {
        if let product = found[id] {
          response.products.append(product.proto)
        } else {
          response.missingProductIds.append(id.lowercasedString)
        }
      }
    }
  }

  // MARK: Listing

  /// The filters of a ListProducts request, validated (the page token is read afterwards).
  static func listQuery(_ request: Mart_Product_V1_ListProductsRequest, callerIsAdmin: Bool) throws
    -> ProductListQuery
  {
    var validation = RequestValidation()
    let limit = validation.pageSize(request.pageSize, default: defaultPageSize, maximum: maximumPageSize)
    let text = validation.text(request.query, field: "query", maximum: ProductValidation.maximumQueryLength)
    let category = validation.optionalUUID(request.categoryID, field: "category_id")
    let minimum = request.hasMinPriceMinor ? request.minPriceMinor : nil
    let maximum = request.hasMaxPriceMinor ? request.maxPriceMinor : nil
    if let minimum, minimum < 0 { validation.add("min_price_minor", "must not be negative") }
    if let maximum, maximum < 0 { validation.add("max_price_minor", "must not be negative") }
    if let minimum, let maximum, minimum >= 0, maximum >= 0, minimum > maximum {
      validation.add("max_price_minor", "must not be less than min_price_minor")
    }
    var status = ProductStatus.active
    switch request.status {
    case .unspecified, .active: status = .active
    case .archived: status = .archived
    case .UNRECOGNIZED: validation.add("status", "must be ACTIVE or ARCHIVED")
    }
    var sort = ProductSort.newest
    switch request.sort {
    case .unspecified: sort = text.isEmpty ? .newest : .relevance
    case .relevance:
      sort = .relevance
      if text.isEmpty { validation.add("sort", "RELEVANCE needs a query") }
    case .priceAsc: sort = .priceAsc
    case .priceDesc: sort = .priceDesc
    case .name: sort = .name
    case .newest: sort = .newest
    case .UNRECOGNIZED: validation.add("sort", "is not a known sort order")
    }
    try validation.check()
    if status == .archived, !callerIsAdmin {
      throw RPCError(code: .permissionDenied, message: "only admins may list archived products")
    }
    return ProductListQuery(
      text: text.isEmpty ? nil : text, categoryID: category, minPrice: minimum, maxPrice: maximum, status: status,
      sort: sort, after: nil, limit: limit)
  }

  /// What a page token is bound to: every filter and the sort (not the page size).
  static func fingerprint(_ query: ProductListQuery) -> String {
    PageTokenCodec.fingerprint([
      "products", query.text ?? "", query.categoryID?.lowercasedString ?? "", query.minPrice.map(String.init) ?? "",
      query.maxPrice.map(String.init) ?? "", query.status.rawValue, query.sort.rawValue,
    ])
  }

  static func cursor(after product: ProductRecord, rank: Float, sort: ProductSort) -> ProductCursor {
    var cursor = ProductCursor(id: product.id)
    switch sort {
    case .relevance: cursor.rank = rank.bitPattern
    case .priceAsc, .priceDesc: cursor.price = product.fields.priceMinor
    case .name: cursor.name = product.fields.name
    case .newest: cursor.created = product.createdMicros
    }
    return cursor
  }

  static func cursor(_ cursor: ProductCursor, fits sort: ProductSort) -> Bool {
    switch sort {
    case .relevance: cursor.rank.map { !Float(bitPattern: $0).isNaN } ?? false
    case .priceAsc, .priceDesc: cursor.price != nil
    case .name: cursor.name != nil
    case .newest: cursor.created != nil
    }
  }
}
