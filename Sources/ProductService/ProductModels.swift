import Foundation
import MartProto
import MartRuntime
import SwiftProtobuf

/// The editable fields of a product, validated and normalised (as stored).
struct ProductFields: Sendable, Equatable {
  var sku: String
  var name: String
  var description: String
  var priceMinor: Int64
  var currency: String
  var categoryID: UUID?
  var brand: String?
  var imageURLs: [String]
  var attributes: [String: String]
  var status: ProductStatus
}

enum ProductStatus: String, PostgresTextEnum, Equatable {
  case active, archived

  var proto: Mart_Product_V1_Product.Status {
    switch self {
    case .active: .active
    case .archived: .archived
    }
  }
}

/// A product row.
struct ProductRecord: Sendable, Equatable {
  var id: UUID
  var fields: ProductFields
  var version: Int64
  var createdAt: Date
  var updatedAt: Date
  /// `created_at` in microseconds since 1970, exactly as stored (the NEWEST cursor).
  var createdMicros: Int64

  /// What every product query selects (from `products p`), in `Row`'s order.
  static let columns = """
    p.id, p.sku, p.name, p.description, p.price_minor, p.currency::text, p.category_id, p.brand, p.image_urls,
    p.attributes::text, p.status, p.version, p.created_at, p.updated_at,
    (extract(epoch FROM p.created_at) * 1000000)::bigint
    """
  typealias Row = (
    UUID, String, String, String, Int64, String, UUID?, String?, [String], String, ProductStatus, Int64, Date, Date,
    Int64
  )
  /// A search's row: `columns` and then the text-search rank.
  typealias RankedRow = (
    UUID, String, String, String, Int64, String, UUID?, String?, [String], String, ProductStatus, Int64, Date, Date,
    Int64, Float
  )

  init(_ row: Row) throws {
    let attributesJSON: String
    var fields = ProductFields(
      sku: "", name: "", description: "", priceMinor: 0, currency: "", categoryID: nil, brand: nil, imageURLs: [],
      attributes: [:], status: .active)
    (
      id, fields.sku, fields.name, fields.description, fields.priceMinor, fields.currency, fields.categoryID,
      fields.brand, fields.imageURLs, attributesJSON, fields.status, version, createdAt, updatedAt, createdMicros
    ) = row
    fields.attributes = try JSONDecoder().decode([String: String].self, from: Data(attributesJSON.utf8))
    self.fields = fields
  }

  var price: Mart_Common_V1_Money {
    .with {
      $0.currencyCode = fields.currency
      $0.amountMinor = fields.priceMinor
    }
  }

  var proto: Mart_Product_V1_Product {
    .with {
      $0.id = id.lowercasedString
      $0.sku = fields.sku
      $0.name = fields.name
      $0.description_p = fields.description
      $0.price = price
      $0.categoryID = fields.categoryID?.lowercasedString ?? ""
      $0.brand = fields.brand ?? ""
      $0.imageUrls = fields.imageURLs
      $0.attributes = fields.attributes
      $0.status = fields.status.proto
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt)
      $0.version = version
    }
  }
}

/// A category row.
struct CategoryRecord: Sendable, Equatable {
  var id: UUID
  var name: String
  var slug: String
  var parentID: UUID?
  var description: String?
  var createdAt: Date

  static let columns = "c.id, c.name, c.slug, c.parent_id, c.description, c.created_at"
  typealias Row = (UUID, String, String, UUID?, String?, Date)

  init(_ row: Row) {
    (id, name, slug, parentID, description, createdAt) = row
  }

  var proto: Mart_Product_V1_Category {
    .with {
      $0.id = id.lowercasedString
      $0.name = name
      $0.slug = slug
      $0.parentID = parentID?.lowercasedString ?? ""
      $0.description_p = description ?? ""
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
    }
  }
}

/// The paths UpdateProduct's `update_mask` may name.
enum ProductPath: String, CaseIterable, Sendable {
  case sku, name, description, price
  case categoryID = "category_id"
  case brand
  case imageURLs = "image_urls"
  case attributes, status
}

/// Input rules of the catalogue. Lengths the database also checks are counted as it counts them
/// (`char_length`: Unicode scalars).
enum ProductValidation {
  static let maximumSKULength = 64
  static let maximumNameLength = 200
  static let maximumDescriptionLength = 20_000
  static let maximumBrandLength = 100
  static let maximumImageCount = 20
  static let maximumURLLength = 2048
  static let maximumAttributeCount = 50
  static let maximumAttributeKeyLength = 100
  static let maximumAttributeValueLength = 1000
  static let maximumCategoryNameLength = 100
  static let maximumSlugLength = 100
  static let maximumQueryLength = 256

