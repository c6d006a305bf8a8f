import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MartProto
import ServiceLifecycle

/// One long-lived gRPC client per service of the mart, for the gateway and for calls between
/// services. Connections are made lazily and kept; run it as a ServiceLifecycle service.
public struct ServiceClients: Service {
  public let clients: [MartService: GRPCClient<HTTP2ClientTransport.Posix>]

  public init(directory: ServiceDirectory, services: [MartService] = MartService.allCases) throws {
    var clients: [MartService: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
    for service in services {
      let endpoint = directory[service]
      let target: any ResolvableTarget =
        endpoint.host.contains(":")
        ? .ipv6(address: endpoint.host, port: endpoint.port) : .dns(host: endpoint.host, port: endpoint.port)
      clients[service] = GRPCClient(
        transport: try .http2NIOPosix(target: target, transportSecurity: .plaintext))
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
