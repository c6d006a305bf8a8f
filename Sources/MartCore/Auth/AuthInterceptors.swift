import Foundation
import GRPCCore
import MartProto

/// Every service checks the caller's token itself, whatever the gateway did: a direct gRPC call
/// without a valid token gets UNAUTHENTICATED, and a token without the role the method needs gets
/// PERMISSION_DENIED. What a method needs is its `mart.api.v1.access` option in proto/, generated
/// into `MartAccessPolicies`; a method with no policy is refused, so forgetting one fails closed.
/// A service token passes only for the services the method's `mart.api.v1.callers` names
/// (`MartAccessPolicies.callersByMethod`). Ownership (a customer reading only their own data) is
/// the handlers' part, through `Caller.current`. The client address the gateway vouches for is
/// bound as `ForwardedClient.address`.
public struct ServerAuthInterceptor: ServerInterceptor {
  let verifier: TokenVerifier
  let policies: [String: Mart_Api_V1_Access]
  let callers: [String: Set<String>]

  public init(
    verifier: TokenVerifier, policies: [String: Mart_Api_V1_Access] = MartAccessPolicies.byMethod,
    callers: [String: Set<String>] = MartAccessPolicies.callersByMethod
  ) {
    self.verifier = verifier
    self.policies = policies
    self.callers = callers
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    // Health checks are for load balancers and orchestrators, which hold no tokens.
    if context.descriptor.service.fullyQualifiedService == "grpc.health.v1.Health" {
      return try await next(request, context)
    }
    let method = context.descriptor.fullyQualifiedMethod
    guard let access = policies[method] else {
      throw RPCError(code: .permissionDenied, message: "no access policy for \(method)")
    }
    let clientAddress = try await forwardedClientAddress(in: request.metadata)
    let token = Self.bearerToken(in: request.metadata)
    if access == .public && token == nil {
      return try await Self.bound(caller: nil, clientAddress: clientAddress) { try await next(request, context) }
    }
    guard let token else {
      throw RPCError(code: .unauthenticated, message: "a bearer token is required")
    }
    let caller: Caller
    do {
      caller = try await verifier.verify(token)
    } catch {
      if case .keysUnavailable = error {
        throw RPCError(code: .unavailable, message: "cannot verify tokens right now: signing keys unavailable")
      }
      throw RPCError(code: .unauthenticated, message: error.description)
    }
    guard Self.allows(access, caller) else {
      throw RPCError(code: .permissionDenied, message: "this method is not open to the caller's roles")
    }
    if let service = caller.service, callers[method]?.contains(service.rawValue) != true {
      throw RPCError(code: .permissionDenied, message: "the \(service.rawValue) service may not call \(method)")
    }
    return try await Self.bound(caller: caller, clientAddress: clientAddress) { try await next(request, context) }
  }

  /// Runs `handle` with the caller and the client address bound, and binds them again around the
  /// response's producer: grpc runs the producer, where the handler writes its responses, after
  /// this returns and outside the task-locals' scope, and a streaming handler (and anything it
  /// calls) must still know who is calling.
  private static func bound<Output: Sendable>(
    caller: Caller?, clientAddress: IPAddress?, _ handle: () async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var response = try await Caller.$current.withValue(caller) {
      try await ForwardedClient.$address.withValue(clientAddress) { try await handle() }
    }
    if case .success(var contents) = response.accepted {
      let produce = contents.producer
      contents.producer = { writer in
        try await Caller.$current.withValue(caller) {
          try await ForwardedClient.$address.withValue(clientAddress) { try await produce(writer) }
        }
      }
      response.accepted = .success(contents)
    }
    return response
  }

  /// The client address the gateway vouches for; nil when the call does not come from the gateway
  /// (its address header, if any, is ignored). A gateway token that does not verify is refused
  /// rather than ignored, so that a misconfigured gateway shows at once.
  private func forwardedClientAddress(in metadata: Metadata) async throws -> IPAddress? {
    guard let token = metadata[stringValues: ForwardedClient.tokenKey].first(where: { _ in true }) else { return nil }
    do {
      try await verifier.verifyGateway(token)
    } catch {
      throw RPCError(code: .unauthenticated, message: "the gateway token is not accepted: \(error.description)")
    }
    let claimed = metadata[stringValues: ForwardedClient.addressKey].first(where: { _ in true })
    return claimed.flatMap { $0.utf8.count <= 64 ? IPAddress($0.trimmingCharacters(in: .whitespaces)) : nil }
  }

