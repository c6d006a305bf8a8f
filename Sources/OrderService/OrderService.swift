import GRPCCore
import Logging
import MartRuntime
import PostgresNIO

/// The order service as the runtime runs it: its schema, its gRPC handlers, its payment-event
/// consumer, and the saga worker that moves orders along.
///
/// Shape shared by every service: `OrderService.swift` (this definition), the gRPC handlers
/// (`OrderRPCService.swift`), the SQL store (`OrderStore.swift`), the event handlers
/// (`OrderEventHandlers.swift`), and `Migrations/NNNN_name.sql` (embedded in the binary); and,
/// for this service, the saga (`OrderSaga.swift`).
public enum OrderServiceModule {
  /// The service with its settings read from the environment (`OrderSettings`).
  public static let definition = makeDefinition()

  /// The service with these settings (nil: read from the environment when the host is built).
  public static func makeDefinition(settings: OrderSettings? = nil) -> ServiceDefinition {
    // Shared by the WatchOrder handler and the listener that feeds it.
    let signals = OrderTimelineSignals()
    // Written by the saga worker, read by CreateOrder.
    let backlog = OrderSagaBacklog()
    return ServiceDefinition(
      service: .order,
      migrations: [
        Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
        .eventTables(version: 2),
        Migration(version: 3, name: "saga", embedded: PackageResources._003_saga_sql),
        Migration(
          version: 4, name: "saga_step_generation", embedded: PackageResources._004_saga_step_generation_sql),
        Migration(
          version: 5, name: "cancel_after_payment", embedded: PackageResources._005_cancel_after_payment_sql),
        Migration(version: 6, name: "saga_step_trace", embedded: PackageResources._006_saga_step_trace_sql),
      ],
      makeRPCServices: { context in
        [
          OrderRPCService(
            store: store(context), product: context.clients.product, signals: signals, backlog: backlog,
            settings: try settings ?? OrderSettings(environment: EnvironmentReader()), logger: context.logger)
        ]
      },
      makeConsumers: { context in [OrderEventHandlers.payments(store: store(context), logger: context.logger)] },
      makeBackgroundServices: { context in
        [
          OrderSaga(
            store: store(context), inventory: context.clients.inventory,
            settings: try settings ?? OrderSettings(environment: EnvironmentReader()), backlog: backlog,
            logger: context.logger),
          OrderTimelineListener(signals: signals, database: context.database, logger: context.logger),
        ]
      }
    )
  }

  static func store(_ context: ServiceContext) -> OrderStore {
    OrderStore(database: context.database, outbox: context.outbox, logger: context.logger)
  }
}
