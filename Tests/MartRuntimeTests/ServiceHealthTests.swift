import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import ServiceLifecycle
import Synchronization
import Testing

@Suite struct ServiceHealthTests {
  /// A service with one migration and no RPCs: the runtime alone.
  static let definition = ServiceDefinition(
    service: .inventory,
    migrations: [Migration(version: 1, name: "t", sql: "CREATE TABLE t (id int);"), .eventTables(version: 2)],
    makeRPCServices: { _ in [] })

  @Test func servingAfterMigrationNotServingWhileTheDatabaseIsGone() async throws {
    try await ScratchDatabase.with("health") { database in
      try await Self.serving(database, checkInterval: .milliseconds(200)) { _, address in
        let name = MartService.inventory.grpcServiceName
        func status() async -> HealthStatus? { await healthStatus(port: address.port, service: name) }

        #expect(await eventually { await status() == .serving })
        #expect(await healthStatus(port: address.port, service: "") == .serving)
        #expect(await healthStatus(port: address.port, service: "no.such.Service") == nil)

        // The database goes away (connections are cut): the service says so, and does not crash.
        try await database.drop()
        #expect(await eventually { await status() == .notServing })

        // It comes back, empty: the service migrates it again and serves.
        try await database.recreate()
        #expect(await eventually { await status() == .serving })
      }
    }
  }

