import Foundation
import MartRuntime
import MartTestSupport
import Testing
import UserService

// Note: no closure literal inside `#expect(...)` in these tests. Swift 6.3.1 has been seen to call
// another closure of the same test function in its place (a mangling collision between closures
// inside and outside macro expansions); values are computed first and then expected.

/// The catalogue as a client meets it (issue 5): the gateway in front of the real user, product
/// and inventory services, in JSON over HTTP, with tokens issued by the user service. Admins are
/// customers who registered through the API and were promoted by the user service's create-admin
/// code path (`mart users create-admin`), then signed in again.
@Suite struct CatalogEdgeTests {
  @Test func anAdminCreatesReadsUpdatesAndArchivesProductsThroughTheJSONAPI() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()

      let kitchen = try await edge.call(
        "POST", "/v1/categories", json: ["name": "Kitchen", "description": "Pots and pans"], token: admin)
      #expect(kitchen.status == 200, "\(kitchen.text)")
      let categoryID = try #require(try kitchen.json()["id"] as? String)
      #expect(try kitchen.json()["slug"] as? String == "kitchen")

      let created = try await edge.call(
        "POST", "/v1/products",
        json: [
          "sku": " KETTLE-1 ", "name": "Steel kettle", "description": "Boils water quickly.",
          "price": ["currencyCode": "ZAR", "amountMinor": 49_900], "categoryId": categoryID, "brand": "Acme",
          "imageUrls": ["https://img.example.com/kettle.png"], "attributes": ["colour": "steel"],
        ], token: admin)
      #expect(created.status == 200, "\(created.text)")
      let product = try created.json()
      let id = try #require(product["id"] as? String)
      #expect(UUID(uuidString: id) != nil)
      #expect(product["sku"] as? String == "KETTLE-1")
      #expect(product["status"] as? String == "ACTIVE")
      // int64 fields are strings in proto3 JSON.
      #expect(product["version"] as? String == "1")
      #expect(try created.object("price")["amountMinor"] as? String == "49900")
      #expect(product["categoryId"] as? String == categoryID)
      #expect((product["attributes"] as? [String: String]) == ["colour": "steel"])

      // Public reads: no token needed.
      let read = try await edge.call("GET", "/v1/products/\(id)")
      #expect(read.status == 200, "\(read.text)")
      #expect(try read.json()["name"] as? String == "Steel kettle")
      let listed = try await edge.call("GET", "/v1/products")
      #expect(listed.status == 200, "\(listed.text)")
      #expect(try listed.productIDs() == [id])
      let inCategory = try await edge.call("GET", "/v1/products?category_id=\(categoryID)&page_size=10")
      #expect(try inCategory.productIDs() == [id])
      let otherCategory = try await edge.call("GET", "/v1/products?categoryId=\(UUID().uuidString.lowercased())")
      #expect(otherCategory.status == 200, "\(otherCategory.text)")
      #expect(try otherCategory.productIDs() == [])
      let found = try await edge.call("GET", "/v1/products?query=boils%20water")
      #expect(try found.productIDs() == [id])
      let categories = try await edge.call("GET", "/v1/categories")
      #expect(categories.status == 200, "\(categories.text)")
      let categoryList = try #require(try categories.json()["categories"] as? [[String: Any]])
      #expect(categoryList.compactMap { $0["id"] as? String } == [categoryID])

      let renamed = try await edge.call(
        "PATCH", "/v1/products/\(id)?update_mask=name&version=1", json: ["name": "Steel kettle, 1.7 l"],
        token: admin)
      #expect(renamed.status == 200, "\(renamed.text)")
      #expect(try renamed.json()["name"] as? String == "Steel kettle, 1.7 l")
      #expect(try renamed.json()["version"] as? String == "2")

