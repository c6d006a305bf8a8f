import Foundation
import GRPCCore
import Hummingbird
import MartProto
import SwiftProtobuf

// Every answer that is not 2xx carries a `google.rpc.Status` in JSON, whether the gateway refused
// the call itself (bad JSON, no token, over quota) or the service did. This file holds that one
// error type, the grpc-gateway table from gRPC codes to HTTP statuses, and the translation of an
// upstream RPCError with its rich details (`grpc-status-details-bin`) into the JSON body.

/// A call answered with an error: HTTP status, `google.rpc.Status` body, and extra headers.
struct GatewayError: Error, Sendable {
  var httpStatus: HTTPResponse.Status
  var code: Google_Rpc_Code
  var message: String
  /// `google.rpc.*` details, packed.
  var details: [Google_Protobuf_Any]
  var headers: HTTPFields

  init(
    _ httpStatus: HTTPResponse.Status, code: Google_Rpc_Code, message: String, details: [Google_Protobuf_Any] = [],
    headers: HTTPFields = [:]
  ) {
    self.httpStatus = httpStatus
    self.code = code
    self.message = message
    self.details = details
    self.headers = headers
  }

  /// The JSON body: `{"code": 3, "message": "…", "details": [{"@type": "…", …}]}`.
  var statusJSON: [UInt8] {
    var status = Google_Rpc_Status()
    status.code = Int32(code.rawValue)
    status.message = message
    status.details = details
    ErrorDetailTypes.registerOnce()
    if let bytes: [UInt8] = try? status.jsonUTF8Bytes() { return bytes }
    // A detail that cannot be shown in JSON: drop the details rather than the error.
    status.details = []
    let fallback: [UInt8]? = try? status.jsonUTF8Bytes()
    return fallback ?? Array(#"{"code":13,"message":"internal error"}"#.utf8)
  }

  func response(extraHeaders: HTTPFields = [:]) -> Response {
    var fields = headers
    fields.append(contentsOf: extraHeaders)
    fields[.contentType] = "application/json"
    return Response(status: httpStatus, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: statusJSON)))
  }

  // MARK: The gateway's own refusals

  /// One field of the request that is wrong.
  struct FieldViolation: Error, Sendable, Equatable {
    /// The field's path as the client wrote it (`address.postalCode`, `items[2].quantity`), or a
    /// query parameter's name; empty when the request as a whole is wrong.
    var field: String
    var description: String
  }

  static func badRequest(_ message: String, violations: [FieldViolation] = []) -> GatewayError {
    var details: [Google_Protobuf_Any] = []
    let named = violations.filter { !$0.field.isEmpty }
    if !named.isEmpty {
      var badRequest = Google_Rpc_BadRequest()
      badRequest.fieldViolations = named.map { violation in
        var fieldViolation = Google_Rpc_BadRequest.FieldViolation()
        fieldViolation.field = violation.field
        fieldViolation.description_p = violation.description
        return fieldViolation
      }
      if let packed = try? Google_Protobuf_Any(message: badRequest) { details.append(packed) }
    }
    return GatewayError(.badRequest, code: .invalidArgument, message: message, details: details)
  }

  static func badRequest(_ violation: FieldViolation) -> GatewayError {
    let message = violation.field.isEmpty ? violation.description : "\(violation.field): \(violation.description)"
    return badRequest(message, violations: [violation])
  }

  static func notFound(path: String) -> GatewayError {
    GatewayError(.notFound, code: .notFound, message: "no route for \(path)")
  }

  static func methodNotAllowed(_ method: String, allowed: [String]) -> GatewayError {
    var headers = HTTPFields()
    headers[.allow] = allowed.joined(separator: ", ")
    return GatewayError(
      .methodNotAllowed, code: .unimplemented, message: "method \(method) is not allowed here", headers: headers)
  }

  static func unsupportedMediaType(_ contentType: String?) -> GatewayError {
    GatewayError(
      .unsupportedMediaType, code: .invalidArgument,
      message: "the request body must be application/json, not \(contentType ?? "unlabelled")")
  }

  static func contentTooLarge(limit: Int) -> GatewayError {
    GatewayError(.contentTooLarge, code: .invalidArgument, message: "the request body is larger than \(limit) bytes")
  }

  static func internalError(requestID: String) -> GatewayError {
    GatewayError(
      .internalServerError, code: .internal, message: "internal error (request id \(requestID))",
      details: [requestInfo(requestID)].compactMap { $0 })
  }

  static func requestInfo(_ requestID: String) -> Google_Protobuf_Any? {
    var info = Google_Rpc_RequestInfo()
    info.requestID = requestID
    return try? Google_Protobuf_Any(message: info)
  }

  static func errorInfo(reason: String, metadata: [String: String] = [:]) -> Google_Protobuf_Any? {
    var info = Google_Rpc_ErrorInfo()
    info.reason = reason
    info.domain = "gateway.mart"
    info.metadata = metadata
    return try? Google_Protobuf_Any(message: info)
  }

  // MARK: Upstream errors

  /// The HTTP status for a gRPC code: grpc-gateway's table
  /// (`runtime.HTTPStatusFromCode`).
  static func httpStatus(for code: Google_Rpc_Code) -> HTTPResponse.Status {
    switch code {
    case .ok: .ok
    case .cancelled: HTTPResponse.Status(code: 499, reasonPhrase: "Client Closed Request")
    case .unknown: .internalServerError
    case .invalidArgument: .badRequest
    case .deadlineExceeded: .gatewayTimeout
    case .notFound: .notFound
    case .alreadyExists: .conflict
    case .permissionDenied: .forbidden
    case .unauthenticated: .unauthorized
    case .resourceExhausted: .tooManyRequests
    case .failedPrecondition: .badRequest
    case .aborted: .conflict
    case .outOfRange: .badRequest
    case .unimplemented: .notImplemented
    case .internal: .internalServerError
    case .unavailable: .serviceUnavailable
    case .dataLoss: .internalServerError
    case .UNRECOGNIZED: .internalServerError
    }
  }

  /// The HTTP status for an upstream error: by its code, except where its ErrorInfo reason has a
  /// status of its own by an HTTP standard: an idempotency key reused for another request is 422
  /// (draft-ietf-httpapi-idempotency-key-header, section 2.7), which no gRPC code maps to.
  static func httpStatus(for code: Google_Rpc_Code, details: [Google_Protobuf_Any]) -> HTTPResponse.Status {
    let reasons = details.compactMap { try? Google_Rpc_ErrorInfo(unpackingAny: $0).reason }
    if reasons.contains("IDEMPOTENCY_KEY_REUSED") { return .unprocessableContent }
    return httpStatus(for: code)
  }

  /// An error from the upstream service, as the client sees it: its code mapped to HTTP, its message
  /// and details (from `grpc-status-details-bin`) passed on; but for a failure on our side
  /// (INTERNAL, UNKNOWN, DATA_LOSS) nothing beyond the request id, and for an unreachable service
  /// no transport detail.
  static func upstream(_ error: RPCError, service: String, requestID: String) -> GatewayError {
    let code = Google_Rpc_Code(rawValue: error.code.rawValue) ?? .unknown
    switch code {
    case .internal, .unknown, .dataLoss, .UNRECOGNIZED, .ok:
      return internalError(requestID: requestID)
    default:
      break
    }
    var message = error.message
    var details: [Google_Protobuf_Any] = []
    if let bytes = error.metadata[binaryValues: "grpc-status-details-bin"].first(where: { _ in true }),
      let status = try? Google_Rpc_Status(serializedBytes: bytes)
    {
      ErrorDetailTypes.registerOnce()
      // DebugInfo (stack traces) stays inside; details the gateway cannot show in JSON are dropped.
      details = status.details.filter {
        !$0.typeURL.hasSuffix("/google.rpc.DebugInfo")
          && Google_Protobuf_Any.messageType(forTypeURL: $0.typeURL) != nil
      }
      if !status.message.isEmpty { message = status.message }
    }
    var headers = HTTPFields()
    switch code {
    case .unavailable where details.isEmpty:
      // The transport's own words name hosts and ports: not for the client.
      message = "the \(service) service is unavailable; try again later"
    case .deadlineExceeded where details.isEmpty:
      message = "the \(service) service did not answer in time"
    case .unauthenticated:
      headers[.wwwAuthenticate] = #"Bearer realm="mart", error="invalid_token""#
    default:
      break
    }
    // A service that says when to retry (a throttled login, a full password-hashing queue) says
    // it to HTTP clients too, in whole seconds rounded up (RFC 9110 §10.2.3).
    if let retry = details.first(where: { $0.typeURL.hasSuffix("/google.rpc.RetryInfo") }),
      let info = try? Google_Rpc_RetryInfo(unpackingAny: retry)
    {
      let seconds = info.retryDelay.seconds + (info.retryDelay.nanos > 0 ? 1 : 0)
      headers[.retryAfter] = String(max(1, seconds))
    }
    if message.isEmpty { message = "request failed" }
    return GatewayError(
      httpStatus(for: code, details: details), code: code, message: message, details: details, headers: headers)
  }
}

/// The `google.rpc` detail types, registered so that an `Any` holding one decoded from the
/// upstream's binary status can be written as JSON.
enum ErrorDetailTypes {
  private static let registered: Bool = {
    let types: [any SwiftProtobuf.Message.Type] = [
      Google_Rpc_ErrorInfo.self, Google_Rpc_RetryInfo.self, Google_Rpc_DebugInfo.self, Google_Rpc_QuotaFailure.self,
      Google_Rpc_PreconditionFailure.self, Google_Rpc_BadRequest.self, Google_Rpc_RequestInfo.self,
      Google_Rpc_ResourceInfo.self, Google_Rpc_Help.self, Google_Rpc_LocalizedMessage.self,
    ]
    for type in types { Google_Protobuf_Any.register(messageType: type) }
    return true
  }()

  static func registerOnce() { _ = registered }
}
