import ArgumentParser
import Foundation
import InventoryService
import Logging
import MartRuntime
import PostgresNIO
import ProductService
import UserService

struct Seed: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Load data into the mart's databases.", subcommands: [Demo.self])

  struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Load a demo shop: categories, about 50 products with stock, and a demo customer.",
      discussion: """
        Writes through the services' own store code (so ProductCreated and the stock ledger's movements \
        are recorded as the API would), straight into the databases named by MART_USER_DATABASE_URL, \
        MART_PRODUCT_DATABASE_URL and MART_INVENTORY_DATABASE_URL; pending migrations are applied first. \
        Stock is received in the name of an admin, who must exist (`mart users create-admin`).

        Idempotent: categories are recognised by slug, products by SKU, stock by a request id derived \
        from each product, and an existing demo customer is left as it is. A second run adds nothing.

        The demo customer's password is random and printed once, when the account is made.
        """)

    @Option(help: "The admin the stock is received by (default: the longest-standing admin).")
    var adminEmail: String?

    @Option(help: "The demo customer's email.")
    var customerEmail = "demo.customer@example.com"

    func run() async throws {
      let environment = EnvironmentReader()
      let (_, logger) = try bootstrapProcess(name: "seed", environment: environment)
      let (users, products, inventory) = try loadConfiguration {
        (
          try ServiceConfiguration(.user, environment: environment),
          try ServiceConfiguration(.product, environment: environment),
          try ServiceConfiguration(.inventory, environment: environment)
        )
      }
      let adminEmail = self.adminEmail
      let customerEmail = self.customerEmail

      let admin = try await withMigratedDatabase(users, logger: logger) { database in
        try await UserAdministration.admin(email: adminEmail, database: database, logger: logger)
      }
      guard let admin else {
        fail(
          1,
          adminEmail.map { "\($0) is not an admin" }
            ?? "there is no admin yet: make one first (`make admin EMAIL=you@example.com`)")
      }

      let catalog = try await withMigratedDatabase(products, logger: logger) { database in
        try await ProductAdministration.loadCatalog(DemoCatalog.categories, database: database, logger: logger)
      }
      let received = try await withMigratedDatabase(inventory, logger: logger) { database in
        var received = 0
        for (sku, quantity) in DemoCatalog.stock.sorted(by: { $0.key < $1.key }) {
          guard let productID = catalog.productIDs[sku] else { continue }
          let added = try await InventoryAdministration.receiveOnce(
            productID: productID, quantity: quantity, purpose: "mart-seed-demo", actorUserID: admin,
            note: "demo stock (mart seed demo)", database: database, logger: logger)
          if added { received += 1 }
        }
        return received
      }
      let customer = try await withMigratedDatabase(users, logger: logger) { database in
        try await UserAdministration.ensureCustomer(
          database: database, email: customerEmail, fullName: "Demo Customer", logger: logger)
      }

      print(
        """
        demo shop: \(catalog.categoriesCreated) categories and \(catalog.productsCreated) products created \
        (\(catalog.productIDs.count) in the demo catalog), stock received for \(received)
        """)
      switch customer {
      case .created(_, let password):
        print("demo customer: \(customerEmail) / \(password)   (printed only now; sign in with POST /v1/auth/login)")
      case .existed:
        print("demo customer: \(customerEmail) already exists; its password was printed when it was made")
      }
    }
  }
}

/// `withReachableDatabase` after applying the service's pending migrations, as the service itself
/// would at start-up, so that a command can run before the service ever has.
func withMigratedDatabase<Result: Sendable>(
  _ configuration: ServiceConfiguration, logger: Logger, _ body: (PostgresClient) async throws -> Result
) async throws -> Result {
  try await withReachableDatabase(configuration, logger: logger) { database in
    do {
      _ = try await MigrationRunner(migrations: configuration.service.definition.migrations, logger: logger)
        .migrate(database)
    } catch {
      fail(
        1, "cannot migrate the \(configuration.service.rawValue) database: \(APIStatus.redactedDescription(of: error))")
    }
    return try await body(database)
  }
}
