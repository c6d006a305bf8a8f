import ArgumentParser
import AsyncHTTPClient
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Gateway
import MartProto
import MartRuntime
import NIOCore

/// `mart health <component>`: the container healthcheck. A service is healthy when its own
/// `grpc.health.v1` answers SERVING for it; the gateway when `/readyz` answers 200. Exit 0 when
/// healthy, 1 when not. It asks the process on this host, at the port its configuration says, so
/// that an image needs no curl or grpc_health_probe, and the check reads the same variables as
/// the process it checks.
struct Health: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Exit 0 if the service (or the gateway) on this host is ready, 1 if not (a healthcheck).")

  @Argument(help: "What to check: \(Component.allCases.map(\.rawValue).joined(separator: ", ")).")
  var component: Component

  @Option(help: "How long to wait for the answer, in seconds.")
  var timeout: Int = 3

  func run() async throws {
    let environment = EnvironmentReader()
    let healthy: Bool
    let detail: String
    if let service = component.service {
      let port = try loadConfiguration {
        try environment.port("\(service.environmentPrefix)_PORT", default: service.defaultPort)
      }
      let status = await Self.grpcHealth(port: port, service: service, timeout: .seconds(timeout))
      healthy = status == .serving
      detail = status.map { "\($0)" } ?? "no answer"
    } else {
      let port = try loadConfiguration { try environment.port("MART_GATEWAY_PORT", default: 8000) }
      let status = await Self.httpStatus(url: "http://127.0.0.1:\(port)/readyz", timeout: .seconds(Int64(timeout)))
      healthy = status == 200
      detail = status.map { "HTTP \($0)" } ?? "no answer"
    }
    print("\(component.rawValue): \(healthy ? "ready" : "not ready") (\(detail))")
    if !healthy { throw ExitCode.failure }
  }

  static func grpcHealth(port: Int, service: MartService, timeout: Duration) async -> HealthStatus? {
    do {
      return try await withGRPCClient(
        transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
      ) { client in
        var options = CallOptions.defaults
        options.timeout = timeout
        return try await Grpc_Health_V1_Health.Client(wrapping: client).check(
          .with { $0.service = service.grpcServiceName }, options: options
        ).status
      }
    } catch {
      return nil
    }
  }

  static func httpStatus(url: String, timeout: TimeAmount) async -> UInt? {
    do {
      let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: timeout)
      return response.status.code
    } catch {
      return nil
    }
  }
}
