import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import PostgresNIO
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
  import Glibc
#endif

/// What one service library gives the runtime: its name, its schema, its gRPC handlers and its
/// event consumers. Every service is described this way, so every service process is assembled
/// the same way.
public struct ServiceDefinition: Sendable {
  public var service: MartService
  public var migrations: [Migration]
  /// The service's gRPC handlers, given its database and context.
  public var makeRPCServices: @Sendable (ServiceContext) throws -> [any RegistrableRPCService]
  /// The service's event consumers, given its database and context.
  public var makeConsumers: @Sendable (ServiceContext) throws -> [EventConsumerDefinition]
  /// Where the keys that verify user tokens come from. Nil (every service but the user service):
  /// the user service's JWKS, fetched over gRPC and cached.
  public var makeUserKeyProvider: (@Sendable (ServiceContext) -> any VerificationKeyProvider)?
  /// Work the service does on its own schedule (sweepers), started once the database is migrated
  /// and stopped with the service.
  public var makeBackgroundServices: @Sendable (ServiceContext) throws -> [any Service]

  public init(
    service: MartService, migrations: [Migration],
    makeRPCServices: @escaping @Sendable (ServiceContext) throws -> [any RegistrableRPCService],
    makeConsumers: @escaping @Sendable (ServiceContext) throws -> [EventConsumerDefinition] = { _ in [] },
    makeUserKeyProvider: (@Sendable (ServiceContext) -> any VerificationKeyProvider)? = nil,
    makeBackgroundServices: @escaping @Sendable (ServiceContext) throws -> [any Service] = { _ in [] }
  ) {
    self.service = service
    self.migrations = migrations
    self.makeRPCServices = makeRPCServices
    self.makeConsumers = makeConsumers
    self.makeUserKeyProvider = makeUserKeyProvider
    self.makeBackgroundServices = makeBackgroundServices
  }
}

/// What a service's handlers may use.
public struct ServiceContext: Sendable {
  public var configuration: ServiceConfiguration
  public var database: PostgresClient
  /// Appends this service's events to its outbox, inside the caller's transaction.
  public var outbox: Outbox
  public var logger: Logger
  /// Token settings (issuer, audience, the service key).
  public var auth: AuthConfiguration
  /// gRPC clients of the other services; calls carry the user's token or a service token.
  public var clients: any UpstreamClients
}

/// One running service: its database pool, its database supervisor, its outbox relay, its event
/// consumers and its gRPC server, as ServiceLifecycle services in start order (they shut down in
/// reverse: the gRPC server drains first, the database pool closes last).
///
/// Generic over the server transport: HTTP/2 in production (`init(definition:configuration:
/// directory:…)`), in-process in tests whose subject is not the network.
public struct ServiceHost<Transport: ServerTransport>: Sendable {
  public let definition: ServiceDefinition
  public let configuration: ServiceConfiguration
  public let health: HealthStatusBoard
  public let database: PostgresClient
  public let server: GRPCServer<Transport>
  /// The host's services in start order, each with what its end does to the process. Any of them
  /// but the database pool failing drains the process gracefully, so that the calls in flight
  /// finish; the pool failing cancels it, since nothing can finish without the pool.
  public let lifecycleServices: [ServiceGroupConfiguration.ServiceConfiguration]

