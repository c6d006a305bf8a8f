import Foundation
import Hummingbird
import Logging
import MartRuntime
import ServiceLifecycle

/// Settings of the edge gateway, read from the environment.
public struct GatewayConfiguration: Sendable {
  public var bindHost: String
  public var port: Int
  public var directory: ServiceDirectory

  public init(bindHost: String = "127.0.0.1", port: Int = 8000, directory: ServiceDirectory) {
    self.bindHost = bindHost
    self.port = port
    self.directory = directory
  }

  public init(environment env: EnvironmentReader) throws {
    self.init(
      bindHost: env.string("MART_BIND_HOST", default: "127.0.0.1"),
      port: try env.port("MART_GATEWAY_PORT", default: 8000),
      directory: try ServiceDirectory(environment: env))
  }
}

/// The edge gateway: the HTTP/JSON face of the mart on port 8000.
public enum Gateway {
  /// The gateway's HTTP application and the gRPC clients it needs, as lifecycle services.
  public static func makeServices(configuration: GatewayConfiguration, logger: Logger) throws -> [any Service] {
    let upstreams = try ServiceClients(directory: configuration.directory)
    let router = Router()
    // Liveness: the process answers.
    router.get("/healthz") { _, _ in
      ["status": "ok"]
    }
    // Readiness: every upstream service reports SERVING on grpc.health.v1.
    router.get("/readyz") { _, _ -> Response in
      let statuses = await withTaskGroup(of: (MartService, HealthStatus).self) { group in
        for service in MartService.allCases {
          group.addTask { (service, await upstreams.health(of: service)) }
        }
        return await group.reduce(into: [MartService: HealthStatus]()) { $0[$1.0] = $1.1 }
      }
      let ready = statuses.values.allSatisfy { $0 == .serving }
      let body = ReadinessReport(
        status: ready ? "ready" : "not ready",
        services: Dictionary(
          uniqueKeysWithValues: statuses.map { ($0.key.rawValue, $0.value == .serving ? "SERVING" : "NOT_SERVING") }))
      return try Response.json(body, status: ready ? .ok : .serviceUnavailable)
    }
    let app = Application(
      router: router,
      configuration: .init(address: .hostname(configuration.bindHost, port: configuration.port)),
      logger: logger)
    return [upstreams, app]
  }
}

struct ReadinessReport: Codable, Sendable {
  var status: String
  var services: [String: String]
}

extension Response {
  static func json(_ value: some Encodable, status: HTTPResponse.Status) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(
      status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(data: try encoder.encode(value))))
  }
}
