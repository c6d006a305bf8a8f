import ArgumentParser
import Foundation
import Gateway
import InventoryService
import Logging
import MartRuntime
import NotificationService
import OrderService
import PaymentService
import ProductService
import ServiceLifecycle
import UserService

@main
struct Mart: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mart",
    abstract: "Mart: an online-mart backend of six gRPC services behind a JSON gateway.",
    discussion: """
      Configuration comes from environment variables (see README.md), for example
      MART_ORDER_PORT, MART_ORDER_DATABASE_URL, MART_GATEWAY_PORT, KAFKA_BROKERS, MART_LOG_LEVEL.
      A malformed value stops start-up with exit code 2 and names the variable.
      """,
    subcommands: [
      Serve.self, Migrate.self, Dev.self, Health.self, Events.self, Users.self, Seed.self, Keys.self,
    ])
}

/// The services of the mart plus the gateway, as a command-line argument.
enum Component: String, ExpressibleByArgument, CaseIterable {
  case user, product, inventory, order, payment, notification, gateway

  var service: MartService? { MartService(rawValue: rawValue) }
}

/// A service or `all`, for `mart migrate`.
enum MigrationTarget: String, ExpressibleByArgument, CaseIterable {
  case user, product, inventory, order, payment, notification, all

  var services: [MartService] {
    MartService(rawValue: rawValue).map { [$0] } ?? MartService.allCases
  }
}

extension MartService {
  /// Each service library's description of itself.
  var definition: ServiceDefinition {
    switch self {
    case .user: UserServiceModule.definition
    case .product: ProductServiceModule.definition
    case .inventory: InventoryServiceModule.definition
    case .order: OrderServiceModule.definition
    case .payment: PaymentServiceModule.definition
    case .notification: NotificationServiceModule.definition
    }
  }
}

/// Reads the configuration, turning a bad value into exit code 2 with the variable's name.
func loadConfiguration<T>(_ read: () throws -> T) throws -> T {
  do {
    return try read()
  } catch let error as ConfigurationError {
    FileHandle.standardError.write(Data("mart: \(error)\n".utf8))
    throw ExitCode(2)
  }
}

/// Sets up logging for this process from the environment.
func bootstrapProcess(name: String, environment: EnvironmentReader) throws -> (ProcessConfiguration, Logger) {
  let process = try loadConfiguration { try ProcessConfiguration(environment: environment) }
  MartLogging.bootstrap(process: name, configuration: process)
  return (process, Logger(label: "mart"))
}

/// Sets up tracing for a process that serves (`ProcessTracing`): the exporter's service, first
/// in the group so that it stops last and sends the spans of the drain too. A setting swift-otel
/// refuses is a configuration error (exit 2).
func bootstrapTracing(name: String, logger: Logger) throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
  do {
    guard
      let exporter = try ProcessTracing.bootstrap(
        process: name, environment: ProcessInfo.processInfo.environment, logger: logger)
    else { return [] }
    return [.init(service: exporter)]
  } catch {
    FileHandle.standardError.write(Data("mart: tracing (OTEL_* settings): \(error)\n".utf8))
    throw ExitCode(2)
  }
}

struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run one service (or the gateway) until SIGTERM or SIGINT.")

  @Argument(help: "What to run: \(Component.allCases.map(\.rawValue).joined(separator: ", ")).")
  var component: Component

  func run() async throws {
    let environment = EnvironmentReader()
    let (process, logger) = try bootstrapProcess(name: component.rawValue, environment: environment)
    let tracing = try bootstrapTracing(name: component.rawValue, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration]
    if let service = component.service {
      let events = try EventTransports.make(process, clientID: "mart-\(service.rawValue)", logger: logger)
      let (configuration, directory, auth) = try loadConfiguration {
        (
          try ServiceConfiguration(service, environment: environment), try ServiceDirectory(environment: environment),
          try AuthConfiguration(environment: environment, for: .service(service))
        )
      }
      // A service's own settings are read as its handlers are made: still configuration (exit 2).
      services =
        events.services.map { .init(service: $0) }
        + (try loadConfiguration {
          try ServiceHost(
            definition: service.definition, configuration: configuration, directory: directory, auth: auth,
            transport: events.transport, retryPolicy: process.retryPolicy, logger: logger
          ).lifecycleServices
        })
      // The process's metrics (its RPCs, events, sagas…) for Prometheus, on a port of their own.
      ProcessMetrics.bootstrapProcessMetrics()
      if let metricsPort = configuration.metricsPort {
        services.append(
          .init(service: MetricsListener(host: configuration.bindHost, port: metricsPort, logger: logger)))
      }
      logger.info(
        "starting",
        metadata: [
          "port": "\(configuration.port)", "metrics_port": "\(configuration.metricsPort.map(String.init) ?? "none")",
          "database": "\(configuration.database)",
        ])
    } else {
      let configuration = try loadConfiguration { try GatewayConfiguration(environment: environment) }
      ProcessMetrics.bootstrapProcessMetrics()
      services = try loadConfiguration {
        try Gateway.makeServices(configuration: configuration, logger: logger).map { .init(service: $0) }
      }
      logger.info("starting gateway", metadata: ["port": "\(configuration.port)"])
    }
    try await runUntilSignalled(tracing + services, logger: logger)
  }
}

struct Migrate: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Apply pending database migrations and exit.",
    discussion: "Safe to run twice, and while services are running; refuses a database newer than this build.")

  @Argument(help: "Which database: \(MigrationTarget.allCases.map(\.rawValue).joined(separator: ", ")).")
  var target: MigrationTarget

  func run() async throws {
    let environment = EnvironmentReader()
    let (_, logger) = try bootstrapProcess(name: "migrate", environment: environment)
    let configurations = try loadConfiguration {
      try target.services.map { try ServiceConfiguration($0, environment: environment) }
    }
    for configuration in configurations {
      let service = configuration.service
      let runner = try MigrationRunner(migrations: service.definition.migrations, logger: logger)
      try await withReachableDatabase(configuration, logger: logger) { client in
        do {
          let report = try await runner.migrate(client)
          print("\(service.rawValue): schema version \(report.currentVersion), applied \(report.applied)")
        } catch {
          FileHandle.standardError.write(
            Data("mart: \(service.rawValue): \(APIStatus.redactedDescription(of: error))\n".utf8))
          throw ExitCode.failure
        }
      }
    }
  }
}

struct Dev: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run every service and the gateway in one process, for one machine.")

  func run() async throws {
    let environment = EnvironmentReader()
    let (process, logger) = try bootstrapProcess(name: "dev", environment: environment)
    let tracing = try bootstrapTracing(name: "dev", logger: logger)
    // One process that is every service and the gateway: each still has a key of its own, made
    // up at start unless the environment sets it (a benchmark that signs as the order service).
    let (configurations, directory, gateway, auth) = try loadConfiguration {
      let auth = try AuthConfiguration(
        environment: environment, for: nil
      ).with(keys: try ServiceKeys.development(environment: environment))
      return (
        try MartService.allCases.map { try ServiceConfiguration($0, environment: environment) },
        try ServiceDirectory(environment: environment),
        try GatewayConfiguration(environment: environment, auth: auth),
        auth
      )
    }
    // One transport for the whole process: in-process delivery connects the services directly.
    let events = try EventTransports.make(process, clientID: "mart-dev", logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] =
      tracing + events.services.map { .init(service: $0) }
    for configuration in configurations {
      var serviceLogger = logger
      serviceLogger[metadataKey: "service"] = .string(configuration.service.rawValue)
      services += try loadConfiguration {
        try ServiceHost(
          definition: configuration.service.definition, configuration: configuration, directory: directory, auth: auth,
          transport: events.transport, retryPolicy: process.retryPolicy, logger: serviceLogger
        ).lifecycleServices
      }
    }
    ProcessMetrics.bootstrapProcessMetrics()
    services += try loadConfiguration {
      try Gateway.makeServices(configuration: gateway, logger: logger).map { .init(service: $0) }
    }
    logger.info("starting the whole mart", metadata: ["gateway_port": "\(gateway.port)"])
    try await runUntilSignalled(services, logger: logger)
  }
}