  /// A host serving on `serverTransport`, calling the other services over the client transports
  /// `upstream` makes for them.
  public init<Upstream: ClientTransport>(
    definition: ServiceDefinition, configuration: ServiceConfiguration, serverTransport: Transport,
    upstream: (MartService) throws -> Upstream, auth: AuthConfiguration, transport: any EventTransport,
    retryPolicy: MartCore.RetryPolicy = MartCore.RetryPolicy(), logger baseLogger: Logger? = nil
  ) throws {
    var logger = baseLogger ?? Logger(label: "mart.\(definition.service.rawValue)")
    logger[metadataKey: "component"] = .string(definition.service.rawValue)
    let database = try configuration.database.makeClient(logger: logger)
    let health = HealthStatusBoard()
    let serviceName = definition.service.grpcServiceName
    // Registered but not serving until the database is reachable and migrated.
    health.setStatus(.notServing, for: "")
    health.setStatus(.notServing, for: serviceName)

    let clients = try ServiceClients(
      interceptors: [
        ClientAuthInterceptor(serviceTokens: ServiceTokenIssuer(.service(definition.service), configuration: auth))
      ], connect: upstream)
    let context = ServiceContext(
      configuration: configuration, database: database, outbox: Outbox(service: definition.service),
      logger: logger, auth: auth, clients: clients)
    let userKeys = definition.makeUserKeyProvider?(context) ?? JWKSKeyProvider.userService(clients)
    let verifier = TokenVerifier(configuration: auth, userKeys: userKeys, service: definition.service)
    // The relay, the consumers and the RPCs need the migrated schema: they wait for, or are
    // refused by, this.
    let ready = ReadinessGate()
    let supervisor = DatabaseSupervisor(
      client: database,
      migrations: try MigrationRunner(migrations: definition.migrations, logger: logger),
      autoMigrate: configuration.autoMigrate,
      checkInterval: configuration.databaseCheckInterval,
      queryTimeout: configuration.databaseCheckTimeout,
      // A probe gets at least half a second: a connection and `SELECT 1` on a healthy database
      // take milliseconds, but a very short wait must not make a busy one count as gone.
      probe: DatabaseProbe(
        configuration: try configuration.database.connectionConfiguration(),
        limit: max(configuration.databaseWait, .milliseconds(500)), logger: logger),
      logger: logger
    ) { healthy in
      ready.set(open: healthy)
      let status: HealthStatus = healthy ? .serving : .notServing
      health.setStatus(status, for: "")
      health.setStatus(status, for: serviceName)
    }
    let server = GRPCServer(
      transport: serverTransport,
      services: [HealthService(board: health)] + (try definition.makeRPCServices(context)),
      interceptors: [
        RPCCancellationInterceptor(), RequestContextInterceptor(), RPCMetricsInterceptor(),
        StatusMappingInterceptor(logger: logger),
        ReadinessInterceptor(
          gate: ready, wait: configuration.databaseWait, confirmReachable: { await supervisor.confirmReachable() }),
        AdmissionInterceptor(limiter: AdmissionLimiter(configuration.admission)),
        ServerAuthInterceptor(verifier: verifier),
      ])

    self.definition = definition
    self.configuration = configuration
    self.health = health
    self.database = database
    self.server = server
    let relay = OutboxRelay(
      service: definition.service, database: database, transport: transport, logger: logger)
    let consumers = try definition.makeConsumers(context).map {
      EventConsumer(
        definition: $0, service: definition.service, database: database, transport: transport, retry: retryPolicy,
        logger: logger)
    }
    let background = try definition.makeBackgroundServices(context)
    // Opens when the drain begins (the gRPC server drains first).
    let draining = ReadinessGate()
    let grpcServer = GRPCServerService(server: server) {
      // Tell load balancers first, then stop accepting calls.
      health.setStatus(.notServing, for: "")
      health.setStatus(.notServing, for: serviceName)
      health.finishWatchers()
      draining.set(open: true)
    }
    func drainingOnFailure(_ name: String, _ service: any Service) -> ServiceGroupConfiguration.ServiceConfiguration {
      .init(
        service: LoggingFailure(name: name, wrapped: service, logger: logger),
        failureTerminationBehavior: .gracefullyShutdownGroup)
    }
    self.lifecycleServices =
      [
        .init(
          service: LoggingFailure(
            name: "database pool",
            wrapped: DatabasePoolService(
              client: database, draining: draining, interval: configuration.databaseWait, logger: logger,
              reachable: { await supervisor.confirmReachable() }),
            logger: logger)),
        drainingOnFailure("service clients", clients),
        drainingOnFailure("database supervisor", supervisor),
        drainingOnFailure("outbox relay", AfterGate(ready, relay)),
      ]
      + consumers.map { drainingOnFailure("consumer \($0.group)", AfterGate(ready, $0)) }
      + background.map { drainingOnFailure("\(type(of: $0))", AfterGate(ready, $0)) }
      + [drainingOnFailure("gRPC server", grpcServer)]
  }
}

extension ServiceHost where Transport == HTTP2ServerTransport.Posix {
  /// The production host: plaintext HTTP/2 on the configured host and port, calling the other
  /// services at their addresses in `directory`.
  public init(
    definition: ServiceDefinition, configuration: ServiceConfiguration, directory: ServiceDirectory,
    auth: AuthConfiguration, transport: any EventTransport, retryPolicy: MartCore.RetryPolicy = MartCore.RetryPolicy(),
    logger: Logger? = nil
  ) throws {
    try self.init(
      definition: definition, configuration: configuration,
      serverTransport: .mart(host: configuration.bindHost, port: configuration.port),
      upstream: { try HTTP2ClientTransport.Posix.mart(directory[$0]) }, auth: auth, transport: transport,
      retryPolicy: retryPolicy, logger: logger)
  }
}

