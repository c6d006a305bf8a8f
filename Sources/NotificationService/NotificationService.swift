import AsyncHTTPClient
import GRPCCore
import Logging
import MartRuntime
import Synchronization

/// The notification service as the runtime runs it: its schema, its gRPC handlers, the consumers
/// that turn other services' events into notifications, and the sender that delivers them.
///
/// Shape shared by every service: `NotificationService.swift` (this definition), the gRPC handlers
/// (`NotificationRPCService.swift`), the SQL store (`NotificationStore.swift`), the event handlers
/// (`NotificationEventHandlers.swift`), and `Migrations/NNNN_name.sql` (embedded in the binary);
/// and, for this service, the templates (`Templates/`, `NotificationTemplates.swift`), what
/// turns an event into messages (`Notifier.swift`), the sender (`NotificationSender.swift`), and
/// the transports (`Transports/`).
public enum NotificationServiceModule {
  /// The service with its settings read from the environment (`NotificationSettings`).
  public static let definition = makeDefinition()

  /// The service with these settings (nil: read from the environment when the host is built).
  public static func makeDefinition(settings: NotificationSettings? = nil) -> ServiceDefinition {
    // The runtime asks for the RPC handlers, the consumers and the background services separately,
    // with the same context; the parts are made once per context (host), so that settings are read
    // and templates compiled once, and the handlers' inline sender is the background one.
    let made = PartsByHost(settings: settings)
    return ServiceDefinition(
      service: .notification,
      migrations: [
        Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
        .eventTables(version: 2),
        Migration(version: 3, name: "delivery_log", embedded: PackageResources._003_delivery_log_sql),
        Migration(version: 4, name: "provider_status", embedded: PackageResources._004_provider_status_sql),
        Migration(
          version: 5, name: "account_security_kinds", embedded: PackageResources._005_account_security_kinds_sql),
        Migration(version: 6, name: "password_kinds", embedded: PackageResources._006_password_kinds_sql),
      ],
      makeRPCServices: { context in
        let parts = try made.parts(for: context)
        return [
          NotificationRPCService(
            store: parts.store, notifier: parts.notifier, sender: parts.sender, twilio: parts.twilio,
            logger: context.logger)
        ]
      },
      makeConsumers: { context in
        let parts = try made.parts(for: context)
        return [
          NotificationEventHandlers.users(store: parts.store, notifier: parts.notifier, logger: context.logger),
          NotificationEventHandlers.activity(store: parts.store, notifier: parts.notifier, logger: context.logger),
        ]
      },
      makeBackgroundServices: { context in [try made.parts(for: context).sender] }
    )
  }

  /// The parts of each host, by its database client (one per host).
  final class PartsByHost: Sendable {
    let settings: NotificationSettings?
    private let made = Mutex<[ObjectIdentifier: Parts]>([:])

    init(settings: NotificationSettings?) { self.settings = settings }

    func parts(for context: ServiceContext) throws -> Parts {
      try made.withLock { made in
        let key = ObjectIdentifier(context.database)
        if let parts = made[key] { return parts }
        let parts = try Parts(context, settings: settings)
        made[key] = parts
        return parts
      }
    }
  }

  /// What the handlers, consumers and sender share, made from the settings. The templates are
  /// compiled here, so a broken one stops the service from starting.
  struct Parts: Sendable {
    let store: NotificationStore
    let notifier: Notifier
    let sender: NotificationSender
    let twilio: TwilioSettings?

    init(_ context: ServiceContext, settings: NotificationSettings?) throws {
      let settings = try settings ?? NotificationSettings(environment: EnvironmentReader())
      twilio = settings.twilio
      let templates = try NotificationTemplates()
      store = NotificationStore(database: context.database, outbox: context.outbox, logger: context.logger)
      notifier = Notifier(store: store, templates: templates, settings: settings)
      let mailbox = FileMailbox(directory: settings.mailboxDirectory, from: settings.emailFrom)
      let email: any EmailTransport =
        settings.smtp.map { SMTPEmailTransport(configuration: $0, from: settings.emailFrom, logger: context.logger) }
        ?? mailbox
      // The process-wide HTTP client: its connection pools are shared, and it needs no shutdown.
      let sms: any SMSTransport = settings.twilio.map { TwilioSMSTransport(settings: $0, http: .shared) } ?? mailbox
      sender = NotificationSender(
        store: store, notifier: notifier, email: email, sms: sms, settings: settings, logger: context.logger)
    }
  }
}