      let archived = try await edge.call("DELETE", "/v1/products/\(id)", token: admin)
      #expect(archived.status == 200, "\(archived.text)")
      #expect(try archived.json()["status"] as? String == "ARCHIVED")
      #expect(try archived.json()["version"] as? String == "3")
      // Still readable by id (old orders point at it), no longer listed; admins may list it.
      let afterArchive = try await edge.call("GET", "/v1/products/\(id)")
      #expect(try afterArchive.json()["status"] as? String == "ARCHIVED")
      #expect(try await edge.call("GET", "/v1/products").productIDs() == [])
      let archivedList = try await edge.call("GET", "/v1/products?status=ARCHIVED", token: admin)
      #expect(archivedList.status == 200, "\(archivedList.text)")
      #expect(try archivedList.productIDs() == [id])
    }
  }

  @Test func everyCatalogWriteByACustomerIs403AndChangesNothing() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()
      let id = try await edge.createProduct(sku: "ANVIL-1", name: "Anvil", token: admin)
      let (customer, _) = try await edge.register()

      let writes: [(String, String, [String: Any]?)] = [
        (
          "POST", "/v1/products", ["sku": "B-1", "name": "Bucket", "price": ["currencyCode": "ZAR", "amountMinor": 1]]
        ),
        ("PATCH", "/v1/products/\(id)?update_mask=name&version=1", ["name": "Stolen anvil"]),
        ("DELETE", "/v1/products/\(id)", nil),
        ("POST", "/v1/categories", ["name": "Tools"]),
        ("POST", "/v1/products/\(id)/stock:adjust", ["quantityDelta": 5, "reason": "RESTOCK"]),
      ]
      for (method, path, body) in writes {
        let refused = try await edge.call(method, path, json: body, token: customer)
        #expect(refused.status == 403, "\(method) \(path): \(refused.status) \(refused.text)")
        try refused.expectStatusBody(code: 7)
        // Without a token: 401, not 403.
        let anonymous = try await edge.call(method, path, json: body)
        #expect(anonymous.status == 401, "\(method) \(path): \(anonymous.status) \(anonymous.text)")
        try anonymous.expectStatusBody(code: 16)
      }
      // Archived products are for admins: a customer asking for them is refused by the service.
      let archivedList = try await edge.call("GET", "/v1/products?status=ARCHIVED", token: customer)
      #expect(archivedList.status == 403, "\(archivedList.text)")
      try archivedList.expectStatusBody(code: 7)

      let after = try await edge.call("GET", "/v1/products/\(id)", token: customer)
      #expect(after.status == 200, "\(after.text)")
      #expect(try after.json()["name"] as? String == "Anvil")
      #expect(try after.json()["status"] as? String == "ACTIVE")
      #expect(try after.json()["version"] as? String == "1")
      #expect(try await edge.call("GET", "/v1/products").productIDs() == [id])
      let categories = try await edge.call("GET", "/v1/categories")
      #expect(try categories.json()["categories"] == nil, "\(categories.text)")
    }
  }

  @Test func anUpdateWithAStaleVersionIs409() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()
      let id = try await edge.createProduct(sku: "VASE-1", name: "Vase", token: admin)
      let first = try await edge.call(
        "PATCH", "/v1/products/\(id)?update_mask=name&version=1", json: ["name": "Blue vase"], token: admin)
      #expect(first.status == 200, "\(first.text)")
      #expect(try first.json()["version"] as? String == "2")

      // A second writer who also read version 1.
      let stale = try await edge.call(
        "PATCH", "/v1/products/\(id)?update_mask=name&version=1", json: ["name": "Green vase"], token: admin)
      #expect(stale.status == 409, "\(stale.text)")
      try stale.expectStatusBody(code: 10)
      let details = try stale.json()["details"] as? [[String: Any]] ?? []
      let reasons = details.compactMap { $0["reason"] as? String }
      #expect(reasons.contains("VERSION_MISMATCH"), "\(stale.text)")

      let after = try await edge.call("GET", "/v1/products/\(id)")
      #expect(try after.json()["name"] as? String == "Blue vase")
      #expect(try after.json()["version"] as? String == "2")
      // With the version just read, the same update goes through.
      let retried = try await edge.call(
        "PATCH", "/v1/products/\(id)?update_mask=name&version=2", json: ["name": "Green vase"], token: admin)
      #expect(retried.status == 200, "\(retried.text)")
      #expect(try retried.json()["version"] as? String == "3")
    }
  }

  @Test func aFieldMaskPatchChangesOnlyTheNamedFields() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()
      let created = try await edge.call(
        "POST", "/v1/products",
        json: [
          "sku": "MUG-1", "name": "Mug", "description": "Holds coffee.",
          "price": ["currencyCode": "ZAR", "amountMinor": 5000], "brand": "Acme",
          "imageUrls": ["https://img.example.com/mug.png"], "attributes": ["colour": "white"],
        ], token: admin)
      #expect(created.status == 200, "\(created.text)")
      let id = try #require(try created.json()["id"] as? String)

      // Every field differs in the body, but only the price is named.
      let everythingElse: [String: Any] = [
        "sku": "OTHER-1", "name": "Other", "description": "", "price": ["currencyCode": "ZAR", "amountMinor": 4500],
        "brand": "", "imageUrls": [], "attributes": [:], "status": "ARCHIVED",
      ]
      let priced = try await edge.call(
        "PATCH", "/v1/products/\(id)?update_mask=price&version=1", json: everythingElse, token: admin)
      #expect(priced.status == 200, "\(priced.text)")
      let afterPrice = try priced.json()
      #expect(try priced.object("price")["amountMinor"] as? String == "4500")
      #expect(afterPrice["sku"] as? String == "MUG-1")
      #expect(afterPrice["name"] as? String == "Mug")
      #expect(afterPrice["description"] as? String == "Holds coffee.")
      #expect(afterPrice["brand"] as? String == "Acme")
      #expect((afterPrice["imageUrls"] as? [String]) == ["https://img.example.com/mug.png"])
      #expect((afterPrice["attributes"] as? [String: String]) == ["colour": "white"])
      #expect(afterPrice["status"] as? String == "ACTIVE")
      #expect(afterPrice["version"] as? String == "2")

      // Several paths, in JSON (lowerCamelCase) names; naming a field with an empty value clears it.
      let masked = try await edge.call(
        "PATCH", "/v1/products/\(id)?updateMask=brand,imageUrls,attributes&version=2",
        json: ["name": "Ignored", "brand": "", "imageUrls": [], "attributes": ["colour": "black"]], token: admin)
      #expect(masked.status == 200, "\(masked.text)")
      let afterMask = try masked.json()
      #expect(afterMask["brand"] == nil, "\(masked.text)")
      #expect(afterMask["imageUrls"] == nil, "\(masked.text)")
      #expect((afterMask["attributes"] as? [String: String]) == ["colour": "black"])
      #expect(afterMask["name"] as? String == "Mug")
      #expect(try masked.object("price")["amountMinor"] as? String == "4500")
      #expect(afterMask["version"] as? String == "3")

      // A read gives the same product as the last answer.
      let read = try await edge.call("GET", "/v1/products/\(id)")
      #expect(NSDictionary(dictionary: try read.json()) == NSDictionary(dictionary: afterMask))

      // A path that is not updatable, and a missing mask, are 400s naming update_mask.
      for query in ["update_mask=version&version=3", "version=3"] {
        let refused = try await edge.call(
          "PATCH", "/v1/products/\(id)?\(query)", json: ["name": "Other"], token: admin)
        #expect(refused.status == 400, "\(query): \(refused.text)")
        try refused.expectStatusBody(code: 3, naming: "update_mask")
      }
    }
  }

  @Test func invalidListParametersAre400NamingTheField() async throws {
    try await withEdge(catalog: true) { edge in
      let cases: [(query: String, field: String)] = [
        ("page_size=-1", "page_size"),  // negative (the service's check; above the maximum is coerced)
        ("page_size=ten", "page_size"),  // not a number (the gateway's check)
        ("page_token=not-a-token", "page_token"),
        ("category_id=not-a-uuid", "category_id"),
        ("min_price_minor=500&max_price_minor=100", "max_price_minor"),
        ("sort=CHEAPEST", "sort"),
      ]
      for (query, field) in cases {
        let response = try await edge.call("GET", "/v1/products?\(query)")
        #expect(response.status == 400, "\(query): \(response.status) \(response.text)")
        try response.expectStatusBody(code: 3, naming: field)
      }
      let categories = try await edge.call("GET", "/v1/categories?page_size=-1")
      #expect(categories.status == 400, "\(categories.text)")
      try categories.expectStatusBody(code: 3, naming: "page_size")
      // The bounds themselves are fine.
      let largest = try await edge.call("GET", "/v1/products?page_size=100")
      #expect(largest.status == 200, "\(largest.text)")
      let aboveTheMaximum = try await edge.call("GET", "/v1/categories?page_size=501")
      #expect(aboveTheMaximum.status == 200, "\(aboveTheMaximum.text)")
    }
  }

  @Test func publicListingsPageThroughTheCatalogWithoutAToken() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()
      var created: [String] = []
      for index in 0..<5 {
        created.append(
          try await edge.createProduct(
            sku: "PAN-\(index)", name: "Frying pan \(index)", description: "Non-stick pan.", price: 1000 + index,
            token: admin))
      }
      var seen: [String] = []
      var token = ""
      var pages = 0
      repeat {
        let tokenQuery = token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? token
        let page = try await edge.call("GET", "/v1/products?page_size=2&sort=PRICE_ASC&page_token=\(tokenQuery)")
        #expect(page.status == 200, "\(page.text)")
        seen += try page.productIDs()
        token = try page.json()["nextPageToken"] as? String ?? ""
        pages += 1
      } while !token.isEmpty && pages < 10
      #expect(seen == created)
      #expect(pages == 3)
    }
  }

  @Test func stockFollowsTheCatalogThroughTheGateway() async throws {
    try await withEdge(catalog: true) { edge in
      let admin = try await edge.admin()
      let id = try await edge.createProduct(sku: "TEAPOT-1", name: "Teapot", token: admin)
      // The inventory service makes the stock record from ProductCreated: until then, NOT_FOUND.
      // The request id makes the retried adjustment count once.
      let requestID = UUID().uuidString.lowercased()
      var adjusted: HTTPResult?
      let recorded = await eventually {
        let response = try await edge.call(
          "POST", "/v1/products/\(id)/stock:adjust",
          json: ["quantityDelta": 7, "reason": "RESTOCK", "note": "delivery 1", "requestId": requestID],
          token: admin)
        adjusted = response
        return response.status == 200
      }
      #expect(recorded, "\(adjusted?.text ?? "")")
      // Anyone may see what can be ordered; the warehouse figures are for admins.
      let stock = try await edge.call("GET", "/v1/products/\(id)/stock")
      #expect(stock.status == 200, "\(stock.text)")
      #expect(try stock.json()["available"] as? Int == 7, "\(stock.text)")
      #expect(try stock.json()["onHand"] == nil, "\(stock.text)")
      let full = try await edge.call("GET", "/v1/products/\(id)/stock", token: admin)
      #expect(try full.json()["onHand"] as? Int == 7, "\(full.text)")
      #expect(try full.json()["reserved"] as? Int == 0, "\(full.text)")
      let movements = try await edge.call("GET", "/v1/products/\(id)/stock/movements", token: admin)
      #expect(movements.status == 200, "\(movements.text)")
      #expect((try movements.json()["movements"] as? [[String: Any]])?.count == 1)
      // Taking away more than is on hand is refused by the database's constraint.
      let negative = try await edge.call(
        "POST", "/v1/products/\(id)/stock:adjust", json: ["quantityDelta": -8, "reason": "DAMAGE"], token: admin)
      #expect(negative.status == 400, "\(negative.text)")
      try negative.expectStatusBody(code: 9)
    }
  }
}