  /// Whether a verified caller may call a method with this access level.
  public static func allows(_ access: Mart_Api_V1_Access, _ caller: Caller) -> Bool {
    switch access {
    case .public: true
    case .user: caller.kind == .user
    case .admin: caller.isAdmin
    case .internal: caller.isService
    case .adminOrInternal: caller.isAdmin || caller.isService
    case .userOrInternal: caller.kind == .user || caller.isService
    case .unspecified, .UNRECOGNIZED: false
    }
  }

  /// The token of an `authorization: Bearer <token>` entry; nil if there is none.
  public static func bearerToken(in metadata: Metadata) -> String? {
    bearerToken(fromAuthorization: metadata[stringValues: "authorization"].first(where: { _ in true }))
  }

  /// The token of an `Authorization` value (`Bearer <token>`, scheme case-insensitive, RFC 6750);
  /// nil for another scheme or none. Shared with the gateway, which reads the HTTP header.
  public static func bearerToken(fromAuthorization value: String?) -> String? {
    guard let value else { return nil }
    let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
    guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
    let token = parts[1].trimmingCharacters(in: .whitespaces)
    return token.isEmpty ? nil : token
  }
}

/// Authenticates calls this service makes to others. A call made while serving a user passes the
/// user's token on when the method accepts users; otherwise (methods for services only, event
/// handlers, sweepers) the call carries a service token addressed to the service it calls.
public struct ClientAuthInterceptor: ClientInterceptor {
  let serviceTokens: ServiceTokenIssuer?
  let policies: [String: Mart_Api_V1_Access]

  public init(serviceTokens: ServiceTokenIssuer?, policies: [String: Mart_Api_V1_Access] = MartAccessPolicies.byMethod)
  {
    self.serviceTokens = serviceTokens
    self.policies = policies
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>,
    context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
  ) async throws -> StreamingClientResponse<Output> {
    var request = request
    if request.metadata[stringValues: "authorization"].first(where: { _ in true }) == nil,
      let target = MartService(grpcServiceName: context.descriptor.service.fullyQualifiedService),
      let token = try await token(for: context.descriptor, to: target)
    {
      request.metadata.addString("Bearer \(token)", forKey: "authorization")
    }
    return try await next(request, context)
  }

  private func token(for method: MethodDescriptor, to target: MartService) async throws -> String? {
    let access = policies[method.fullyQualifiedMethod] ?? .internal
    let caller = Caller.current
    switch access {
    case .public:
      return nil
    case .user, .admin:
      return caller?.kind == .user ? caller?.token : nil
    case .userOrInternal, .adminOrInternal:
      if let caller, caller.kind == .user { return caller.token }
      return try await serviceTokens?.token(for: target)
    case .internal, .unspecified, .UNRECOGNIZED:
      return try await serviceTokens?.token(for: target)
    }
  }
}

extension Caller {
  /// The caller of the current RPC; UNAUTHENTICATED if there is none (a handler of a method that
  /// needs a token runs only after `ServerAuthInterceptor` bound one, so this is a safety net).
  public static func required() throws -> Caller {
    guard let caller = current else {
      throw RPCError(code: .unauthenticated, message: "a bearer token is required")
    }
    return caller
  }

  /// Whose data the caller may read: nil for all (an admin, a service), else their own user id.
  public static func ownerScope() throws -> UUID? {
    let caller = try required()
    if caller.isAdmin || caller.isService { return nil }
    return try requiredUserID()
  }

  /// The signed-in user's id; PERMISSION_DENIED for a service token.
  public static func requiredUserID() throws -> UUID {
    let caller = try required()
    guard caller.kind == .user, let id = UUID(uuidString: caller.subject) else {
      throw RPCError(code: .permissionDenied, message: "this method acts on a signed-in user's own data")
    }
    return id
  }
}
