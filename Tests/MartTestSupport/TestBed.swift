import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MartProto
import MartRuntime
import PostgresNIO

/// The services `make test` starts (scripts/testbed.sh): a private PostgreSQL cluster and a
/// Kafka-protocol broker. Tests fail loudly, rather than skip, when run outside it.
public enum TestBed {
  public struct NotConfigured: Error, CustomStringConvertible {
    public var variable: String
    public init(variable: String) { self.variable = variable }
    public var description: String {
      "\(variable) is not set: run the tests with `make test`, which starts PostgreSQL and the broker"
    }
  }

  /// A superuser connection to the test cluster, for creating scratch databases.
  public static func adminDatabase() throws -> DatabaseConfiguration {
    guard let url = ProcessInfo.processInfo.environment["MART_TEST_DATABASE_URL"], !url.isEmpty else {
      throw NotConfigured(variable: "MART_TEST_DATABASE_URL")
    }
    return try DatabaseConfiguration(variable: "MART_TEST_DATABASE_URL", url: url)
  }

  public static let logger: Logger = {
    var logger = Logger(label: "mart.test")
    // MART_TEST_LOG_LEVEL=debug shows what the code under test logs.
    logger.logLevel =
      ProcessInfo.processInfo.environment["MART_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .error
    return logger
  }()

  /// The repository's root folder (for the built `mart` binary and the Migrations folders).
  public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// Runs `body` with a started PostgresClient, shutting the client down afterwards.
@discardableResult
public func withPostgresClient<Result: Sendable>(
  _ configuration: DatabaseConfiguration,
  _ body: @Sendable (PostgresClient) async throws -> Result
) async throws -> Result {
  let client = try configuration.makeClient(logger: TestBed.logger)
  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { await client.run() }
    defer { group.cancelAll() }
    return try await body(client)
  }
}

/// A database of its own for one test, created empty and dropped afterwards, so that tests can
/// run in parallel against one cluster.
public struct ScratchDatabase: Sendable {
  public let configuration: DatabaseConfiguration
  public var name: String { configuration.database }

  /// A `postgres://` URL for it, as `mart` reads one from its environment.
  public var url: String {
    var components = URLComponents()
    components.scheme = "postgres"
    components.user = configuration.username
    components.password = configuration.password
    components.host = configuration.host
    components.port = configuration.port
    components.path = "/" + configuration.database
    return components.string ?? ""
  }

  public init(configuration: DatabaseConfiguration) {
    self.configuration = configuration
  }

  public static func create(_ label: String) async throws -> ScratchDatabase {
    let admin = try TestBed.adminDatabase()
    let name = "t_\(label)_\(UUID().uuidString.prefix(8).lowercased())"
    try await withPostgresClient(admin) { client in
      try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \"\(name)\""), logger: TestBed.logger)
    }
    return ScratchDatabase(configuration: admin.withDatabase(name))
  }

  /// Drops the database, disconnecting whoever is still connected (a "database gone" event).
  public func drop() async throws {
    let admin = try TestBed.adminDatabase()
    try await withPostgresClient(admin) { client in
      try await client.query(
        PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \"\(name)\" WITH (FORCE)"), logger: TestBed.logger)
    }
  }

  /// Creates the database again under the same name (after `drop`).
  public func recreate() async throws {
    let admin = try TestBed.adminDatabase()
    try await withPostgresClient(admin) { client in
      try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \"\(name)\""), logger: TestBed.logger)
    }
  }

  /// Creates a scratch database, runs `body`, and drops the database whatever happens.
  public static func with<Result: Sendable>(
    _ label: String, _ body: (ScratchDatabase) async throws -> Result
  ) async throws -> Result {
    let database = try await create(label)
    do {
      let result = try await body(database)
      try await database.drop()
      return result
    } catch {
      try? await database.drop()
      throw error
    }
  }
}

/// Polls `condition` until it holds or `attempts` run out; returns whether it held. A condition
/// that throws counts as not holding yet.
/// (A bound on attempts, not a time limit on the test: slow machines just poll longer.)
public func eventually(
  attempts: Int = 300, every interval: Duration = .milliseconds(100),
  _ condition: () async throws -> Bool
) async -> Bool {
  for _ in 0..<attempts {
    if (try? await condition()) == true { return true }
    try? await Task.sleep(for: interval)
  }
  return false
}

/// Asks a gRPC server for a service's health; nil when the call fails.
public func healthStatus(host: String = "127.0.0.1", port: Int, service: String) async -> HealthStatus? {
  do {
    return try await withGRPCClient(
      transport: .http2NIOPosix(target: .ipv4(address: host, port: port), transportSecurity: .plaintext)
    ) { client in
      let health = Grpc_Health_V1_Health.Client(wrapping: client)
      var options = CallOptions.defaults
      // Generous: a fully loaded two-core machine (scrypt in parallel suites) answers slowly, and
      // a slow answer is not the "no answer" this returns nil for.
      options.timeout = .seconds(10)
      return try await health.check(.with { $0.service = service }, options: options).status
    }
  } catch {
    return nil
  }
}
