import Foundation
import MartRuntime
import MartTestSupport
import Testing

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// The `mart` command as an operator uses it: real processes, real PostgreSQL.
@Suite struct MartCommandTests {
  @Test(arguments: [
    (["serve", "order"], "MART_ORDER_PORT", "abc"),
    (["serve", "user"], "MART_USER_DATABASE_URL", "http://nope"),
    (["serve", "gateway"], "MART_GATEWAY_PORT", "-1"),
    (["dev"], "MART_DATABASE_CHECK_INTERVAL", "often"),
    (["migrate", "all"], "MART_PAYMENT_DATABASE_URL", "postgres://nobody@/"),
    (["serve", "product"], "MART_LOG_LEVEL", "chatty"),
    (["serve", "order"], "MART_ORDER_SERVICE_KEY", "not-a-key"),
    (["serve", "order"], "MART_SERVICE_PUBLIC_KEYS", "order:AAAA"),
    (["serve", "gateway"], "MART_GATEWAY_KEY", ""),
    (["serve", "user"], "MART_JWT_KEY_ROTATION", "forever"),
    (["serve", "gateway"], "MART_GATEWAY_CONFIG", "/nonexistent/gateway.json"),
  ])
  func badConfigurationExitsWithCode2NamingTheVariable(arguments: [String], variable: String, value: String)
    async throws
  {
    let mart = try ChildProcess.mart(arguments, environment: [variable: value])
    #expect(await mart.waitForExit() == 2)
    #expect(mart.standardError.contains(variable))
  }

  @Test func helpListsTheCommands() async throws {
    let mart = try ChildProcess.mart(["--help"])
    #expect(await mart.waitForExit() == 0)
    for command in ["serve", "migrate", "dev"] {
      #expect(mart.standardOutput.contains(command))
    }
  }

  @Test func withoutAutoMigrateAServiceWaitsForMartMigrate() async throws {
    try await withScratchDatabases("manual") { databases in
      let port = try freePort()
      var environment = databases
      environment["MART_AUTO_MIGRATE"] = "false"
      environment["MART_PRODUCT_PORT"] = "\(port)"
      environment["MART_DATABASE_CHECK_INTERVAL"] = "200ms"
      let serve = try ChildProcess.mart(["serve", "product"], environment: environment)
      let name = MartService.product.grpcServiceName
      #expect(await eventually { await healthStatus(port: port, service: name) == .notServing })
      // Not a wall-clock wait: the supervisor has looked at the schema three times, found the
      // migrations pending each time, and still does not serve.
      #expect(await eventually { serve.standardError.components(separatedBy: "waiting for migrations").count > 3 })
      #expect(await healthStatus(port: port, service: name) == .notServing)

      let migrate = try ChildProcess.mart(["migrate", "product"], environment: environment)
      #expect(await migrate.waitForExit() == 0, "\(migrate.standardError)")
      #expect(await eventually { await healthStatus(port: port, service: name) == .serving })
      serve.signal(SIGTERM)
      #expect(await serve.waitForExit() == 0)
      #expect(serve.standardError.contains("pending"))
    }
  }

  /// `mart serve <service>` answers Prometheus on its metrics port with the RED metrics of its
  /// RPCs (health checks among them) and what else it records through swift-metrics.
  @Test func aServiceProcessServesItsMetricsForPrometheus() async throws {
    try await withScratchDatabases("metrics") { databases in
      let port = try freePort()
      let metricsPort = try freePort()
      var environment = databases
      environment["MART_PRODUCT_PORT"] = "\(port)"
      environment["MART_PRODUCT_METRICS_PORT"] = "\(metricsPort)"
      let serve = try ChildProcess.mart(["serve", "product"], environment: environment)
      let name = MartService.product.grpcServiceName
      #expect(await eventually { await healthStatus(port: port, service: name) == .serving })
      let url = try #require(URL(string: "http://127.0.0.1:\(metricsPort)/metrics"))
      var text = ""
      let scraped = await eventually {
        guard let (data, _) = try? await URLSession.shared.data(from: url) else { return false }
        text = String(decoding: data, as: UTF8.self)
        return text.contains("mart_rpc_server_requests_total")
      }
      #expect(scraped, "\(serve.standardError.suffix(2000))")
      #expect(text.contains(#"service="grpc.health.v1.Health""#))
      #expect(text.contains(#"code="ok""#))
      #expect(text.contains("mart_rpc_server_duration_seconds"))
      serve.signal(SIGTERM)
      #expect(await serve.waitForExit() == 0)
    }
  }

