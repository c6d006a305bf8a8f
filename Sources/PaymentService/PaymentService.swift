import AsyncHTTPClient
import GRPCCore
import Logging
import MartRuntime

/// The payment service as the runtime runs it: its schema, its gRPC handlers (webhooks
/// included), its order-event consumer, and the worker that retries provider calls.
///
/// Shape shared by every service: `PaymentService.swift` (this definition), the gRPC handlers
/// (`PaymentRPCService.swift`, `PaymentWebhooks.swift`), the SQL store (`PaymentStore.swift`),
/// the event handlers (`PaymentEventHandlers.swift`), and `Migrations/NNNN_name.sql` (embedded in
/// the binary); and, for this service, the providers (`Providers/`) and their worker
/// (`PaymentWorker.swift`).
public enum PaymentServiceModule {
  /// The service with its settings read from the environment (`PaymentSettings`).
  public static let definition = makeDefinition()

  /// The service with these settings (nil: read from the environment when the host is built).
  public static func makeDefinition(settings: PaymentSettings? = nil) -> ServiceDefinition {
    ServiceDefinition(
      service: .payment,
      migrations: [
        Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
        .eventTables(version: 2),
        Migration(version: 3, name: "provider_calls", embedded: PackageResources._003_provider_calls_sql),
        Migration(version: 4, name: "payment_trace", embedded: PackageResources._004_payment_trace_sql),
      ],
      makeRPCServices: { context in
        let settings = try settings ?? PaymentSettings(environment: EnvironmentReader())
        return [
          PaymentRPCService(
            store: store(context), calls: calls(context, settings), orders: context.clients.order, settings: settings,
            logger: context.logger)
        ]
      },
      makeConsumers: { context in [PaymentEventHandlers.orders(store: store(context), logger: context.logger)] },
      makeBackgroundServices: { context in
        let settings = try settings ?? PaymentSettings(environment: EnvironmentReader())
        return [
          PaymentWorker(
            store: store(context), calls: calls(context, settings), settings: settings, logger: context.logger)
        ]
      }
    )
  }

  static func store(_ context: ServiceContext) -> PaymentStore {
    PaymentStore(database: context.database, outbox: context.outbox, logger: context.logger)
  }

  /// Provider calls over the process-wide HTTP client (its connection pools are shared, and it
  /// needs no shutdown).
  static func calls(_ context: ServiceContext, _ settings: PaymentSettings) -> ProviderCalls {
    ProviderCalls(store: store(context), settings: settings, http: HTTPClient.shared, logger: context.logger)
  }
}
