import Foundation
import InventoryService
import MartRuntime
import MartTestSupport
import NotificationService
import OrderService
import PaymentService
import ProductService
import Testing
import UserService

/// Each service's migrations: every file in its Migrations folder is registered, in order,
/// and the whole list applies to an empty PostgreSQL database.
@Suite struct ServiceSchemaTests {
  static let definitions: [(folder: String, definition: ServiceDefinition)] = [
    ("UserService", UserServiceModule.definition),
    ("ProductService", ProductServiceModule.definition),
    ("InventoryService", InventoryServiceModule.definition),
    ("OrderService", OrderServiceModule.definition),
    ("PaymentService", PaymentServiceModule.definition),
    ("NotificationService", NotificationServiceModule.definition),
  ]

  /// `0001_init.sql` for version 1 named "init".
  static func fileName(_ migration: Migration) -> String {
    let version = String(migration.version)
    return String(repeating: "0", count: max(0, 4 - version.count)) + version + "_\(migration.name).sql"
  }

  @Test(arguments: definitions.map(\.folder))
  func everyMigrationFileIsRegisteredAndApplies(folder: String) async throws {
    let definition = try #require(Self.definitions.first { $0.folder == folder }?.definition)
    let directory = TestBed.repositoryRoot.appendingPathComponent("Sources/\(folder)/Migrations")
    let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
      .filter { $0.hasSuffix(".sql") }.sorted()
    // The shared event tables are MartRuntime's, not a file of the service.
    let own = definition.migrations.filter { $0.name != Migration.eventTablesName }
    #expect(definition.migrations.contains { $0.name == Migration.eventTablesName })
    let registered = own.map(Self.fileName)
    #expect(files == registered)
    for migration in own {
      let file = directory.appendingPathComponent(Self.fileName(migration))
      #expect(try String(contentsOf: file, encoding: .utf8) == migration.sql, "\(file.lastPathComponent) differs")
    }

    try await ScratchDatabase.with("schema_\(definition.service.rawValue)") { database in
      try await withPostgresClient(database.configuration) { client in
        let runner = try MigrationRunner(migrations: definition.migrations, logger: TestBed.logger)
        let report = try await runner.migrate(client)
        #expect(report.currentVersion == definition.migrations.last?.version)
        #expect(try await runner.migrate(client).applied.isEmpty)
      }
    }
  }
}
