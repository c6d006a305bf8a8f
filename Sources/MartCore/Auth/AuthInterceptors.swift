import Foundation
import GRPCCore
import MartProto

/// Every service checks the caller's token itself, whatever the gateway did: a direct gRPC call
/// without a valid token gets UNAUTHENTICATED, and a token without the role the method needs gets
/// PERMISSION_DENIED. What a method needs is its `mart.api.v1.access` option in proto/, generated
/// into `MartAccessPolicies`; a method with no policy is refused, so forgetting one fails closed.
/// Ownership (a customer reading only their own data) is the handlers' part, through
/// `Caller.current`.
public struct ServerAuthInterceptor: ServerInterceptor {
  let verifier: TokenVerifier
  let policies: [String: Mart_Api_V1_Access]

  public init(verifier: TokenVerifier, policies: [String: Mart_Api_V1_Access] = MartAccessPolicies.byMethod) {
    self.verifier = verifier
    self.policies = policies
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
    guard let access = policies[context.descriptor.fullyQualifiedMethod] else {
      throw RPCError(
        code: .permissionDenied, message: "no access policy for \(context.descriptor.fullyQualifiedMethod)")
    }
    let token = Self.bearerToken(in: request.metadata)
    if access == .public && token == nil {
      return try await next(request, context)
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
    var response = try await Caller.$current.withValue(caller) {
      try await next(request, context)
    }
    // The handler writes its responses in the producer, which grpc runs after this returns:
    // outside the task-local's scope. Bind the caller there too, or a streaming handler (and
    // anything it calls) would not know who is calling.
    if case .success(var contents) = response.accepted {
      let produce = contents.producer
      contents.producer = { writer in
        try await Caller.$current.withValue(caller) { try await produce(writer) }
      }
      response.accepted = .success(contents)
    }
    return response
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
/// handlers, sweepers) the call carries a service token.
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
      let token = try await token(for: context.descriptor)
    {
      request.metadata.addString("Bearer \(token)", forKey: "authorization")
    }
    return try await next(request, context)
  }

  private func token(for method: MethodDescriptor) async throws -> String? {
    let access = policies[method.fullyQualifiedMethod] ?? .internal
    let caller = Caller.current
    switch access {
    case .public:
      return nil
    case .user, .admin:
      return caller?.kind == .user ? caller?.token : nil
    case .userOrInternal, .adminOrInternal:
      if let caller, caller.kind == .user { return caller.token }
      return try await serviceTokens?.token()
    case .internal, .unspecified, .UNRECOGNIZED:
      return try await serviceTokens?.token()
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