struct Events: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Operate the event backbone.", subcommands: [Redrive.self])

  struct Redrive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Put the events of a dead-letter topic back on their topic.",
      discussion: """
        Reads <topic>.dlq as the consumer group mart.redrive and publishes each event again, without
        its dead-letter headers, to the topic it came from; stops when nothing has arrived for --wait.
        Consumers that had already handled an event skip it again (their inbox remembers its id).
        Needs KAFKA_BROKERS.
        """)

    @Argument(help: "The dead-letter topic, e.g. mart.orders.v1.dlq.")
    var topic: String

    @Option(help: "Stop after this long without a record (e.g. 10s, 1m).")
    var wait: String = "30s"

    func run() async throws {
      let environment = EnvironmentReader()
      let (process, logger) = try bootstrapProcess(name: "redrive", environment: environment)
      let idle = try loadConfiguration {
        try EnvironmentReader(["--wait": wait]).duration("--wait", default: .seconds(30))
      }
      guard DeadLetterRedrive.originalTopic(of: topic) != nil else {
        FileHandle.standardError.write(Data("mart: \(topic) is not a dead-letter topic (<topic>.dlq)\n".utf8))
        throw ExitCode(2)
      }
      guard let brokers = process.kafkaBrokers else {
        FileHandle.standardError.write(Data("mart: KAFKA_BROKERS is not set: dead-letter topics live on Kafka\n".utf8))
        throw ExitCode(2)
      }
      let transport = try KafkaEventTransport(
        brokers: brokers, clientID: "mart-redrive", topicPrefix: process.kafkaTopicPrefix,
        properties: process.kafkaProperties, logger: logger)
      do {
        let count = try await DeadLetterRedrive.run(
          deadLetterTopic: topic, transport: transport, idle: idle, logger: logger)
        await transport.shutdown()
        print("redrove \(count) event(s) from \(topic)")
      } catch {
        await transport.shutdown()
        FileHandle.standardError.write(Data("mart: redrive failed: \(error)\n".utf8))
        throw ExitCode.failure
      }
    }
  }
}

struct Keys: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Make keys the mart is configured with.", subcommands: [ServiceKeys.self, KeyEncryptionKey.self])

  struct KeyEncryptionKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "kek",
      abstract: "Print a new key-encryption key entry for MART_USER_KEY_ENCRYPTION_KEYS.",
      discussion: """
        The user service seals its JWT signing keys with the first key of MART_USER_KEY_ENCRYPTION_KEYS
        (<id>:<base64>,…) and opens them with any. To rotate, put the new entry first and keep the old
        ones after it; each instance re-seals every key under the new one, and the old entry can go
        once every instance has run with the new list. Keep it outside the database and its backups.
        """)

    @Option(help: "The key's id, stored beside each key it seals (letters, digits, '.', '_', '-').")
    var id: String = "kek-\(Int(Date().timeIntervalSince1970))"

    func run() throws {
      print(KeyEncryptionKeys.newEntryText(id: id))
    }
  }

  struct ServiceKeys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "services",
      abstract: "Print a new key for each service and the gateway, and the list of their public keys.",
      discussion: """
        Each service signs the short-lived tokens it presents to the others with its own key, and the
        gateway signs its word for a client's address with its own: give each process only its own
        MART_<SERVICE>_SERVICE_KEY (or MART_GATEWAY_KEY), and every service MART_SERVICE_PUBLIC_KEYS.
        Keep the private keys secret, like database passwords. Prints NAME=value lines (an .env file).
        """)

    func run() throws {
      print(MartCore.ServiceKeys.newSetText())
    }
  }
}
