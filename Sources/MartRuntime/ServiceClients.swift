import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MartProto
import ServiceLifecycle

/// One long-lived gRPC client per service of the mart, for the gateway and for calls between
/// services. Connections are made lazily and kept; run it as a ServiceLifecycle service.
public struct ServiceClients: Service {
  public let clients: [MartService: GRPCClient<HTTP2ClientTransport.Posix>]

  public init(
    directory: ServiceDirectory, services: [MartService] = MartService.allCases,
    interceptors: [any ClientInterceptor] = []
  ) throws {
    var clients: [MartService: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
    for service in services {
      let endpoint = directory[service]
      let target: any ResolvableTarget =
        endpoint.host.contains(":")
        ? .ipv6(address: endpoint.host, port: endpoint.port) : .dns(host: endpoint.host, port: endpoint.port)
      clients[service] = GRPCClient(
        transport: try .http2NIOPosix(target: target, transportSecurity: .plaintext), interceptors: interceptors)
    }
    self.clients = clients
  }

  public subscript(service: MartService) -> GRPCClient<HTTP2ClientTransport.Posix> {
    guard let client = clients[service] else {
      preconditionFailure("no client configured for \(service); list it in ServiceClients(services:)")
    }
    return client
  }

  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        for client in clients.values {
          group.addTask { try await client.runConnections() }
        }
      }
    } onGracefulShutdown: {
      for client in clients.values { client.beginGracefulShutdown() }
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

extension JWKSKeyProvider {
  /// The user service's published keys (GetJwks, a public RPC), over `clients`.
  public static func userService(_ clients: ServiceClients) -> JWKSKeyProvider {
    JWKSKeyProvider {
      var options = CallOptions.defaults
      options.timeout = .seconds(3)
      let set = try await Mart_User_V1_UserService.Client(wrapping: clients[.user])
        .getJwks(Mart_User_V1_GetJwksRequest(), options: options)
      return set.keys.map {
        JSONWebKeyValue(kty: $0.kty, use: $0.use, kid: $0.kid, alg: $0.alg, crv: $0.crv, x: $0.x, y: $0.y)
      }
    }
  }
}
