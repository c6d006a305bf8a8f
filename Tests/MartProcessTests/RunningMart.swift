import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// A `mart dev` on the test broker, as the process tests run it, and what they do to it over
/// its gateway: the environment, a customer, a stocked product, JSON calls.
enum RunningMart {
  /// What `mart dev` needs beyond `databases`: free ports, an admin token for /metrics, the
  /// sandbox payment provider, and topics of its own on the shared test broker.
  static func environment(_ databases: [String: String], label: String) throws -> (
    environment: [String: String], gateway: String, adminToken: String
  ) {
    var environment = databases
    let gatewayPort = try freePort()
    environment["MART_GATEWAY_PORT"] = "\(gatewayPort)"
    for service in MartService.allCases { environment["\(service.environmentPrefix)_PORT"] = "\(try freePort())" }
    let adminToken = String(repeating: "metrics-reader-", count: 3)
    environment["MART_GATEWAY_ADMIN_TOKEN"] = adminToken
    environment["MART_PAYMENT_SANDBOX_ENABLED"] = "true"
    environment["MART_KAFKA_TOPIC_PREFIX"] = "\(label)-\(UUID().uuidString.prefix(8).lowercased())."
    return (environment, "http://127.0.0.1:\(gatewayPort)", adminToken)
  }

  /// Places an order of one `productID` and waits for it to await payment; its id.
  static func placeOrder(
    _ base: String, productID: String, token: String, headers: [String: String] = [:]
  ) async throws -> String {
    let order = try await json(
      base, "POST", "/v1/orders",
      [
        "items": [["productId": productID, "quantity": 1]],
        "shippingAddress": [
          "recipientName": "Observer", "lines": ["1 Long Street"], "city": "Cape Town", "countryCode": "ZA",
        ],
      ], token: token, headers: headers)
    let orderID = try #require(order["id"] as? String)
    let awaiting = await eventually {
      let read = try? await json(base, "GET", "/v1/orders/\(orderID)", nil, token: token)
      return read?["status"] as? String == "AWAITING_PAYMENT"
    }
    #expect(awaiting)
    return orderID
  }

  static func json(
    _ base: String, _ method: String, _ path: String, _ body: [String: Any]?, token: String? = nil,
    headers: [String: String] = [:]
  ) async throws -> [String: Any] {
    var request = URLRequest(url: try #require(URL(string: base + path)))
    request.httpMethod = method
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
    if method == "POST" { request.setValue("\"\(UUID().uuidString)\"", forHTTPHeaderField: "Idempotency-Key") }
    if let body { request.httpBody = try JSONSerialization.data(withJSONObject: body) }
    let (data, response) = try await URLSession.shared.data(for: request)
    let status = (response as? HTTPURLResponse)?.statusCode ?? 0
    guard status == 200 else {
      throw ProcessFailure("\(method) \(path) answered \(status): \(String(decoding: data, as: UTF8.self))")
    }
    return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
  }

  /// A signed-in customer's access token.
  static func customer(_ base: String) async throws -> String {
    let email = "observer-\(UUID().uuidString.prefix(8).lowercased())@example.com"
    let password = "an observer's password"
    _ = try await json(base, "POST", "/v1/auth/register", ["email": email, "password": password, "fullName": "Obs"])
    let login = try await json(base, "POST", "/v1/auth/login", ["email": email, "password": password])
    return try #require((login["tokens"] as? [String: Any])?["accessToken"] as? String)
  }

  /// A product with stock, written straight into the catalogue's and the inventory's databases.
  static func stockedProduct(_ databases: [String: String]) async throws -> String {
    let productID = UUID()
    let product = try DatabaseConfiguration(
      variable: "product", url: try #require(databases["MART_PRODUCT_DATABASE_URL"]))
    let inventory = try DatabaseConfiguration(
      variable: "inventory", url: try #require(databases["MART_INVENTORY_DATABASE_URL"]))
    let sku = "OBSERVE-\(productID.uuidString.prefix(8))"
    try await withPostgresClient(product) { client in
      try await client.query(
        """
        INSERT INTO products (id, sku, name, price_minor, currency)
        VALUES (\(productID), \(sku), 'Observed teapot', 19900, 'ZAR')
        """, logger: TestBed.logger)
    }
    try await withPostgresClient(inventory) { client in
      try await client.withTransaction(logger: TestBed.logger) { connection in
        try await connection.query(
          "INSERT INTO stock (product_id, on_hand) VALUES (\(productID), 100)", logger: TestBed.logger)
        try await connection.query(
          """
          INSERT INTO stock_movements (product_id, kind, reason, on_hand_delta, reserved_delta, on_hand_after,
                                       reserved_after, actor_user_id, note)
          VALUES (\(productID), 'adjustment', 'restock', 100, 0, 100, 0,
                  '00000000-0000-0000-0000-000000000001', 'observability test')
          """, logger: TestBed.logger)
      }
    }
    return productID.uuidString.lowercased()
  }
}

struct ProcessFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