/// Runs the database pool; and, once the process or the host drains, closes it early if the database does not
/// answer.
///
/// The pool is the last service to stop, so that the calls, the relay and the consumers can finish
/// their work during the drain. But with the database gone they cannot: a query on a connection
/// whose server hangs ignores cancellation, and a call waiting for a connection waits while the
/// pool retries. So they held the drain (the gRPC server's in-flight calls first) until its 30 s
/// limit cancelled the group and the pool's shutdown at last failed them. Now, from the start of
/// the drain, the database is checked every `interval` (`confirmReachable`); if it is gone the
/// pool is shut down at once, its connections closed, and everything waiting on it fails and
/// ends (UNAVAILABLE for a call), so the drain goes on.
struct DatabasePoolService: Service {
  let client: PostgresClient
  let draining: ReadinessGate
  let interval: Duration
  let logger: Logger
  let reachable: @Sendable () async -> Bool

  func run() async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await client.run() }
      group.addTask {
        // Returns when the database is found gone during the drain; cancelled otherwise.
        await withTaskGroup(of: Void.self) { started in
          started.addTask { try? await draining.waitUntilOpen() }
          started.addTask { try? await ProcessDrain.started.waitUntilOpen() }
          await started.next()
          started.cancelAll()
        }
        while !Task.isCancelled {
          if await !reachable() {
            logger.warning("draining with the database unavailable: closing its connections now")
            return
          }
          try? await Task.sleep(for: max(interval, .milliseconds(100)))
        }
      }
      await group.next()
      group.cancelAll()
    }
    // Closed early: stay until the drain reaches the pool, which a service ending before its
    // turn would turn into cancelling the group.
    try? await gracefulShutdown()
  }
}

/// Starts `service` once the gate first opens.
struct AfterGate: Service {
  let gate: ReadinessGate
  let wrapped: any Service

  init(_ gate: ReadinessGate, _ wrapped: any Service) {
    self.gate = gate
    self.wrapped = wrapped
  }

  func run() async throws {
    do {
      try await cancelWhenGracefulShutdown { try await gate.waitUntilOpen() }
    } catch is CancellationError {
      return
    }
    try await wrapped.run()
  }
}

/// Logs the error a service fails with at error level: ServiceGroup logs it at debug level only,
/// and the drain it starts would otherwise look like an unexplained shutdown.
struct LoggingFailure: Service, CustomStringConvertible {
  let name: String
  let wrapped: any Service
  let logger: Logger

  var description: String { name }

  func run() async throws {
    do {
      try await wrapped.run()
    } catch {
      // Cancellation is how the group stops a service, not a failure of it.
      if !(error is CancellationError) {
        logger.error("\(name) failed; stopping the process", metadata: ["error": "\(String(reflecting: error))"])
      }
      throw error
    }
  }
}

/// Runs services until SIGTERM or SIGINT, then shuts them down gracefully (last started, first
/// stopped). A service configured with `.gracefullyShutdownGroup` that fails starts the same drain,
/// and its error is rethrown once the drain is over.
///
/// A second SIGTERM or SIGINT during the drain stops the process at once: the group is cancelled
/// and, should something ignore cancellation, the process exits `hardStopAfter` later anyway
/// (ServiceGroup itself cannot do this: a signal is either a drain or a cancellation for it, and
/// after the first it no longer listens for drain signals, while still trapping them).
public func runUntilSignalled(
  _ services: [ServiceGroupConfiguration.ServiceConfiguration], logger: Logger,
  hardStopAfter: Duration = .seconds(1)
) async throws {
  var configuration = ServiceGroupConfiguration(services: services, logger: logger)
  // A drain that has not finished in 30 s becomes cancellation: a process asked to stop must
  // stop (orchestrators kill it soon after anyway), and the group's log says what was stuck.
  configuration.maximumGracefulShutdownDuration = .seconds(30)
  let group = ServiceGroup(configuration: configuration)
  let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
  enum Outcome { case finished, stopNow(UnixSignal) }
  try await withThrowingTaskGroup(of: Outcome.self) { tasks in
    tasks.addTask {
      try await group.run()
      return .finished
    }
    tasks.addTask {
      var draining = false
      for await signal in signals {
        if draining { return .stopNow(signal) }
        draining = true
        logger.info("\(signal) received: draining (send it again to stop at once)")
        ProcessDrain.started.set(open: true)
        await group.triggerGracefulShutdown()
      }
      return .finished
    }
    guard case .some(.stopNow(let signal)) = try await tasks.next() else {
      tasks.cancelAll()
      return
    }
    logger.warning("\(signal) received again: stopping now, without finishing the drain")
    tasks.cancelAll()
    let hardStop = Task {
      try await Task.sleep(for: hardStopAfter)
      logger.error("still running \(hardStopAfter) after cancellation; exiting")
      exit(EXIT_FAILURE)
    }
    defer { hardStop.cancel() }
    _ = try? await tasks.next()
    throw StoppedBySignal(signal: "\(signal)")
  }
}

