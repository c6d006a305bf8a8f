import Foundation
import GRPCCore
import GRPCProtobuf
import MartRuntime
import PostgresNIO

/// The errors only the user service answers with (the shared ones are `APIStatus`'s): a gRPC
/// status plus `google.rpc` details (ErrorInfo with a `mart.common.v1.ErrorReason` name,
/// BadRequest field violations, RetryInfo), so that the gateway can show them.
enum UserServiceError {
  /// INVALID_ARGUMENT naming every bad field. The reason is WEAK_PASSWORD when the password (or the
  /// new password) is all that is wrong, VALIDATION_FAILED otherwise.
  static func invalid(_ violations: [FieldViolation]) -> GoogleRPCStatus {
    let onlyPassword =
      !violations.isEmpty && violations.allSatisfy { ["password", "new_password"].contains($0.field) }
    return APIStatus.invalid(violations, reason: onlyPassword ? "WEAK_PASSWORD" : "VALIDATION_FAILED")
  }

  /// Unknown email and wrong password alike (never says which).
  static let invalidCredentials = APIStatus.status(
    .unauthenticated, "invalid email or password", reason: "INVALID_CREDENTIALS")

  static func invalidRefreshToken(_ message: String = "the refresh token is invalid, expired or revoked")
    -> GoogleRPCStatus
  {
    APIStatus.status(.unauthenticated, message, reason: "TOKEN_INVALID")
  }

  static let refreshTokenReused = APIStatus.status(
    .unauthenticated, "the refresh token was already used; every token of this session is now revoked",
    reason: "REFRESH_TOKEN_REUSED")

  /// Only `mart users create-admin` says so: Register answers a taken email as a new one.
  static let emailTaken = APIStatus.status(
    .alreadyExists, "an account with this email already exists", reason: "EMAIL_ALREADY_REGISTERED")

  static let invalidVerificationToken = APIStatus.status(
    .invalidArgument, "the verification link is invalid, used or expired; ask for a new one",
    reason: "INVALID_VERIFICATION_TOKEN", metadata: ["field": "token"],
    extra: [.badRequest(violations: [.init(field: "token", description: "is invalid, used or expired")])])

  static let invalidResetToken = APIStatus.status(
    .invalidArgument, "the password-reset link is invalid, used or expired; ask for a new one",
    reason: "INVALID_RESET_TOKEN", metadata: ["field": "token"],
    extra: [.badRequest(violations: [.init(field: "token", description: "is invalid, used or expired")])])

  static let lastAdmin = APIStatus.status(
    .failedPrecondition, "the shop must keep at least one admin", reason: "LAST_ADMIN")

  /// The password-hashing queue is full: not the caller's fault, and over soon.
  static func busy(_ busy: PasswordHashingQueue.Busy) -> GoogleRPCStatus {
    let seconds = max(1, busy.retryAfter.components.seconds)
    return APIStatus.status(
      .unavailable, "too many sign-ins at once; try again in \(seconds) s", reason: "OVERLOADED",
      extra: [.retryInfo(delay: .seconds(seconds))])
  }

  static func rateLimited(retryAfter: Duration, _ what: String = "too many failed logins") -> GoogleRPCStatus {
    let seconds = max(1, retryAfter.components.seconds + (retryAfter.components.attoseconds > 0 ? 1 : 0))
    return APIStatus.status(
      .resourceExhausted, "\(what); try again in \(seconds) s", reason: "RATE_LIMITED",
      extra: [.retryInfo(delay: .seconds(seconds))])
  }
}

/// A full password-hashing queue says its own status, wherever it is thrown: UNAVAILABLE with the
/// time to retry (the runtime's status mapping passes it on; the gateway makes it `Retry-After`).
extension PasswordHashingQueue.Busy: RPCErrorConvertible {
  private var status: GoogleRPCStatus { UserServiceError.busy(self) }
  public var rpcErrorCode: RPCError.Code { status.rpcErrorCode }
  public var rpcErrorMessage: String { status.rpcErrorMessage }
  public var rpcErrorMetadata: Metadata { status.rpcErrorMetadata }
}
