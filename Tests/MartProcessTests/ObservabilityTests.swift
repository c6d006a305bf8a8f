import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing
import Yams

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// deploy/observability's alert rules and dashboard against what the mart really exports: a
/// `mart dev` on the test broker takes an order paid and one whose payment fails, then its
/// /metrics must show every metric a rule or a panel names (so that an alert can never watch a
/// metric that was renamed or never existed).
@Suite struct ObservabilityTests {
  @Test func alertRulesAndTheDashboardNameOnlyMetricsTheMartExports() async throws {
    let wanted = try Self.metricNamesInRulesAndDashboard()
    #expect(wanted.count >= 10, "\(wanted)")
    try await withScratchDatabases("observe") { databases in
      var environment = databases
      let gatewayPort = try freePort()
      environment["MART_GATEWAY_PORT"] = "\(gatewayPort)"
      for service in MartService.allCases { environment["\(service.environmentPrefix)_PORT"] = "\(try freePort())" }
      let adminToken = String(repeating: "metrics-reader-", count: 3)
      environment["MART_GATEWAY_ADMIN_TOKEN"] = adminToken
      environment["MART_PAYMENT_SANDBOX_ENABLED"] = "true"
      // Topics and consumer groups of its own on the shared test broker.
      environment["MART_KAFKA_TOPIC_PREFIX"] = "observe-\(UUID().uuidString.prefix(8).lowercased())."
      let mart = try ChildProcess.mart(["dev"], environment: environment)
      let base = "http://127.0.0.1:\(gatewayPort)"
      let ready = await eventually { await httpStatus(base + "/readyz") == 200 }
      #expect(ready, "\(mart.standardError.suffix(2000))")

      let productID = try await Self.stockedProduct(databases)
      let customer = try await Self.customer(base)
      for outcome in ["SUCCEED", "FAIL"] {
        let order = try await Self.json(
          base, "POST", "/v1/orders",
          [
            "items": [["productId": productID, "quantity": 1]],
            "shippingAddress": [
              "recipientName": "Observer", "lines": ["1 Long Street"], "city": "Cape Town", "countryCode": "ZA",
            ],
          ], token: customer)
        let orderID = try #require(order["id"] as? String)
        let awaiting = await eventually {
          let read = try? await Self.json(base, "GET", "/v1/orders/\(orderID)", nil, token: customer)
          return read?["status"] as? String == "AWAITING_PAYMENT"
        }
        #expect(awaiting)
        _ = try await Self.json(
          base, "POST", "/v1/orders/\(orderID)/payments", ["sandboxOutcome": outcome], token: customer)
      }

      var missing = wanted
      let exported = await eventually {
        guard let text = try? await Self.metrics(base, token: adminToken) else { return false }
        missing = wanted.filter { !Self.exports(text, $0) }
        return missing.isEmpty
      }
      #expect(exported, "named by a rule or a panel, never exported: \(missing.sorted())")
      mart.signal(SIGTERM)
      #expect(await mart.waitForExit() == 0)
    }
  }

  // MARK: - Helpers

  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

  /// Every `mart_…` metric an alert rule's or a dashboard panel's expression names, without the
  /// `_bucket`/`_count`/`_sum` of a histogram's series.
  static func metricNamesInRulesAndDashboard() throws -> Set<String> {
    var expressions: [String] = []
    let rules = try String(contentsOf: root.appendingPathComponent("deploy/observability/alerts.yml"), encoding: .utf8)
    let groups = try #require((try Yams.load(yaml: rules) as? [String: Any])?["groups"] as? [[String: Any]])
    for group in groups {
      for rule in group["rules"] as? [[String: Any]] ?? [] {
        if let expression = rule["expr"] as? String { expressions.append(expression) }
      }
    }
    let dashboardData = try Data(
      contentsOf: root.appendingPathComponent("deploy/observability/grafana/mart-dashboard.json"))
    let dashboard = try #require(try JSONSerialization.jsonObject(with: dashboardData) as? [String: Any])
    for panel in dashboard["panels"] as? [[String: Any]] ?? [] {
      for target in panel["targets"] as? [[String: Any]] ?? [] {
        if let expression = target["expr"] as? String { expressions.append(expression) }
      }
    }
    let pattern = try Regex(#"\bmart_[a-z0-9_]+"#)
    var names = Set<String>()
    for expression in expressions {
      for match in expression.matches(of: pattern) {
        var name = String(expression[match.range])
        for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) {
          name.removeLast(suffix.count)
        }
        names.insert(name)
      }
    }
    return names
  }

  /// Whether the exposition has a series of `name` (a histogram's by its `_bucket` series).
  static func exports(_ exposition: String, _ name: String) -> Bool {
    exposition.split(separator: "\n").contains { line in
      !line.hasPrefix("#")
        && (line.hasPrefix(name + "{") || line.hasPrefix(name + " ") || line.hasPrefix(name + "_bucket{"))
    }
  }

  static func metrics(_ base: String, token: String) async throws -> String {
    var request = URLRequest(url: try #require(URL(string: base + "/metrics")))
    request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
    let (data, _) = try await URLSession.shared.data(for: request)
    return String(decoding: data, as: UTF8.self)
  }

  static func json(
    _ base: String, _ method: String, _ path: String, _ body: [String: Any]?, token: String? = nil
  ) async throws -> [String: Any] {
    var request = URLRequest(url: try #require(URL(string: base + path)))
    request.httpMethod = method
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
