import Foundation
import GRPCCore
import Hummingbird
import MartCore
import MartProto

// Token checks at the edge, so that a call without a valid token, or with the wrong role, is
// refused before it costs a service anything. The service checks the token again (it trusts no
// one, the gateway included): the gateway passes the original token on. Public routes are not
// checked here; a token sent to one is passed on as it came, for the service to use or ignore.

/// Verifies the bearer token of a call to a non-public route and checks its role.
struct EdgeAuthenticator: Sendable {
  let verifier: TokenVerifier

  static let realm = #"Bearer realm="mart""#

  /// The verified caller; nil for a public route. Throws 401 (no or bad token), 403 (the role does
  /// not allow the route, or a service token from outside), 503 (the keys cannot be fetched).
  func authenticate(access: Mart_Api_V1_Access, authorization: String?) async throws(GatewayError) -> Caller? {
    guard access != .public else { return nil }
    guard let token = ServerAuthInterceptor.bearerToken(fromAuthorization: authorization) else {
      var headers = HTTPFields()
      headers[.wwwAuthenticate] = Self.realm
      throw GatewayError(
        .unauthorized, code: .unauthenticated, message: "a bearer token is required",
        details: [GatewayError.errorInfo(reason: "TOKEN_MISSING")].compactMap { $0 }, headers: headers)
    }
    let caller: Caller
    do {
      caller = try await verifier.verify(token)
    } catch {
      if case .keysUnavailable = error {
        throw GatewayError(
          .serviceUnavailable, code: .unavailable, message: "cannot verify tokens right now; try again later")
      }
      var headers = HTTPFields()
      let description = error.description.replacingOccurrences(of: "\"", with: "'")
      headers[.wwwAuthenticate] = #"\#(Self.realm), error="invalid_token", error_description="\#(description)""#
      throw GatewayError(
        .unauthorized, code: .unauthenticated, message: error.description,
        details: [GatewayError.errorInfo(reason: "TOKEN_INVALID")].compactMap { $0 }, headers: headers)
    }
    // Service tokens are for calls between services; none may come in from outside.
    guard caller.kind == .user, ServerAuthInterceptor.allows(access, caller) else {
      throw GatewayError(
        .forbidden, code: .permissionDenied, message: "this operation is not open to the caller's roles",
        details: [GatewayError.errorInfo(reason: "PERMISSION_DENIED")].compactMap { $0 })
    }
    return caller
  }

}
