import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import ServiceLifecycle
import Synchronization
import Testing

/// What a fatal error in one of a host's background services does to the process.
@Suite struct ServiceLifecycleTests {
  struct SweeperFailed: Error {}

  /// A background service that fails when told to.
  struct FailingService: Service {
    let fail: AsyncStream<Void>

    func run() async throws {
      for await _ in fail { throw SweeperFailed() }
    }
  }

  /// GetJwks, answered only when the test says so, with a key id that says who answered.
  struct HeldJwks: RegistrableRPCService {
    let entered: AsyncStream<Void>.Continuation
    let release: AsyncStream<Void>

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
      let entered = self.entered
      let release = self.release
      router.registerHandler(
        forMethod: Mart_User_V1_UserService.Method.GetJwks.descriptor,
        deserializer: ProtobufDeserializer<Mart_User_V1_GetJwksRequest>(),
        serializer: ProtobufSerializer<Mart_User_V1_JsonWebKeySet>()
      ) { request, _ in
        for try await _ in request.messages {}
        entered.yield()
        for await _ in release { break }
        // Cancelled rather than released: the call was cut off, not drained.
        try Task.checkCancellation()
        return StreamingServerResponse(single: ServerResponse(message: .with { $0.keys = [.with { $0.kid = "held" }] }))
      }
    }
  }

  // Over HTTP/2, the production transport: its drain lets the calls in flight finish (the
  // in-process server cancels them as it shuts down).
  @Test func aFailingBackgroundServiceDrainsTheProcessAndTheCallInFlightFinishes() async throws {
    let (entered, enter) = AsyncStream.makeStream(of: Void.self)
    let (release, releaseHandler) = AsyncStream.makeStream(of: Void.self)
    let (failures, fail) = AsyncStream.makeStream(of: Void.self)
    let definition = ServiceDefinition(
      service: .inventory,
      migrations: [Migration(version: 1, name: "t", sql: "CREATE TABLE t (id int);"), .eventTables(version: 2)],
      makeRPCServices: { _ in [HeldJwks(entered: enter, release: release)] },
      makeBackgroundServices: { _ in [FailingService(fail: failures)] })
    try await ScratchDatabase.with("lifecycle") { database in
      let host = try ServiceHost(
        definition: definition,
        configuration: ServiceConfiguration(service: .inventory, port: 0, database: database.configuration),
        directory: ServiceDirectory(endpoints: [:]), auth: .ephemeral(), transport: InProcessEventTransport(),
        logger: TestBed.logger)
      let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(services: host.lifecycleServices, logger: TestBed.logger))
      let running = Task { try await group.run() }
      try #require(await host.health.waitUntilServing())
      let port = try #require(try await host.server.listeningAddress?.ipv4?.port)

      try await withGRPCClient(
        transport: try HTTP2ClientTransport.Posix.mart(Endpoint(host: "127.0.0.1", port: port))
      ) { grpc in
        let call = Task { try await Mart_User_V1_UserService.Client(wrapping: grpc).getJwks(.init()) }
        var calls = entered.makeAsyncIterator()
        await calls.next()

        // The sweeper fails while the call is in flight: the drain starts with the gRPC server,
        // which first says NOT_SERVING.
        fail.yield()
        // (Bounded: with the group cancelled instead, nothing would ever say so.)
        try #require(await host.health.waitFor(.notServing))

        releaseHandler.yield()
        let answer = try await call.value
        #expect(answer.keys.map(\.kid) == ["held"])
      }
      // The group has drained every service and says why it stopped.
      await #expect(throws: SweeperFailed.self) { try await running.value }
    }
  }
}