  static func sku(_ raw: String, field: String, into validation: inout RequestValidation) -> String {
    validation.text(raw, field: field, required: true, maximum: maximumSKULength)
  }

  static func name(_ raw: String, field: String, maximum: Int, into validation: inout RequestValidation) -> String {
    validation.text(raw, field: field, required: true, maximum: maximum)
  }

  static func description(_ raw: String, field: String, into validation: inout RequestValidation) -> String {
    if raw.unicodeScalars.count > maximumDescriptionLength {
      validation.add(field, "must be at most \(maximumDescriptionLength) characters")
    } else if RequestValidation.containsControlCharacters(raw, allowingNewlines: true) {
      validation.add(field, "must not contain control characters")
    }
    return raw
  }

  static func price(
    _ money: Mart_Common_V1_Money, present: Bool, field: String, into validation: inout RequestValidation
  ) -> (minor: Int64, currency: String) {
    guard present else {
      validation.add(field, "is required")
      return (0, "")
    }
    if !RequestValidation.isCurrencyCode(money.currencyCode) {
      validation.add("\(field).currency_code", "must be a three-letter ISO-4217 code in upper case, e.g. ZAR")
    }
    if !money.hasAmountMinor {
      validation.add("\(field).amount_minor", "is required")
    } else if money.amountMinor < 0 {
      validation.add("\(field).amount_minor", "must not be negative")
    }
    return (money.amountMinor, money.currencyCode)
  }

  static func brand(_ raw: String, field: String, into validation: inout RequestValidation) -> String? {
    let brand = validation.text(raw, field: field, maximum: maximumBrandLength)
    return brand.isEmpty ? nil : brand
  }

  static func imageURLs(_ raw: [String], field: String, into validation: inout RequestValidation) -> [String] {
    if raw.count > maximumImageCount {
      validation.add(field, "must have at most \(maximumImageCount) URLs")
      return []
    }
    var urls: [String] = []
    for (index, text) in raw.enumerated() {
      let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
      guard url.utf8.count <= maximumURLLength, let components = URLComponents(string: url),
        let scheme = components.scheme?.lowercased(), scheme == "https" || scheme == "http",
        let host = components.host, !host.isEmpty
      else {
        validation.add("\(field)[\(index)]", "must be an absolute http(s) URL")
        continue
      }
      urls.append(url)
    }
    return urls
  }

  static func attributes(
    _ raw: [String: String], field: String, into validation: inout RequestValidation
  ) -> [String: String] {
    if raw.count > maximumAttributeCount {
      validation.add(field, "must have at most \(maximumAttributeCount) entries")
      return [:]
    }
    for (key, value) in raw.sorted(by: { $0.key < $1.key }) {
      if key.trimmingCharacters(in: .whitespaces).isEmpty || key.unicodeScalars.count > maximumAttributeKeyLength
        || RequestValidation.containsControlCharacters(key)
      {
        validation.add("\(field)[\(key.debugDescription)]", "keys must be 1 to \(maximumAttributeKeyLength) characters")
      } else if value.unicodeScalars.count > maximumAttributeValueLength
        || RequestValidation.containsControlCharacters(value)
      {
        validation.add(
          "\(field)[\(key.debugDescription)]",
          "values must be at most \(maximumAttributeValueLength) characters, without control characters")
      }
    }
    return raw
  }

  /// The fields of a new product.
  static func create(_ request: Mart_Product_V1_CreateProductRequest) throws -> ProductFields {
    var validation = RequestValidation()
    let sku = sku(request.sku, field: "sku", into: &validation)
    let name = name(request.name, field: "name", maximum: maximumNameLength, into: &validation)
    let description = description(request.description_p, field: "description", into: &validation)
    let price = price(request.price, present: request.hasPrice, field: "price", into: &validation)
    let category = validation.optionalUUID(request.categoryID, field: "category_id")
    let brand = brand(request.brand, field: "brand", into: &validation)
    let images = imageURLs(request.imageUrls, field: "image_urls", into: &validation)
    let attributes = attributes(request.attributes, field: "attributes", into: &validation)
    try validation.check()
    return ProductFields(
      sku: sku, name: name, description: description, priceMinor: price.minor, currency: price.currency,
      categoryID: category, brand: brand, imageURLs: images, attributes: attributes, status: .active)
  }

