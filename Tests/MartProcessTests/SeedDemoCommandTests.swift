import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing

/// `mart seed demo` as a newcomer runs it after `make admin`: a shop with things in it, the same
/// shop after a second run.
@Suite struct SeedDemoCommandTests {
  @Test func loadsTheDemoShopOnceAndNeedsAnAdmin() async throws {
    try await withScratchDatabases("seed") { environment in
      var environment = environment
      environment["MART_LOG_LEVEL"] = "error"

      let withoutAdmin = try ChildProcess.mart(["seed", "demo"], environment: environment)
      #expect(await withoutAdmin.waitForExit() == 1)
      #expect(withoutAdmin.standardError.contains("make admin EMAIL="))

      let admin = try ChildProcess.mart(
        ["users", "create-admin", "--email", "ops@example.com", "--password-stdin"], environment: environment,
        input: "a long enough secret\n")
      #expect(await admin.waitForExit() == 0, "\(admin.standardError)")

      let first = try ChildProcess.mart(["seed", "demo"], environment: environment)
      #expect(await first.waitForExit() == 0, "\(first.standardError)")
      #expect(first.standardOutput.contains("6 categories and 50 products created"))
      #expect(first.standardOutput.contains("stock received for 50"))
      let credentials = try #require(
        first.standardOutput.split(separator: "\n").first {
          $0.hasPrefix("demo customer: demo.customer@example.com / ")
        })
      #expect(credentials.split(separator: " ").count > 5)

      let second = try ChildProcess.mart(["seed", "demo"], environment: environment)
      #expect(await second.waitForExit() == 0, "\(second.standardError)")
      #expect(second.standardOutput.contains("0 categories and 0 products created (50 in the demo catalog)"))
      #expect(second.standardOutput.contains("stock received for 0"))
      #expect(second.standardOutput.contains("already exists"))

      let products = try #require(environment["MART_PRODUCT_DATABASE_URL"])
      #expect(try await count(products, "SELECT count(*) FROM products WHERE status = 'active'") == 50)
      #expect(try await count(products, "SELECT count(*) FROM categories") == 6)
      #expect(
        try await count(products, "SELECT count(*) FROM outbox WHERE event_type = 'mart.product.v1.ProductCreated'")
          == 50)
      let inventory = try #require(environment["MART_INVENTORY_DATABASE_URL"])
      #expect(try await count(inventory, "SELECT count(*) FROM stock WHERE on_hand > 0") == 50)
      #expect(try await count(inventory, "SELECT count(*) FROM stock_movements WHERE reason = 'restock'") == 50)
      let users = try #require(environment["MART_USER_DATABASE_URL"])
      #expect(
        try await count(users, "SELECT count(*) FROM users WHERE email = 'demo.customer@example.com'") == 1)
    }
  }

  /// One number from `sql`, run against the database at `url`.
  func count(_ url: String, _ sql: String) async throws -> Int64 {
    let configuration = try DatabaseConfiguration(variable: "test", url: url)
    return try await withPostgresClient(configuration) { client in
      var value: Int64 = -1
      for try await number in try await client.query(PostgresQuery(unsafeSQL: sql), logger: TestBed.logger)
        .decode(Int64.self)
      {
        value = number
      }
      return value
    }
  }
}
