import Foundation
import GRPCCore
import GRPCProtobuf
import Logging

/// One request field that failed validation (a `google.rpc.BadRequest.FieldViolation`). An Error
/// too, so that a check can return `Result<Value, FieldViolation>`.
public struct FieldViolation: Error, Sendable, Equatable, CustomStringConvertible {
  /// The field's path in the request, in proto field names: `price.amount_minor`, `lines[2].quantity`.
  public var field: String
  public var reason: String

  public init(_ field: String, _ reason: String) {
    self.field = field
    self.reason = reason
  }

  public var description: String { "\(field): \(reason)" }
}

/// The statuses Mart services answer with: a gRPC code plus `google.rpc` details (an ErrorInfo
/// whose reason is a `mart.common.v1.ErrorReason` name, and BadRequest field violations), which
/// the gateway passes on in its JSON error body.
public enum APIStatus {
  public static let domain = "mart"

  /// A status with an ErrorInfo carrying `reason` (a `mart.common.v1.ErrorReason` name).
  public static func status(
    _ code: RPCError.Code, _ message: String, reason: String, metadata: [String: String] = [:],
    extra: [ErrorDetails] = []
  ) -> GoogleRPCStatus {
    GoogleRPCStatus(
      code: code, message: message,
      details: [.errorInfo(reason: reason, domain: domain, metadata: metadata)] + extra)
  }

  /// INVALID_ARGUMENT naming every bad field, with `reason` (VALIDATION_FAILED unless a service
  /// has a more specific one, such as WEAK_PASSWORD).
  public static func invalid(_ violations: [FieldViolation], reason: String = "VALIDATION_FAILED") -> GoogleRPCStatus {
    let message = violations.map(\.description).joined(separator: "; ")
    return status(
      .invalidArgument, message.isEmpty ? "invalid request" : message, reason: reason,
      extra: [.badRequest(violations: violations.map { .init(field: $0.field, description: $0.reason) })])
  }

  /// INVALID_ARGUMENT (VALIDATION_FAILED) naming one field.
  public static func invalid(_ field: String, _ reason: String) -> GoogleRPCStatus {
    invalid([FieldViolation(field, reason)])
  }

  /// Throws INVALID_ARGUMENT if there are violations.
  public static func check(_ violations: [FieldViolation]) throws {
    if !violations.isEmpty { throw invalid(violations) }
  }

  /// How long a client is told to wait before retrying a call refused for an unavailable database.
  public static let databaseRetryDelay: Duration = .seconds(1)

  /// UNAVAILABLE for a call that cannot be served while the service's database is unavailable,
  /// with a RetryInfo (the gateway answers 503 with `Retry-After`).
  public static let databaseUnavailable = GoogleRPCStatus(
    code: .unavailable, message: "the database is unavailable; try again",
    details: [.retryInfo(delay: databaseRetryDelay)])

  public static func notFound(_ message: String) -> RPCError {
    RPCError(code: .notFound, message: message)
  }
}
