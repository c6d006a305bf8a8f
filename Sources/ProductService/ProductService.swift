import GRPCCore
import MartRuntime

/// The product service as the runtime runs it: its schema and its gRPC handlers.
///
/// Shape shared by every service: `ProductService.swift` (this definition), the gRPC handlers
/// (`ProductRPCService.swift`), the SQL store (`ProductStore.swift`), the input rules
/// (`ProductModels.swift`), and `Migrations/NNNN_name.sql` (embedded in the binary).
public enum ProductServiceModule {
  public static let definition = ServiceDefinition(
    service: .product,
    migrations: [
      Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
      .eventTables(version: 2),
    ],
    makeRPCServices: { context in
      [
        ProductRPCService(
          store: ProductStore(database: context.database, outbox: context.outbox, logger: context.logger),
          logger: context.logger)
      ]
    }
  )
}