  @Test func redriveRefusesWhatIsNotADeadLetterTopic() async throws {
    let redrive = try ChildProcess.mart(["events", "redrive", "mart.orders.v1"])
    #expect(await redrive.waitForExit() == 2)
    #expect(redrive.standardError.contains("not a dead-letter topic"))
  }

  @Test func migrateAllIsSafeToRunTwice() async throws {
    try await withScratchDatabases("migrate") { environment in
      let first = try ChildProcess.mart(["migrate", "all"], environment: environment)
      #expect(await first.waitForExit() == 0, "\(first.standardError)")
      #expect(first.standardOutput.contains("order: schema version 6, applied [1, 2, 3, 4, 5, 6]"))
      let second = try ChildProcess.mart(["migrate", "all"], environment: environment)
      #expect(await second.waitForExit() == 0, "\(second.standardError)")
      #expect(second.standardOutput.contains("order: schema version 6, applied []"))
    }
  }

  /// With the test broker (`KAFKA_BROKERS` from the test bed) and without it, as `make run` does.
  @Test(arguments: [true, false])
  func devStartsEveryServiceAndTheGateway(withBroker: Bool) async throws {
    try await withScratchDatabases("dev") { databases in
      var environment = databases
      if !withBroker { environment["KAFKA_BROKERS"] = "" }
      var ports: [MartService: Int] = [:]
      for service in MartService.allCases {
        let port = try freePort()
        ports[service] = port
        environment["\(service.environmentPrefix)_PORT"] = "\(port)"
      }
      let gatewayPort = try freePort()
      environment["MART_GATEWAY_PORT"] = "\(gatewayPort)"
      environment["MART_DATABASE_CHECK_INTERVAL"] = "500ms"

      let mart = try ChildProcess.mart(["dev"], environment: environment)
      for service in MartService.allCases {
        let port = try #require(ports[service])
        let serving = await eventually {
          await healthStatus(port: port, service: service.grpcServiceName) == .serving
        }
        #expect(serving, "\(service) never reported SERVING; stderr: \(mart.standardError.suffix(2000))")
      }
      let ready = await eventually { await httpStatus("http://127.0.0.1:\(gatewayPort)/readyz") == 200 }
      #expect(ready)
      #expect(await httpStatus("http://127.0.0.1:\(gatewayPort)/healthz") == 200)

      // SIGTERM drains and exits cleanly.
      mart.signal(SIGTERM)
      #expect(await mart.waitForExit() == 0, "\(mart.standardError.suffix(2000))")
      // Logs are JSON lines naming the process.
      let firstLine = try #require(mart.standardError.split(separator: "\n").first)
      let object = try JSONSerialization.jsonObject(with: Data(firstLine.utf8)) as? [String: Any]
      #expect(object?["service"] as? String == "dev")
    }
  }
}

/// Runs `body` with an environment whose `MART_<SERVICE>_DATABASE_URL`s name fresh databases.
func withScratchDatabases(
  _ label: String, _ body: ([String: String]) async throws -> Void
) async throws {
  var databases: [ScratchDatabase] = []
  do {
    var environment: [String: String] = [:]
    for service in MartService.allCases {
      let database = try await ScratchDatabase.create("\(label)_\(service.rawValue)")
      databases.append(database)
      let config = database.configuration
      environment["\(service.environmentPrefix)_DATABASE_URL"] =
        "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)"
    }
    try await body(environment)
  } catch {
    for database in databases { try? await database.drop() }
    throw error
  }
  for database in databases { try await database.drop() }
}

/// The HTTP status of a GET, or nil when nothing answers.
func httpStatus(_ url: String) async -> Int? {
  guard let url = URL(string: url) else { return nil }
  do {
    let (_, response) = try await URLSession.shared.data(from: url)
    return (response as? HTTPURLResponse)?.statusCode
  } catch {
    return nil
  }
}