// MARK: - Catalog helpers

extension HTTPResult {
  /// The ids of a ListProducts answer (an empty list is absent in proto3 JSON).
  func productIDs() throws -> [String] {
    let products = try json()["products"] as? [[String: Any]] ?? []
    return products.compactMap { $0["id"] as? String }
  }
}

extension Edge {
  /// A signed-in admin's access token: a customer registered through the API, promoted with the
  /// user service's create-admin code path (`--promote-existing`, which resets the password: to
  /// the same one here), then signed in again for a token with the role.
  func admin() async throws -> String {
    let email = "admin-\(UUID().uuidString.prefix(8).lowercased())@example.com"
    let password = "an admin's fine password"
    let registered = try await call(
      "POST", "/v1/auth/register", json: ["email": email, "password": password, "fullName": "Admin"])
    #expect(registered.status == 200, "\(registered.text)")
    let promoted = try await withPostgresClient(userDatabase) { client in
      try await UserAdministration.createAdmin(
        database: client, email: email, fullName: "Admin", promoteExisting: true, logger: TestBed.logger
      ) { password }
    }
    guard case .promoted = promoted else {
      Issue.record("expected the account to be promoted, got \(promoted)")
      throw TestBed.NotConfigured(variable: "admin account")
    }
    let login = try await call("POST", "/v1/auth/login", json: ["email": email, "password": password])
    #expect(login.status == 200, "\(login.text)")
    let user = try login.object("user")
    #expect((user["roles"] as? [String])?.contains("ADMIN") == true, "\(login.text)")
    return try #require(try login.object("tokens")["accessToken"] as? String)
  }

  /// Creates a product as `token`'s admin; its id.
  func createProduct(
    sku: String, name: String, description: String = "", price: Int = 1000, token: String
  ) async throws -> String {
    let response = try await call(
      "POST", "/v1/products",
      json: [
        "sku": sku, "name": name, "description": description,
        "price": ["currencyCode": "ZAR", "amountMinor": price],
      ], token: token)
    #expect(response.status == 200, "\(response.text)")
    return try #require(try response.json()["id"] as? String)
  }
}