  /// The paths of an update mask; INVALID_ARGUMENT for an empty mask or an unknown path.
  static func paths(_ mask: Google_Protobuf_FieldMask, present: Bool, into validation: inout RequestValidation)
    -> Set<ProductPath>
  {
    guard present, !mask.paths.isEmpty else {
      validation.add("update_mask", "is required: name the fields to change, e.g. name,price")
      return []
    }
    var paths = Set<ProductPath>()
    for path in mask.paths {
      if let known = ProductPath(rawValue: path) {
        paths.insert(known)
      } else {
        let allowed = ProductPath.allCases.map(\.rawValue).joined(separator: ", ")
        validation.add("update_mask", "\(path.debugDescription) cannot be updated (updatable: \(allowed))")
      }
    }
    return paths
  }

  /// `current` with the masked fields of `product` applied, validated.
  static func apply(
    _ product: Mart_Product_V1_Product, paths: Set<ProductPath>, to current: ProductFields
  ) throws -> ProductFields {
    var validation = RequestValidation()
    var fields = current
    for path in paths {
      let field = "product.\(path.rawValue)"
      switch path {
      case .sku: fields.sku = sku(product.sku, field: field, into: &validation)
      case .name: fields.name = name(product.name, field: field, maximum: maximumNameLength, into: &validation)
      case .description: fields.description = description(product.description_p, field: field, into: &validation)
      case .price:
        let price = price(product.price, present: product.hasPrice, field: field, into: &validation)
        (fields.priceMinor, fields.currency) = (price.minor, price.currency)
      case .categoryID: fields.categoryID = validation.optionalUUID(product.categoryID, field: field)
      case .brand: fields.brand = brand(product.brand, field: field, into: &validation)
      case .imageURLs: fields.imageURLs = imageURLs(product.imageUrls, field: field, into: &validation)
      case .attributes: fields.attributes = attributes(product.attributes, field: field, into: &validation)
      case .status:
        switch product.status {
        case .active: fields.status = .active
        case .archived: fields.status = .archived
        case .unspecified, .UNRECOGNIZED: validation.add(field, "must be ACTIVE or ARCHIVED")
        }
      }
    }
    try validation.check()
    return fields
  }

  /// The paths whose values differ between two versions of a product, in declaration order.
  static func changedPaths(from old: ProductFields, to new: ProductFields) -> [ProductPath] {
    ProductPath.allCases.filter { path in
      switch path {
      case .sku: old.sku != new.sku
      case .name: old.name != new.name
      case .description: old.description != new.description
      case .price: old.priceMinor != new.priceMinor || old.currency != new.currency
      case .categoryID: old.categoryID != new.categoryID
      case .brand: old.brand != new.brand
      case .imageURLs: old.imageURLs != new.imageURLs
      case .attributes: old.attributes != new.attributes
      case .status: old.status != new.status
      }
    }
  }

  /// A URL-friendly slug from a category name: lower-case ASCII letters and digits, words joined by
  /// single hyphens ("Men's T-Shirts" → "men-s-t-shirts"). Empty if the name has no such character.
  static func slug(from name: String) -> String {
    let folded = name.folding(options: [.diacriticInsensitive, .caseInsensitive, .widthInsensitive], locale: nil)
      .lowercased()
    var words: [String] = []
    var current = ""
    for scalar in folded.unicodeScalars {
      if ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar) {
        current.unicodeScalars.append(scalar)
      } else if !current.isEmpty {
        words.append(current)
        current = ""
      }
    }
    if !current.isEmpty { words.append(current) }
    var slug = ""
    for word in words {
      let candidate = slug.isEmpty ? word : slug + "-" + word
      if candidate.utf8.count > maximumSlugLength { break }
      slug = candidate
    }
    return slug
  }

  /// Whether `slug` is lower-case words joined by single hyphens, at most 100 characters.
  static func isSlug(_ slug: String) -> Bool {
    guard !slug.isEmpty, slug.utf8.count <= maximumSlugLength else { return false }
    let words = slug.split(separator: "-", omittingEmptySubsequences: false)
    return words.allSatisfy { word in
      !word.isEmpty && word.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }
  }
}
