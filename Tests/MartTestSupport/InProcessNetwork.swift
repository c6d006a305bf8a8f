import GRPCCore
import GRPCInProcessTransport
import MartRuntime
import Synchronization

/// An in-process server transport that any number of clients connect to.
///
/// `InProcessTransport` pairs one server with one client, and a `GRPCClient` runs its transport
/// only once; a service under test is called by the test and by other services' clients, each a
/// client of its own. So every `makeClient()` makes a new pair, whose server side this serves.
public final class InProcessServer: ServerTransport {
  public typealias Bytes = [UInt8]

  private struct State {
    var servers: [InProcessTransport.Server] = []
    var shutDown = false
  }

  private let state = Mutex(State())
  private let accepted: AsyncStream<InProcessTransport.Server>
  private let accept: AsyncStream<InProcessTransport.Server>.Continuation

  public init() {
    (accepted, accept) = AsyncStream.makeStream()
  }

  /// A client of this server. Calls made before the server listens wait for it; calls made after
  /// it has shut down fail.
  public func makeClient() -> InProcessTransport.Client {
    let pair = InProcessTransport()
    let open = state.withLock { state in
      if !state.shutDown { state.servers.append(pair.server) }
      return !state.shutDown
    }
    if open {
      accept.yield(pair.server)
    } else {
      pair.server.beginGracefulShutdown()
    }
    return pair.client
  }

  public func listen(
    streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void
  ) async throws {
    try await withThrowingDiscardingTaskGroup { group in
      for await server in accepted {
        group.addTask { try await server.listen(streamHandler: streamHandler) }
      }
    }
  }

  public func beginGracefulShutdown() {
    let servers = state.withLock { state in
      state.shutDown = true
      return state.servers
    }
    accept.finish()
    for server in servers { server.beginGracefulShutdown() }
  }
}

/// The in-process servers of the mart's services in one test, so that hosts call one another,
/// and the test calls them, without ports.
public final class InProcessNetwork: Sendable {
  private let servers = Mutex<[MartService: InProcessServer]>([:])

  public init() {}

  /// The server transport to host `service` on.
  public func server(_ service: MartService) -> InProcessServer {
    servers.withLock { servers in
      if let server = servers[service] { return server }
      let server = InProcessServer()
      servers[service] = server
      return server
    }
  }

  /// A client transport to `service`. Its calls wait until a host serves `service` (or for their
  /// deadline), as calls to a service that is still starting would.
  public func client(_ service: MartService) -> InProcessTransport.Client {
    server(service).makeClient()
  }
}

extension HealthStatusBoard {
  /// Waits until `service` ("" for the whole server) is SERVING. False when the server stops
  /// first, or after `limit`: a host that never comes up fails its test rather than hanging it.
  public func waitUntilServing(_ service: String = "", limit: Duration = .seconds(60)) async -> Bool {
    await waitFor(.serving, service: service, limit: limit)
  }

  /// Waits until `service` has `status`; false when the watch ends first or after `limit`.
  public func waitFor(_ status: HealthStatus, service: String = "", limit: Duration = .seconds(60)) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
      group.addTask {
        for await current in self.watch(service) where current == status { return true }
        return false
      }
      group.addTask {
        try? await Task.sleep(for: limit)
        return false
      }
      let first = await group.next() ?? false
      group.cancelAll()
      return first
    }
  }
}
