import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import PostgresNIO
import ServiceLifecycle

/// What one service library gives the runtime: its name, its schema and its gRPC handlers.
/// Every service is described this way, so every service process is assembled the same way.
public struct ServiceDefinition: Sendable {
  public var service: MartService
  public var migrations: [Migration]
  /// The service's gRPC handlers, given its database and context.
  public var makeRPCServices: @Sendable (ServiceContext) throws -> [any RegistrableRPCService]

  public init(
    service: MartService, migrations: [Migration],
    makeRPCServices: @escaping @Sendable (ServiceContext) throws -> [any RegistrableRPCService]
  ) {
    self.service = service
    self.migrations = migrations
    self.makeRPCServices = makeRPCServices
  }
}

/// What a service's handlers may use.
public struct ServiceContext: Sendable {
  public var configuration: ServiceConfiguration
  public var directory: ServiceDirectory
  public var database: PostgresClient
  public var logger: Logger
}

/// One running service: its database pool, its database supervisor and its gRPC server,
/// as ServiceLifecycle services in start order (they shut down in reverse: the gRPC server
/// drains first, the database pool closes last).
public struct ServiceHost: Sendable {
  public let definition: ServiceDefinition
  public let configuration: ServiceConfiguration
  public let health: HealthStatusBoard
  public let database: PostgresClient
  public let server: GRPCServer<HTTP2ServerTransport.Posix>
  public let lifecycleServices: [any Service]

  public init(
    definition: ServiceDefinition, configuration: ServiceConfiguration, directory: ServiceDirectory,
    logger baseLogger: Logger? = nil
  ) throws {
    var logger = baseLogger ?? Logger(label: "mart.\(definition.service.rawValue)")
    logger[metadataKey: "component"] = .string(definition.service.rawValue)
    let database = try configuration.database.makeClient(logger: logger)
    let health = HealthStatusBoard()
    let serviceName = definition.service.grpcServiceName
    // Registered but not serving until the database is reachable and migrated.
    health.setStatus(.notServing, for: "")
    health.setStatus(.notServing, for: serviceName)

    let context = ServiceContext(
      configuration: configuration, directory: directory, database: database, logger: logger)
    let server = GRPCServer.mart(
      host: configuration.bindHost, port: configuration.port,
      services: [HealthService(board: health)] + (try definition.makeRPCServices(context)))
    let supervisor = DatabaseSupervisor(
      client: database,
      migrations: try MigrationRunner(migrations: definition.migrations, logger: logger),
      autoMigrate: configuration.autoMigrate,
      checkInterval: configuration.databaseCheckInterval,
      logger: logger
    ) { healthy in
      let status: HealthStatus = healthy ? .serving : .notServing
      health.setStatus(status, for: "")
      health.setStatus(status, for: serviceName)
    }

    self.definition = definition
    self.configuration = configuration
    self.health = health
    self.database = database
    self.server = server
    self.lifecycleServices = [
      database, supervisor,
      GRPCServerService(server: server) {
        // Tell load balancers first, then stop accepting calls.
        health.setStatus(.notServing, for: "")
        health.setStatus(.notServing, for: serviceName)
        health.finishWatchers()
      },
    ]
  }
}

/// Runs services until SIGTERM or SIGINT, then shuts them down gracefully (last started, first stopped).
public func runUntilSignalled(_ services: [any Service], logger: Logger) async throws {
  let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
      services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
      gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger))
  try await group.run()
}
