import GRPCCore
import MartRuntime

/// The product service as the runtime runs it: its schema and its gRPC handlers.
///
/// Shape shared by every service: `ProductService.swift` (this definition), the gRPC handlers,
/// the SQL store, the event handlers, and `Migrations/NNNN_name.sql` (embedded in the binary).
public enum ProductServiceModule {
  public static let definition = ServiceDefinition(
    service: .product,
    migrations: [
      Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
      .eventTables(version: 2),
    ],
    // The business RPCs of mart.product.v1 are registered here as they are implemented; until then
    // the server offers grpc.health.v1 only and answers UNIMPLEMENTED for everything else.
    makeRPCServices: { _ in [] }
  )
}
