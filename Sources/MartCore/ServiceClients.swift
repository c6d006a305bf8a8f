import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MartProto
import ServiceLifecycle

/// Long-lived gRPC clients of the services of the mart, for the gateway and for calls between
/// services: one connection per service, or several (`connectionsPerService`) for a caller that
/// gives up on many calls, like the gateway (see `UpstreamConnections` for why). Connections are
/// made lazily and kept; run it as a ServiceLifecycle service.
///
/// Generic over the transport: HTTP/2 between processes (`init(directory:)`), an in-process
/// transport in tests whose subject is not the network.
public struct ServiceClients<Transport: ClientTransport>: Service {
  let connections: [MartService: UpstreamConnections<Transport>]

  /// The services these clients reach.
  public var services: Dictionary<MartService, UpstreamConnections<Transport>>.Keys { connections.keys }

  /// Clients for each of `services`, `connectionsPerService` of them each, over the transports
  /// `connect` makes. Every call passes on the request id and the trace
  /// (`RequestContextClientInterceptor`), then goes through `interceptors`.
  public init(
    services: [MartService] = MartService.allCases, connectionsPerService: Int = 1,
    interceptors: [any ClientInterceptor] = [], connect: (MartService) throws -> Transport
  ) rethrows {
    var connections: [MartService: UpstreamConnections<Transport>] = [:]
    for service in services {
      var clients: [GRPCClient<Transport>] = []
      for _ in 0..<max(1, connectionsPerService) {
        clients.append(
          GRPCClient(
            transport: try connect(service), interceptors: [RequestContextClientInterceptor()] + interceptors))
      }
      connections[service] = UpstreamConnections(clients)
    }
    self.connections = connections
  }

  /// A client of `service`: its least loaded connection.
  public subscript(service: MartService) -> GRPCClient<Transport> {
    guard let connections = connections[service] else {
      preconditionFailure("no client configured for \(service); list it in ServiceClients(services:)")
    }
    return connections.leastLoaded().client
  }

  /// Runs `call` on the least loaded connection to `service`, counting it open while it runs and,
  /// if it ends given up (cancelled, its deadline passed, its handler stopped reading), as a reset
  /// on that connection: what spreads the calls of a caller that gives up on many. Nil if
  /// `service` is not one of these clients'.
  public func withConnection<Result: Sendable>(
    to service: MartService, _ call: (GRPCClient<Transport>) async throws -> Result
  ) async throws -> Result? {
    guard let member = connections[service]?.leastLoaded() else { return nil }
    member.load.opened()
    do {
      let result = try await call(member.client)
      member.load.closed(gaveUp: ConnectionLoad.gaveUp(after: nil))
      return result
    } catch {
      member.load.closed(gaveUp: ConnectionLoad.gaveUp(after: error))
      throw error
    }
  }

  /// A group can be told to shut down before it gets round to running this service (a test
  /// whose requests never needed a service ends at once): the handler then stops the clients
  /// before they run, and `runConnections` answers clientIsStopped. That is a clean stop, not a
  /// failure of the group.
  public func run() async throws {
    guard !Task.isShuttingDownGracefully else { return }
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        for client in connections.values.flatMap(\.clients) {
          group.addTask {
            do {
              try await client.runConnections()
            } catch let error as RuntimeError where error.code == .clientIsStopped && Task.isShuttingDownGracefully {
              return
            }
          }
        }
      }
    } onGracefulShutdown: {
      for client in connections.values.flatMap(\.clients) { client.beginGracefulShutdown() }
    }
  }

  /// The service's `grpc.health.v1` status; any failure to ask counts as not serving.
  public func health(of service: MartService, timeout: Duration = .seconds(2)) async -> HealthStatus {
    let health = Grpc_Health_V1_Health.Client(wrapping: self[service])
    var options = CallOptions.defaults
    options.timeout = timeout
    do {
      let response = try await health.check(
        .with { $0.service = service.grpcServiceName }, options: options)
      return response.status
    } catch {
      return .notServing
    }
  }
}

extension ServiceClients where Transport == HTTP2ClientTransport.Posix {
  /// Plaintext HTTP/2 clients of the services at their addresses in `directory`.
  public init(
    directory: ServiceDirectory, services: [MartService] = MartService.allCases, connectionsPerService: Int = 1,
    interceptors: [any ClientInterceptor] = []
  ) throws {
    try self.init(services: services, connectionsPerService: connectionsPerService, interceptors: interceptors) {
      try .mart(directory[$0])
    }
  }
}

extension HTTP2ClientTransport.Posix {
  /// Plaintext HTTP/2 to `endpoint` (a host name is resolved by DNS).
  public static func mart(_ endpoint: Endpoint) throws -> HTTP2ClientTransport.Posix {
    let target: any ResolvableTarget =
      endpoint.host.contains(":")
      ? .ipv6(address: endpoint.host, port: endpoint.port) : .dns(host: endpoint.host, port: endpoint.port)
    return try .http2NIOPosix(target: target, transportSecurity: .plaintext)
  }
}

/// The other services as their generated client protocols, so that what a service's handlers
/// hold does not depend on the transport its host was given.
public protocol UpstreamClients: Sendable {
  var user: any Mart_User_V1_UserService.ClientProtocol { get }
  var product: any Mart_Product_V1_ProductService.ClientProtocol { get }
  var inventory: any Mart_Inventory_V1_InventoryService.ClientProtocol { get }
  var order: any Mart_Order_V1_OrderService.ClientProtocol { get }
  var payment: any Mart_Payment_V1_PaymentService.ClientProtocol { get }
  var notification: any Mart_Notification_V1_NotificationService.ClientProtocol { get }
}

extension ServiceClients: UpstreamClients {
  public var user: any Mart_User_V1_UserService.ClientProtocol {
    Mart_User_V1_UserService.Client(wrapping: self[.user])
  }
  public var product: any Mart_Product_V1_ProductService.ClientProtocol {
    Mart_Product_V1_ProductService.Client(wrapping: self[.product])
  }
  public var inventory: any Mart_Inventory_V1_InventoryService.ClientProtocol {
    Mart_Inventory_V1_InventoryService.Client(wrapping: self[.inventory])
  }
  public var order: any Mart_Order_V1_OrderService.ClientProtocol {
    Mart_Order_V1_OrderService.Client(wrapping: self[.order])
  }
  public var payment: any Mart_Payment_V1_PaymentService.ClientProtocol {
    Mart_Payment_V1_PaymentService.Client(wrapping: self[.payment])
  }
  public var notification: any Mart_Notification_V1_NotificationService.ClientProtocol {
    Mart_Notification_V1_NotificationService.Client(wrapping: self[.notification])
  }
}

extension JWKSKeyProvider {
  /// The user service's published keys (GetJwks, a public RPC), over `clients`.
  public static func userService(_ clients: any UpstreamClients) -> JWKSKeyProvider {
    JWKSKeyProvider {
      var options = CallOptions.defaults
      options.timeout = .seconds(3)
      let set = try await clients.user.getJwks(Mart_User_V1_GetJwksRequest(), options: options)
      return set.keys.map {
        JSONWebKeyValue(kty: $0.kty, use: $0.use, kid: $0.kid, alg: $0.alg, crv: $0.crv, x: $0.x, y: $0.y)
      }
    }
  }
}
