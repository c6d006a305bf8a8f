import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import MartRuntime

/// User and service tokens for tests of a service without the user service: the service under
/// test verifies user tokens against this static key (`withTestKeys` replaces its definition's
/// `makeUserKeyProvider`), and service tokens with `auth`'s service key.
public struct TestUsers: Sendable {
  public let auth = AuthConfiguration.ephemeral()
  public let key: TokenSigningKey

  public struct NoKey: Error {}

  public init() throws {
    guard let random = AuthConfiguration.ephemeral().serviceKey else { throw NoKey() }
    key = TokenSigningKey(kid: "test-users", privateKey: random.privateKey)
  }

  public var keyProvider: StaticKeyProvider { StaticKeyProvider([key.kid: key.privateKey.publicKey]) }

  /// `definition`, verifying user tokens against the test key.
  public func withTestKeys(_ definition: ServiceDefinition) -> ServiceDefinition {
    var definition = definition
    let keys = keyProvider
    definition.makeUserKeyProvider = { _ in keys }
    return definition
  }

  /// An access token for a user with `roles`, valid for an hour.
  public func token(roles: [String], subject: UUID = UUID()) throws -> String {
    let now = Int64(Date().timeIntervalSince1970)
    return try key.sign(
      AccessTokenClaims(
        sub: subject.uuidString.lowercased(), roles: roles, iss: auth.issuer, aud: auth.audience, iat: now,
        exp: now + 3600))
  }

  public func bearer(roles: [String], subject: UUID = UUID()) throws -> Metadata {
    ["authorization": "Bearer \(try token(roles: roles, subject: subject))"]
  }

  /// The metadata of a call from another service (`service`).
  public func serviceBearer(_ service: MartService) async throws -> Metadata {
    guard let issuer = ServiceTokenIssuer(service: service, configuration: auth) else { throw NoKey() }
    return ["authorization": "Bearer \(try await issuer.token())"]
  }
}

/// A service host that did not come up.
public struct HostNotServing: Error, CustomStringConvertible {
  public var description: String
}

/// Starts `definition` in-process with `configuration` (port 0: any free port), waits until it
/// serves, and runs `body` with the host and a gRPC client connected to it. Event consumers
/// retry quickly (`retryPolicy`), so that a test of a failing handler does not wait long.
public func withHost(
  _ definition: ServiceDefinition, configuration: ServiceConfiguration, auth: AuthConfiguration,
  transport: any EventTransport = InProcessEventTransport(),
  retryPolicy: MartRuntime.RetryPolicy = MartRuntime.RetryPolicy(
    maximumAttempts: 3, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100)),
  _ body: (ServiceHost, GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
) async throws {
  let host = try ServiceHost(
    definition: definition, configuration: configuration, directory: ServiceDirectory(endpoints: [:]), auth: auth,
    transport: transport, retryPolicy: retryPolicy, logger: TestBed.logger)
  let service = definition.service.rawValue
  try await withServices(host.lifecycleServices) {
    guard let address = try await host.server.listeningAddress?.ipv4 else {
      throw HostNotServing(description: "the \(service) service's gRPC server has no IPv4 address")
    }
    let serving = await eventually { await healthStatus(port: address.port, service: "") == .serving }
    guard serving else { throw HostNotServing(description: "the \(service) service never became SERVING") }
    try await withGRPCClient(
      transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: address.port), transportSecurity: .plaintext)
    ) { client in
      try await body(host, client)
    }
  }
}

/// `withHost` for `service` on `database`, with `users`' token settings and test key.
public func withHost(
  _ definition: ServiceDefinition, service: MartService, database: ScratchDatabase, users: TestUsers,
  transport: any EventTransport = InProcessEventTransport(),
  _ body: (ServiceHost, GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
) async throws {
  try await withHost(
    users.withTestKeys(definition),
    configuration: ServiceConfiguration(service: service, port: 0, database: database.configuration),
    auth: users.auth, transport: transport, body)
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
