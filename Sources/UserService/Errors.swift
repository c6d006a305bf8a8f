import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartRuntime
import PostgresNIO

/// The errors the user service answers with: a gRPC status plus `google.rpc` details (ErrorInfo
/// with a `mart.common.v1.ErrorReason` name, BadRequest field violations, RetryInfo), so that the
/// gateway can show them.
enum UserServiceError {
  static let domain = "mart"

  /// One request field that failed validation.
  struct Violation: Error, Sendable, Equatable {
    var field: String
    var description: String

    init(_ field: String, _ description: String) {
      self.field = field
      self.description = description
    }
  }

  static func status(
    _ code: RPCError.Code, _ message: String, reason: String, metadata: [String: String] = [:],
    extra: [ErrorDetails] = []
  ) -> GoogleRPCStatus {
    GoogleRPCStatus(
      code: code, message: message,
      details: [.errorInfo(reason: reason, domain: domain, metadata: metadata)] + extra)
  }

  /// INVALID_ARGUMENT naming every bad field. The reason is WEAK_PASSWORD when the password is all
  /// that is wrong, VALIDATION_FAILED otherwise.
  static func invalid(_ violations: [Violation]) -> GoogleRPCStatus {
    let onlyPassword = !violations.isEmpty && violations.allSatisfy { $0.field == "password" }
    let message = violations.map { "\($0.field): \($0.description)" }.joined(separator: "; ")
    return status(
      .invalidArgument, message, reason: onlyPassword ? "WEAK_PASSWORD" : "VALIDATION_FAILED",
      extra: [.badRequest(violations: violations.map { .init(field: $0.field, description: $0.description) })])
  }

  static func invalid(_ field: String, _ description: String) -> GoogleRPCStatus {
    invalid([Violation(field, description)])
  }

  /// Unknown email and wrong password alike (never says which).
  static let invalidCredentials = status(
    .unauthenticated, "invalid email or password", reason: "INVALID_CREDENTIALS")

  static func invalidRefreshToken(_ message: String = "the refresh token is invalid, expired or revoked")
    -> GoogleRPCStatus
  {
    status(.unauthenticated, message, reason: "TOKEN_INVALID")
  }

  static let refreshTokenReused = status(
    .unauthenticated, "the refresh token was already used; every token of this session is now revoked",
    reason: "REFRESH_TOKEN_REUSED")

  static let emailTaken = status(
    .alreadyExists, "an account with this email already exists", reason: "EMAIL_ALREADY_REGISTERED")

  static let lastAdmin = status(
    .failedPrecondition, "the shop must keep at least one admin", reason: "LAST_ADMIN")

  static func rateLimited(retryAfter: Duration) -> GoogleRPCStatus {
    let seconds = max(1, retryAfter.components.seconds + (retryAfter.components.attoseconds > 0 ? 1 : 0))
    return status(
      .resourceExhausted, "too many failed logins; try again in \(seconds) s", reason: "RATE_LIMITED",
      extra: [.retryInfo(delay: .seconds(seconds))])
  }

  static func notFound(_ what: String) -> RPCError {
    RPCError(code: .notFound, message: "\(what) not found")
  }

  /// Runs a handler body, turning what is not already a status into one: an unreachable database
  /// is UNAVAILABLE (retry), anything else INTERNAL (logged, without detail for the client).
  static func handling<Result: Sendable>(
    _ method: String, logger: Logger, _ body: () async throws -> Result
  ) async throws -> Result {
    do {
      return try await body()
    } catch let error as GoogleRPCStatus {
      throw error
    } catch let error as RPCError {
      throw error
    } catch is CancellationError {
      throw RPCError(code: .cancelled, message: "the call was cancelled")
    } catch {
      let unwrapped = error.unwrappingTransactionError
      if let status = unwrapped as? GoogleRPCStatus { throw status }
      if let rpcError = unwrapped as? RPCError { throw rpcError }
      if error.isDatabaseUnavailable {
        logger.warning("database unavailable", metadata: ["method": "\(method)", "error": "\(describe(unwrapped))"])
        throw RPCError(code: .unavailable, message: "the user database is unavailable; try again")
      }
      logger.error("internal error", metadata: ["method": "\(method)", "error": "\(describe(unwrapped))"])
      throw RPCError(code: .internalError, message: "internal error")
    }
  }

  /// An error for a log line or an operator, without the statement's bound values (they include
  /// password and token hashes), which `String(reflecting:)` of a PSQLError would print.
  static func describe(_ error: any Error) -> String {
    let error = error.unwrappingTransactionError
    guard let psql = error as? PSQLError else { return String(describing: error) }
    var parts = ["PSQLError \(psql.code)"]
    if let state = psql.serverInfo?[.sqlState] { parts.append("sqlstate \(state)") }
    if let message = psql.serverInfo?[.message] { parts.append(message) }
    if let constraint = psql.serverInfo?[.constraintName] { parts.append("constraint \(constraint)") }
    if let sql = psql.query?.sql {
      parts.append("in: \(sql.split(whereSeparator: \.isNewline).joined(separator: " "))")
    }
    return parts.joined(separator: "; ")
  }
}
