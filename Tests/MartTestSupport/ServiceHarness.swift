import Foundation
import GRPCCore
import GRPCInProcessTransport
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import MartRuntime
import ServiceLifecycle

/// User and service tokens for tests of a service without the user service: the service under
/// test verifies user tokens against this static key (`withTestKeys` replaces its definition's
/// `makeUserKeyProvider`), and service tokens with `auth`'s keys, one per service.
public struct TestUsers: Sendable {
  public let auth = AuthConfiguration.ephemeral()
  public let key = TokenSigningKey.random(kid: "test-users")

  public struct NoKey: Error {}

  public init() throws {}

  public var keyProvider: StaticKeyProvider { StaticKeyProvider([key.kid: key.privateKey.publicKey]) }

  /// `definition`, verifying user tokens against the test key.
  public func withTestKeys(_ definition: ServiceDefinition) -> ServiceDefinition {
    var definition = definition
    let keys = keyProvider
    definition.makeUserKeyProvider = { _ in keys }
    return definition
  }

  /// An access token for a user with `roles`, valid for an hour.
  public func token(roles: [String], subject: UUID = UUID(), emailVerified: Bool? = nil) throws -> String {
    let now = Int64(Date().timeIntervalSince1970)
    return try key.sign(
      AccessTokenClaims(
        sub: subject.uuidString.lowercased(), roles: roles, iss: auth.issuer, aud: auth.audience, iat: now,
        exp: now + 3600, emailVerified: emailVerified))
  }

  public func bearer(roles: [String], subject: UUID = UUID(), emailVerified: Bool? = nil) throws -> Metadata {
    ["authorization": "Bearer \(try token(roles: roles, subject: subject, emailVerified: emailVerified))"]
  }

  /// The metadata of a call from another service (`service`) to `target`.
  public func serviceBearer(_ service: MartService, to target: MartService) async throws -> Metadata {
    try await auth.serviceBearer(service, to: target)
  }
}

extension AuthConfiguration {
  /// The metadata of a call from `service` to `target`, signed with `service`'s key.
  public func serviceBearer(_ service: MartService, to target: MartService) async throws -> Metadata {
    guard let issuer = ServiceTokenIssuer(.service(service), configuration: self) else { throw TestUsers.NoKey() }
    return ["authorization": "Bearer \(try await issuer.token(for: target))"]
  }

  /// The metadata the gateway adds to a call to `target` for a client at `clientAddress`.
  public func fromGateway(to target: MartService, clientAddress: String) async throws -> Metadata {
    guard let issuer = ServiceTokenIssuer(.gateway, configuration: self) else { throw TestUsers.NoKey() }
    var metadata = Metadata()
    metadata.addString(try await issuer.token(for: target), forKey: ForwardedClient.tokenKey)
    metadata.addString(clientAddress, forKey: ForwardedClient.addressKey)
    return metadata
  }
}

/// A service host that did not come up.
public struct HostNotServing: Error, CustomStringConvertible {
  public var description: String
}

extension MartCore.RetryPolicy {
  /// Quick retries, so that a test of a failing event handler does not wait long.
  public static let quick = MartCore.RetryPolicy(
    maximumAttempts: 3, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100))
}

/// Starts `definition` in-process on `network`'s in-process transport, waits until it serves, and
/// runs `body` with the host and a gRPC client connected to it. No ports: the network is not what
/// these tests are about (`withHTTP2Host` is for tests that are).
public func withHost(
  _ definition: ServiceDefinition, configuration: ServiceConfiguration, auth: AuthConfiguration,
  transport: any EventTransport = InProcessEventTransport(), network: InProcessNetwork = InProcessNetwork(),
  retryPolicy: MartCore.RetryPolicy = .quick,
  _ body: (ServiceHost<InProcessServer>, GRPCClient<InProcessTransport.Client>) async throws -> Void
) async throws {
  let host = try ServiceHost(
    definition: definition, configuration: configuration, serverTransport: network.server(definition.service),
    upstream: network.client, auth: auth, transport: transport, retryPolicy: retryPolicy, logger: TestBed.logger)
  try await withServing(host, connect: { network.client(definition.service) }, body)
}

/// `withHost` over HTTP/2 on a free loopback port, for what only a network shows: the peer's
/// address, `listeningAddress`.
public func withHTTP2Host(
  _ definition: ServiceDefinition, configuration: ServiceConfiguration, auth: AuthConfiguration,
  transport: any EventTransport = InProcessEventTransport(), retryPolicy: MartCore.RetryPolicy = .quick,
  _ body: (ServiceHost<HTTP2ServerTransport.Posix>, GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
) async throws {
  let host = try ServiceHost(
    definition: definition, configuration: configuration, directory: ServiceDirectory(endpoints: [:]), auth: auth,
    transport: transport, retryPolicy: retryPolicy, logger: TestBed.logger)
  let service = definition.service.rawValue
  try await withServing(
    host,
    connect: {
      guard let address = try await host.server.listeningAddress?.ipv4 else {
        throw HostNotServing(description: "the \(service) service's gRPC server has no IPv4 address")
      }
      return try HTTP2ClientTransport.Posix.mart(Endpoint(host: "127.0.0.1", port: address.port))
    }, body)
}

/// Runs `host` while `body` runs, starting `body` once the host serves, with a client over the
/// transport `connect` makes.
private func withServing<Server: ServerTransport, Client: ClientTransport>(
  _ host: ServiceHost<Server>, connect: () async throws -> Client,
  _ body: (ServiceHost<Server>, GRPCClient<Client>) async throws -> Void
) async throws {
  let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(services: host.lifecycleServices, logger: TestBed.logger))
  try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    do {
      // The board the health service reads: SERVING once the database is migrated.
      guard await host.health.waitUntilServing() else {
        throw HostNotServing(description: "the \(host.definition.service.rawValue) service never became SERVING")
      }
      try await withGRPCClient(transport: try await connect()) { client in
        try await body(host, client)
        // The host drains while the client is still open, as in production: a stream the body
        // left open ends with the host's answer. (A client shut down first would wait for it.)
        await group.triggerGracefulShutdown()
      }
    } catch {
      await group.triggerGracefulShutdown()
      throw error
    }
    await group.triggerGracefulShutdown()
    try await tasks.waitForAll()
  }
}

/// `withHost` for `service` on `database`, with `users`' token settings and test key.
public func withHost(
  _ definition: ServiceDefinition, service: MartService, database: ScratchDatabase, users: TestUsers,
  transport: any EventTransport = InProcessEventTransport(), network: InProcessNetwork = InProcessNetwork(),
  _ body: (ServiceHost<InProcessServer>, GRPCClient<InProcessTransport.Client>) async throws -> Void
) async throws {
  try await withHost(
    users.withTestKeys(definition),
    configuration: ServiceConfiguration(service: service, port: 0, database: database.configuration),
    auth: users.auth, transport: transport, network: network, body)
}

extension RPCError {
  /// The fields a `google.rpc.BadRequest` detail names.
  public var badRequestFields: [String] {
    guard let status = try? unpackGoogleRPCStatus() else { return [] }
    return status.details.compactMap(\.badRequest).flatMap { $0.violations.map(\.field) }
  }

  /// The `google.rpc.ErrorInfo` reason, if any.
  public var reason: String? {
    guard let status = try? unpackGoogleRPCStatus() else { return nil }
    return status.details.compactMap(\.errorInfo).first?.reason
  }
}