/// Whether the process has begun to drain (told to stop by a signal). In `mart dev` the gateway
/// drains before any service's gRPC server, and its calls wait for those services: their pools
/// must stop waiting for a database that is gone from the first signal on, not from their turn.
enum ProcessDrain {
  static let started = ReadinessGate()
}

/// The process was told twice to stop and did not finish its drain.
public struct StoppedBySignal: Error, CustomStringConvertible {
  public var signal: String
  public var description: String { "stopped by a second \(signal) before the drain finished" }
}

/// Keeps callers from waiting on a database that is gone.
///
/// - While the database is not reachable and migrated (starting, or NOT_SERVING after an outage
///   was seen) a call is refused at once with UNAVAILABLE and a RetryInfo (`APIStatus.
///   databaseUnavailable`; the gateway answers 503 with `Retry-After`), instead of failing on a
///   missing table as INTERNAL or queueing for a connection that will not come. The server
///   listens from the start, so that health checks see NOT_SERVING rather than nothing; health
///   checks themselves always pass.
/// - A call that is still running after `wait` makes the service check its database
///   (`confirmReachable`, on a connection of its own, shared by concurrent calls). If it is gone,
///   the call is cancelled and answered the same way, and the service turns NOT_SERVING, so that
///   the calls after it are refused at once. A call that is merely slow, on a database that
///   answers, goes on (and is checked again after each further `wait`).
///
/// Covers what a handler does before it returns its response, which is all of a unary call; a
/// streaming response's producer runs later and is not watched.
struct ReadinessInterceptor: ServerInterceptor {
  let gate: ReadinessGate
  let wait: Duration
  let confirmReachable: @Sendable () async -> Bool

  init(
    gate: ReadinessGate, wait: Duration = .seconds(1),
    confirmReachable: @escaping @Sendable () async -> Bool = { true }
  ) {
    self.gate = gate
    self.wait = wait
    self.confirmReachable = confirmReachable
  }

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    if context.descriptor.service.fullyQualifiedService == "grpc.health.v1.Health" {
      return try await next(request, context)
    }
    guard gate.isOpen else { throw RPCError(APIStatus.databaseUnavailable) }
    let (gate, wait, confirmReachable) = (gate, wait, confirmReachable)
    return try await withoutActuallyEscaping(next) { next in
      // The group waits for both children before it returns, so `next` does not outlive this
      // call; it runs in a child task, which inherits the call's task-local values.
      let call = CallInChildTask(run: next)
      return try await withThrowingTaskGroup(of: StreamingServerResponse<Output>?.self) { group in
        group.addTask { try await call.run(request, context) }
        group.addTask {
          // Returns (nil) only when the database is found gone; cancelled when the call ends.
          while true {
            try await Task.sleep(for: wait)
            if !gate.isOpen { return nil }
            if await !confirmReachable() { return nil }
          }
        }
        let first = try await group.next()
        group.cancelAll()
        guard case .some(.some(let response)) = first else { throw RPCError(APIStatus.databaseUnavailable) }
        return response
      }
    }
  }
}

/// The interceptor's `next`, run in a child task of a group that does not outlive it.
private struct CallInChildTask<Input: Sendable, Output: Sendable>: @unchecked Sendable {
  // @unchecked: the closure is called once, from one child task, while the interceptor's call
  // (which owns it) waits for that task; nothing else touches it.
  let run: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
}