  /// Runs the runtime-only host on `database` over HTTP/2 while `body` runs, then drains it.
  static func serving(
    _ database: ScratchDatabase, checkInterval: Duration = .seconds(5),
    _ body: (ServiceHost<HTTP2ServerTransport.Posix>, SocketAddress.IPv4) async throws -> Void
  ) async throws {
    let configuration = ServiceConfiguration(
      service: .inventory, port: 0, database: database.configuration, databaseCheckInterval: checkInterval)
    let host = try ServiceHost(
      definition: definition, configuration: configuration,
      directory: ServiceDirectory(endpoints: [:]), auth: .ephemeral(), transport: InProcessEventTransport(),
      logger: TestBed.logger)
    let group = ServiceGroup(
      configuration: ServiceGroupConfiguration(services: host.lifecycleServices, logger: TestBed.logger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask { try await group.run() }
      do {
        try await body(host, try #require(try await host.server.listeningAddress?.ipv4))
      } catch {
        await group.triggerGracefulShutdown()
        throw error
      }
      await group.triggerGracefulShutdown()
      try await tasks.waitForAll()
    }
  }

  /// grpc-swift reports a cancelled RPC (caller gone, deadline passed) through the call's
  /// context, not by cancelling the task that serves it. A server stream must end all the same:
  /// before `RPCCancellationInterceptor`, both watches here stayed registered on the server.
  @Test func aStreamWhoseCallerLeftOrTimedOutEndsOnTheServer() async throws {
    try await ScratchDatabase.with("health_watch") { database in
      try await Self.serving(database) { host, address in
        #expect(await eventually { await healthStatus(port: address.port, service: "") == .serving })
        try await withGRPCClient(
          transport: .http2NIOPosix(
            target: .ipv4(address: "127.0.0.1", port: address.port), transportSecurity: .plaintext)
        ) { client in
          let health = Grpc_Health_V1_Health.Client(wrapping: client)

          // The caller goes away after the first status.
          let (firstStatus, received) = AsyncStream.makeStream(of: Void.self)
          let watching = Task {
            try await health.watch(.with { $0.service = "" }) { response in
              for try await _ in response.messages { received.yield() }
            }
          }
          var statuses = firstStatus.makeAsyncIterator()
          _ = await statuses.next()
          #expect(host.health.watcherCount == 1)
          watching.cancel()
          #expect(await eventually { host.health.watcherCount == 0 })

          // The caller's deadline passes while the stream is open.
          var options = CallOptions.defaults
          options.timeout = .milliseconds(500)
          var code: RPCError.Code?
          do {
            try await health.watch(.with { $0.service = "" }, options: options) { response in
              for try await _ in response.messages { #expect(host.health.watcherCount == 1) }
            }
          } catch let error as RPCError {
            code = error.code
          }
          #expect(code == .deadlineExceeded)
          #expect(await eventually { host.health.watcherCount == 0 })
        }
      }
    }
  }

  /// A server closes a connection on which its client gave up on more than 200 calls in 30 s
  /// (swift-nio-http2's defence against HTTP/2 rapid reset), and with it every other stream on
  /// it: with one connection, 250 watches given up on (customers leaving once their order is
  /// paid) end the watch of someone still waiting. Spread over several connections by their load
  /// (`UpstreamConnections`, the gateway's default), the same give-ups leave it alone.
  @Test(arguments: [1, 4]) func callsGivenUpEndOtherStreamsOnlyOnAConnectionOfTheirOwn(connections: Int) async throws {
    try await ScratchDatabase.with("health_resets_\(connections)") { database in
      try await Self.serving(database) { host, address in
        #expect(await eventually { await healthStatus(port: address.port, service: "") == .serving })
        let clients = try ServiceClients(
          directory: ServiceDirectory(endpoints: [.inventory: Endpoint(host: "127.0.0.1", port: address.port)]),
          services: [.inventory], connectionsPerService: connections)
        try await withServices([clients]) {
          @Sendable func watch(_ each: @escaping @Sendable () -> Void) async throws {
            _ = try await clients.withConnection(to: .inventory) { client in
              try await Grpc_Health_V1_Health.Client(wrapping: client).watch(.with { $0.service = "" }) { response in
                for try await _ in response.messages { each() }
              }
            }
          }
          let staying = Mutex(0)
          let stayingWatch = Task { try await watch { staying.withLock { $0 += 1 } } }
          #expect(await eventually { staying.withLock { $0 } == 1 })

          for _ in 0..<250 {
            let (statuses, received) = AsyncStream.makeStream(of: Void.self)
            // Finished however the watch ends: on a closed connection it fails before a status.
            let leaving = Task {
              defer { received.finish() }
              try await watch { received.yield() }
            }
            var first = statuses.makeAsyncIterator()
            _ = await first.next()
            leaving.cancel()
            _ = await leaving.result
          }
          #expect(await eventually { host.health.watcherCount <= 1 })

          // A change of status reaches the staying watch only if its connection still stands.
          host.health.setStatus(.notServing, for: "")
          let reached = await eventually(attempts: 50) { staying.withLock { $0 } >= 2 }
          #expect(reached == (connections > 1), "with \(connections) connection(s)")
          stayingWatch.cancel()
          _ = await stayingWatch.result
        }
      }
    }
  }

  @Test func unreachableDatabaseIsRetriedNotFatal() async throws {
    let admin = try TestBed.adminDatabase()
    // A database name that does not exist yet: every attempt fails until it is created.
    let database = ScratchDatabase(configuration: admin.withDatabase("t_late_\(UInt32.random(in: 0...UInt32.max))"))
    let configuration = ServiceConfiguration(
      service: .inventory, port: 0, database: database.configuration, databaseCheckInterval: .milliseconds(200),
      databaseCheckTimeout: .milliseconds(500))
    // The supervisor's failed attempts, counted from its log: wait for two, not for time.
    let failedAttempts = Mutex(0)
    let sink = TextOutputStreamSink { line in
      if line.contains("database unavailable; retrying") { failedAttempts.withLock { $0 += 1 } }
    }
    let logger = Logger(label: "mart.test") {
      JSONLogHandler(label: $0, service: "inventory", level: .warning, stream: sink)
    }
    let host = try ServiceHost(
      definition: Self.definition, configuration: configuration, directory: ServiceDirectory(endpoints: [:]),
      auth: .ephemeral(), transport: InProcessEventTransport(), logger: logger)
    let group = ServiceGroup(
      configuration: ServiceGroupConfiguration(services: host.lifecycleServices, logger: TestBed.logger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask { try await group.run() }
      let address = try #require(try await host.server.listeningAddress?.ipv4)
      let name = MartService.inventory.grpcServiceName
      // Failed, retried and failed again: the process is still up and says NOT_SERVING.
      #expect(await eventually(attempts: 600) { failedAttempts.withLock { $0 } >= 2 })
      #expect(await healthStatus(port: address.port, service: name) == .notServing)
      try await database.recreate()
      #expect(await eventually { await healthStatus(port: address.port, service: name) == .serving })
      await group.triggerGracefulShutdown()
      try await tasks.waitForAll()
    }
    try await database.drop()
  }
}
