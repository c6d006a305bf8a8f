import Foundation
import GRPCCore
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import SwiftProtobuf
import Testing

// Note: no closure literal inside `#expect(...)` in these tests. Swift 6.3.1 has been seen to call
// another closure of the same test function in its place (a mangling collision between closures
// inside and outside macro expansions); values are computed first and then expected.

/// The product service in-process over gRPC, on a scratch database of its own per test.
@Suite struct ProductServiceTests {
  @Test func adminCreatesReadsUpdatesAndArchivesProducts() async throws {
    try await ProductHarness.run("product_crud") { service in
      let category = try await service.createCategory("Men's T-Shirts")
      #expect(category.slug == "men-s-t-shirts")
      let categories = try await service.client.listCategories(.init())
      #expect(categories.categories.map(\.id) == [category.id])

      let request = Mart_Product_V1_CreateProductRequest.with {
        $0.sku = " TSHIRT-RED-M "
        $0.name = "Red T-shirt"
        $0.description_p = "Cotton."
        $0.price = .with {
          $0.currencyCode = "ZAR"
          $0.amountMinor = 19999
        }
        $0.categoryID = category.id
        $0.brand = "Acme"
        $0.imageUrls = ["https://img.example.com/red.png"]
        $0.attributes = ["colour": "red", "size": "M"]
      }
      var created = try await service.client.createProduct(request, metadata: service.admin)
      #expect(created.sku == "TSHIRT-RED-M")
      #expect(created.status == .active)
      #expect(created.version == 1)
      #expect(UUID(uuidString: created.id) != nil)
      #expect(try await service.get(created.id) == created)

      let updated = try await service.rename(created.id, to: "Red cotton T-shirt", version: 1)
      #expect(updated.name == "Red cotton T-shirt")
      #expect(updated.version == 2)
      created.name = updated.name
      created.version = 2
      created.updateTime = updated.updateTime
      #expect(updated == created)

      let archived = try await service.archive(created.id)
      #expect(archived.status == .archived)
      #expect(archived.version == 3)
      // Idempotent: archiving again changes nothing.
      #expect(try await service.archive(created.id) == archived)
      // Still readable by id, no longer listed, listed for admins asking for archived products.
      #expect(try await service.get(created.id).status == .archived)
      #expect(try await service.list().products.isEmpty)
      let archivedList = try await service.list(status: .archived, metadata: service.admin)
      #expect(archivedList.products.map(\.id) == [created.id])

      // The order service's batch read, in request order, with the missing ids.
      let missing = UUID().uuidString.lowercased()
      let batchRequest = Mart_Product_V1_BatchGetProductsRequest.with {
        $0.productIds = [missing, created.id, created.id]
      }
      let batch = try await service.client.batchGetProducts(batchRequest, metadata: service.service)
      #expect(batch.products.map(\.id) == [created.id])
      #expect(batch.missingProductIds == [missing])

      let events = try await service.outboxEvents()
      #expect(
        events.map(\.type) == [
          "mart.product.v1.ProductCreated", "mart.product.v1.ProductUpdated", "mart.product.v1.ProductArchived",
        ])
      let first = try #require(events.first)
      let productCreated = try Mart_Product_V1_ProductCreated(serializedBytes: first.payload)
      #expect(productCreated.productID == created.id)
      #expect(productCreated.product.sku == "TSHIRT-RED-M")
      let last = try #require(events.last)
      let productArchived = try Mart_Product_V1_ProductArchived(serializedBytes: last.payload)
      #expect(productArchived.productID == created.id)
      #expect(productArchived.version == 3)
    }
  }

  @Test func customersCannotWriteTheCatalogue() async throws {
    try await ProductHarness.run("product_access") { service in
      let product = try await service.createProduct(sku: "A-1", name: "Anvil")
      let customer = service.customer
      let denied: [(String, @Sendable () async throws -> Void)] = [
        ("create", { _ = try await service.client.createProduct(.with { $0.sku = "B" }, metadata: customer) }),
        (
          "update",
          {
            _ = try await service.update(
              product.id, .with { $0.name = "x" }, paths: ["name"], version: 1, metadata: customer)
          }
        ),
        ("archive", { _ = try await service.archive(product.id, metadata: customer) }),
        ("category", { _ = try await service.client.createCategory(.with { $0.name = "Tools" }, metadata: customer) }),
        ("archived list", { _ = try await service.list(status: .archived, metadata: customer) }),
        (
          "batch",
          { _ = try await service.client.batchGetProducts(.with { $0.productIds = [product.id] }, metadata: customer) }
        ),
      ]
      for (name, call) in denied {
        let error = await rpcError(call)
        #expect(error?.code == .permissionDenied, "\(name)")
      }
      // Without a token: UNAUTHENTICATED for admin methods, fine for public reads.
      let anonymous = await rpcError { _ = try await service.client.createProduct(.with { $0.sku = "B" }) }
      #expect(anonymous?.code == .unauthenticated)
      #expect(try await service.get(product.id, metadata: customer).version == 1)
      #expect(try await service.list(metadata: customer).products.map(\.id) == [product.id])
      #expect(try await service.get(product.id).name == "Anvil")
      #expect(try await service.outboxEvents().count == 1)
    }
  }

  @Test func aStaleVersionIsAborted() async throws {
    try await ProductHarness.run("product_version") { service in
      let product = try await service.createProduct(sku: "V-1", name: "Vase")
      #expect(try await service.rename(product.id, to: "Blue vase", version: 1).version == 2)
      let stale = await rpcError { _ = try await service.rename(product.id, to: "Green vase", version: 1) }
      #expect(stale?.code == .aborted)
      #expect(stale?.reason == "VERSION_MISMATCH")
      #expect(try await service.get(product.id).name == "Blue vase")

      // Concurrent writers on the same version: exactly one wins, the others are ABORTED.
      let results = await withTaskGroup(of: RPCError.Code?.self) { group in
        for index in 0..<8 {
          group.addTask {
            do {
              _ = try await service.rename(product.id, to: "Vase \(index)", version: 2)
              return nil
            } catch let error as RPCError {
              return error.code
            } catch {
              return .unknown
            }
          }
        }
        return await group.reduce(into: [RPCError.Code?]()) { $0.append($1) }
      }
      let winners = results.filter { $0 == nil }.count
      let aborted = results.filter { $0 == .aborted }.count
      #expect(winners == 1)
      #expect(aborted == 7)
      #expect(try await service.get(product.id).version == 3)

      let unknown = await rpcError { _ = try await service.rename(UUID().uuidString, to: "x", version: 1) }
      #expect(unknown?.code == .notFound)
    }
  }

  @Test func aFieldMaskUpdatesOnlyTheNamedFields() async throws {
    try await ProductHarness.run("product_mask") { service in
      let request = Mart_Product_V1_CreateProductRequest.with {
        $0.sku = "M-1"
        $0.name = "Mug"
        $0.description_p = "Holds coffee."
        $0.price = .with {
          $0.currencyCode = "ZAR"
          $0.amountMinor = 5000
        }
        $0.brand = "Acme"
        $0.attributes = ["colour": "white"]
      }
      let original = try await service.client.createProduct(request, metadata: service.admin)
      // Every field differs in the body, but only the price is named.
      let body = Mart_Product_V1_Product.with {
        $0.sku = "OTHER"
        $0.name = "Other"
        $0.description_p = ""
        $0.price = .with {
          $0.currencyCode = "ZAR"
          $0.amountMinor = 4500
        }
        $0.brand = ""
        $0.attributes = [:]
        $0.status = .archived
      }
      let updated = try await service.update(original.id, body, paths: ["price"], version: 1)
      #expect(updated.price.amountMinor == 4500)
      #expect(updated.sku == "M-1")
      #expect(updated.name == "Mug")
      #expect(updated.description_p == "Holds coffee.")
      #expect(updated.brand == "Acme")
      #expect(updated.attributes == ["colour": "white"])
      #expect(updated.status == .active)
      #expect(updated.version == 2)

      // Clearing a field is naming it with an empty value.
      let black = Mart_Product_V1_Product.with { $0.attributes = ["colour": "black"] }
      let cleared = try await service.update(original.id, black, paths: ["brand", "attributes"], version: 2)
      #expect(cleared.brand == "")
      #expect(cleared.attributes == ["colour": "black"])
      #expect(cleared.price.amountMinor == 4500)

      // Naming a field with its current value changes nothing: no new version, no event.
      let unchanged = try await service.rename(original.id, to: "Mug", version: 3)
      #expect(unchanged.version == 3)

      let updates = try await service.outboxEvents().filter { $0.type == "mart.product.v1.ProductUpdated" }
      #expect(updates.count == 2)
      let firstUpdate = try #require(updates.first)
      let priceChange = try Mart_Product_V1_ProductUpdated(serializedBytes: firstUpdate.payload)
      #expect(priceChange.changedFields.paths == ["price"])
      #expect(priceChange.oldPrice.amountMinor == 5000)
      #expect(priceChange.newPrice.amountMinor == 4500)
      #expect(priceChange.version == 2)
      let lastUpdate = try #require(updates.last)
      let attributeChange = try Mart_Product_V1_ProductUpdated(serializedBytes: lastUpdate.payload)
      #expect(attributeChange.changedFields.paths == ["brand", "attributes"])
      #expect(attributeChange.oldPrice == attributeChange.newPrice)

      // Unknown or read-only paths, and an empty mask, are the client's mistake.
      for paths in [["version"], ["nope"], []] {
        let fields = await invalidFields { _ = try await service.update(original.id, body, paths: paths, version: 3) }
        #expect(fields == ["update_mask"])
      }
    }
  }

  @Test func invalidInputIsRejectedNamingTheField() async throws {
    try await ProductHarness.run("product_invalid") { service in
      let admin = service.admin
      let badProduct = Mart_Product_V1_CreateProductRequest.with {
        $0.price = .with {
          $0.currencyCode = "zar"
          $0.amountMinor = -1
        }
        $0.categoryID = "not-a-uuid"
        $0.imageUrls = ["ftp://example.com/a.png"]
      }
      let createFields = await invalidFields { _ = try await service.client.createProduct(badProduct, metadata: admin) }
      #expect(
        createFields == ["sku", "name", "price.currency_code", "price.amount_minor", "category_id", "image_urls[0]"])
      let getFields = await invalidFields { _ = try await service.get("42") }
      #expect(getFields == ["product_id"])
      // Above the maximum is coerced to it (AIP-158), not refused.
      #expect(try await service.list(pageSize: 101).products.count <= 100)
      let negative = await invalidFields { _ = try await service.list(pageSize: -1) }
      #expect(negative == ["page_size"])
      let garbage = await invalidFields { _ = try await service.list(pageToken: "garbage") }
      #expect(garbage == ["page_token"])
      let inverted = await invalidFields { _ = try await service.list(minPrice: 500, maxPrice: 100) }
      #expect(inverted == ["max_price_minor"])
      let belowZero = await invalidFields { _ = try await service.list(minPrice: -5) }
      #expect(belowZero == ["min_price_minor"])
      let notACategory = await invalidFields { _ = try await service.list(category: "shoes") }
      #expect(notACategory == ["category_id"])
      let relevanceWithoutQuery = await invalidFields { _ = try await service.list(sort: .relevance) }
      #expect(relevanceWithoutQuery == ["sort"])
      let unknownSort = await invalidFields { _ = try await service.list(sort: .UNRECOGNIZED(42)) }
      #expect(unknownSort == ["sort"])
      let noIDs = await invalidFields {
        _ = try await service.client.batchGetProducts(.init(), metadata: service.service)
      }
      #expect(noIDs == ["product_ids"])
      let tooManyIDs = Mart_Product_V1_BatchGetProductsRequest.with {
        $0.productIds = (0...100).map { _ in UUID().uuidString }
      }
      let tooMany = await invalidFields {
        _ = try await service.client.batchGetProducts(tooManyIDs, metadata: service.service)
      }
      #expect(tooMany == ["product_ids"])

      // A token is only good for the filters it was issued with.
      for index in 0..<3 { _ = try await service.createProduct(sku: "P-\(index)", name: "Pot \(index)") }
      let first = try await service.list(pageSize: 2)
      #expect(!first.nextPageToken.isEmpty)
      let otherSort = await invalidFields {
        _ = try await service.list(sort: .priceAsc, pageSize: 2, pageToken: first.nextPageToken)
      }
      #expect(otherSort == ["page_token"])
      let otherFilter = await invalidFields {
        _ = try await service.list(minPrice: 1, pageSize: 2, pageToken: first.nextPageToken)
      }
      #expect(otherFilter == ["page_token"])
      // The same filters with another page size are fine.
      #expect(try await service.list(pageSize: 5, pageToken: first.nextPageToken).products.count == 1)

      // Conflicts and references.
      let duplicate = await rpcError { _ = try await service.createProduct(sku: "P-0", name: "Again") }
      #expect(duplicate?.code == .alreadyExists)
      #expect(duplicate?.reason == "SKU_ALREADY_EXISTS")
      let missingCategory = UUID().uuidString
      let noCategory = await rpcError {
        _ = try await service.createProduct(sku: "P-9", name: "Lost", category: missingCategory)
      }
      #expect(noCategory?.code == .notFound)
      _ = try await service.createCategory("Pots")
      let slugTaken = await rpcError { _ = try await service.createCategory("Other pots", slug: "pots") }
      #expect(slugTaken?.code == .alreadyExists)
      #expect(slugTaken?.reason == "SLUG_ALREADY_EXISTS")
      let badSlug = await invalidFields { _ = try await service.createCategory("Bad", slug: "Bad Slug") }
      #expect(badSlug == ["slug"])
      let noParent = await rpcError { _ = try await service.createCategory("Orphans", parent: missingCategory) }
      #expect(noParent?.code == .notFound)
      #expect(try await service.outboxEvents().count == 3)
    }
  }

  @Test func categoryFilterIncludesSubcategoriesAndPriceRangeFilters() async throws {
    try await ProductHarness.run("product_filters") { service in
      let clothing = try await service.createCategory("Clothing")
      let shirts = try await service.createCategory("Shirts", parent: clothing.id)
      let tools = try await service.createCategory("Tools")
      let coat = try await service.createProduct(sku: "C-1", name: "Coat", price: 90000, category: clothing.id)
      let shirt = try await service.createProduct(sku: "S-1", name: "Shirt", price: 20000, category: shirts.id)
      _ = try await service.createProduct(sku: "T-1", name: "Hammer", price: 15000, category: tools.id)

      #expect(Set(try await service.listIDs(category: clothing.id)) == [coat.id, shirt.id])
      #expect(try await service.listIDs(category: shirts.id) == [shirt.id])
      #expect(try await service.listIDs(category: clothing.id, maxPrice: 50000) == [shirt.id])
      #expect(Set(try await service.listIDs(minPrice: 20000)) == [coat.id, shirt.id])
      #expect(try await service.listIDs(category: UUID().uuidString).isEmpty)
      let childrenRequest = Mart_Product_V1_ListCategoriesRequest.with { $0.parentID = clothing.id }
      let children = try await service.client.listCategories(childrenRequest)
      #expect(children.categories.map(\.id) == [shirts.id])
      let all = try await service.client.listCategories(.init())
      #expect(all.categories.map(\.name) == ["Clothing", "Shirts", "Tools"])
    }
  }

  @Test func searchFindsWordsInNameOrDescriptionAndRanksNameMatchesFirst() async throws {
    try await ProductHarness.run("product_search") { service in
      let jacket = try await service.createProduct(
        sku: "J-1", name: "Trail jacket", description: "Light and waterproof, for running in the rain.", price: 150000)
      let shoes = try await service.createProduct(
        sku: "R-1", name: "Running shoes", description: "Cushioned shoes for road running.", price: 120000)
      _ = try await service.createProduct(sku: "H-1", name: "Sun hat", description: "Wide brim.", price: 30000)

      // A name match (weight A) ranks above a description-only match (weight C); stemming finds
      // "running" for "runs" too.
      #expect(try await service.listIDs(query: "running") == [shoes.id, jacket.id])
      #expect(try await service.listIDs(query: "runs") == [shoes.id, jacket.id])
      #expect(try await service.listIDs(query: "waterproof") == [jacket.id])
      #expect(try await service.listIDs(query: "jacket -trail").isEmpty)
      #expect(try await service.listIDs(query: "\"road running\"") == [shoes.id])
      #expect(try await service.listIDs(query: "umbrella").isEmpty)
      // A query with another sort order, and with a filter.
      #expect(try await service.listIDs(query: "running", sort: .priceDesc) == [jacket.id, shoes.id])
      #expect(try await service.listIDs(query: "running", maxPrice: 130000) == [shoes.id])
      // Archived products are not found.
      _ = try await service.archive(shoes.id)
      #expect(try await service.listIDs(query: "running") == [jacket.id])
    }
  }

  @Test func paginationWalksTheCatalogueWithoutDuplicatesOrGapsWhileProductsAreAdded() async throws {
    try await ProductHarness.run("product_pages") { service in
      // 250 products with repeated prices and names (ties are broken by id), made 10 at a time.
      let original = try await withThrowingTaskGroup(of: String.self) { group in
        var ids: [String] = []
        for index in 0..<250 {
          if index >= 10, let id = try await group.next() { ids.append(id) }
          group.addTask {
            try await service.createProduct(
              sku: "W-\(index)", name: "Widget \(index % 40)", description: "A widget.", price: Int64(index % 37) * 100
            ).id
          }
        }
        for try await id in group { ids.append(id) }
        return ids
      }
      #expect(Set(original).count == 250)

      let sorts: [Mart_Product_V1_ListProductsRequest.Sort] = [.newest, .priceAsc, .priceDesc, .name, .relevance]
      for sort in sorts {
        let query = sort == .relevance ? "widget" : ""
        // A writer adds products while the pages are read.
        let seen = try await withThrowingTaskGroup(of: [String].self) { group in
          group.addTask {
            for index in 0..<40 {
              _ = try await service.createProduct(
                sku: "N-\(sort)-\(index)", name: "Widget new \(index)", description: "A widget.",
                price: Int64(index * 50))
            }
            return []
          }
          group.addTask {
            var ids: [String] = []
            var token = ""
            repeat {
              let page = try await service.list(query: query, sort: sort, pageSize: 17, pageToken: token)
              #expect(page.products.count <= 17)
              ids += page.products.map(\.id)
              token = page.nextPageToken
            } while !token.isEmpty
            return ids
          }
          var all: [String] = []
          for try await ids in group { all += ids }
          return all
        }
        #expect(seen.count == Set(seen).count, "duplicates with sort \(sort)")
        #expect(Set(original).isSubset(of: Set(seen)), "gaps with sort \(sort)")
      }

      // Default and maximum page sizes.
      #expect(try await service.list().products.count == 20)
      #expect(try await service.list(pageSize: 100).products.count == 100)
    }
  }
}
