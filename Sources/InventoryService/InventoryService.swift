import GRPCCore
import Logging
import MartRuntime
import PostgresNIO

/// The inventory service as the runtime runs it: its schema, its gRPC handlers, its event
/// consumer, and its reservation sweeper.
///
/// Shape shared by every service: `InventoryService.swift` (this definition), the gRPC handlers
/// (`InventoryRPCService.swift`), the SQL store (`InventoryStore.swift`), the event handlers
/// (`InventoryEventHandlers.swift`), and `Migrations/NNNN_name.sql` (embedded in the binary).
public enum InventoryServiceModule {
  /// The service with its settings read from the environment (`InventorySettings`).
  public static let definition = makeDefinition()

  /// The service with these settings (nil: read from the environment when the host is built).
  public static func makeDefinition(settings: InventorySettings? = nil) -> ServiceDefinition {
    ServiceDefinition(
      service: .inventory,
      migrations: [
        Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
        .eventTables(version: 2),
        Migration(version: 3, name: "returns", embedded: PackageResources._003_returns_sql),
      ],
      makeRPCServices: { context in
        [
          InventoryRPCService(
            store: store(context), settings: try settings ?? InventorySettings(environment: EnvironmentReader()),
            logger: context.logger)
        ]
      },
      makeConsumers: { context in [InventoryEventHandlers.catalog(store: store(context))] },
      makeBackgroundServices: { context in
        [try makeSweeper(database: context.database, settings: settings, logger: context.logger)]
      }
    )
  }

  /// The lifecycle service that releases expired reservations, on the service's database (the
  /// host runs it once the database is migrated; tests may also run one of their own).
  public static func makeSweeper(
    database: PostgresClient, settings: InventorySettings? = nil, logger: Logger
  ) throws -> ReservationSweeper {
    ReservationSweeper(
      store: InventoryStore(database: database, outbox: Outbox(service: .inventory), logger: logger),
      settings: try settings ?? InventorySettings(environment: EnvironmentReader()), logger: logger)
  }

  static func store(_ context: ServiceContext) -> InventoryStore {
    InventoryStore(database: context.database, outbox: context.outbox, logger: context.logger)
  }
}
