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
      let (environment, base, adminToken) = try RunningMart.environment(databases, label: "observe")
      let mart = try ChildProcess.mart(["dev"], environment: environment)
      let ready = await eventually { await httpStatus(base + "/readyz") == 200 }
      #expect(ready, "\(mart.standardError.suffix(2000))")

      let productID = try await RunningMart.stockedProduct(databases)
      let customer = try await RunningMart.customer(base)
      for outcome in ["SUCCEED", "FAIL"] {
        let orderID = try await RunningMart.placeOrder(base, productID: productID, token: customer)
        _ = try await RunningMart.json(
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
}
