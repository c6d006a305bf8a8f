import Crypto
import Foundation
import Logging
import MartRuntime

/// Account creation as Register and `mart users create-admin` share it: one validation, one
/// password policy, one hash, one insert with its UserRegistered event.
struct UserAccounts: Sendable {
  let store: UserStore
  let hasher: PasswordHasher

  struct NewAccount: Sendable {
    var email: String
    var password: String
    var fullName: String
    var phone: String
    var locale: String = ""
  }

  struct ValidAccount: Sendable {
    var email: String
    var fullName: String
    var phone: String?
    var locale: String
  }

  /// The account's fields as stored, or INVALID_ARGUMENT naming every bad field.
  static func validate(_ input: NewAccount) throws -> ValidAccount {
    var violations: [FieldViolation] = []
    var email: String?
    switch Validation.normalizedEmail(input.email) {
    case .success(let value): email = value
    case .failure(let violation): violations.append(violation)
    }
    violations += Validation.passwordViolations(input.password, email: input.email)
    var fullName: String?
    switch Validation.fullName(input.fullName, field: "full_name") {
    case .success(let value): fullName = value
    case .failure(let violation): violations.append(violation)
    }
    var phone: String?
    switch Validation.phone(input.phone, field: "phone") {
    case .success(let value): phone = value
    case .failure(let violation): violations.append(violation)
    }
    var locale: String?
    switch Validation.locale(input.locale, field: "locale") {
    case .success(let value): locale = value
    case .failure(let violation): violations.append(violation)
    }
    guard violations.isEmpty, let email, let fullName, let locale else { throw UserServiceError.invalid(violations) }
    return ValidAccount(email: email, fullName: fullName, phone: phone, locale: locale)
  }

  /// Register: validates, hashes the password, then, in one transaction, creates the account with
  /// its UserRegistered event and a verification link (EmailVerificationRequested), or, when the
  /// email is taken, records RegistrationAttempted for its owner. The same work and the same
  /// answer either way (the email as stored), so that the caller cannot tell which happened.
  func register(_ input: NewAccount, verificationLifetime: Duration) async throws -> String {
    let account = try Self.validate(input)
    let hash = try await hasher.hash(input.password)
    let verification = SecretTokens.make()
    try await store.register(
      email: account.email, passwordHash: hash, fullName: account.fullName, phone: account.phone,
      locale: account.locale,
      verification: NewVerification(token: verification.token, hash: verification.hash, lifetime: verificationLifetime))
    return account.email
  }

  /// Validates, hashes the password (no transaction is open meanwhile), then inserts the user
  /// with its event (and the session's first refresh token, if given) in one transaction.
  /// ALREADY_EXISTS if the email is taken.
  func create(_ input: NewAccount, roles: [String], session: NewRefreshToken?) async throws -> (
    user: UserRecord, refreshExpiresAt: Date?
  ) {
    let account = try Self.validate(input)
    let hash = try await hasher.hash(input.password)
    guard
      let created = try await store.createUser(
        email: account.email, passwordHash: hash, fullName: account.fullName, phone: account.phone,
        locale: account.locale, roles: roles,
        session: session)
    else { throw UserServiceError.emailTaken }
    return created
  }
}

/// Opaque secret tokens (refresh tokens, email-verification tokens): 32 random bytes, base64url;
/// only their SHA-256 is stored.
enum SecretTokens {
  static func make() -> (token: String, hash: Data) {
    let bytes = PasswordHasher.randomBytes(32)
    return (Base64URL.encode(bytes), Data(SHA256.hash(data: bytes)))
  }

  /// The stored form of a presented token; nil if it cannot be one of ours.
  static func hash(_ token: String) -> Data? {
    guard token.utf8.count == 43, let bytes = Base64URL.decode(token), bytes.count == 32 else { return nil }
    return Data(SHA256.hash(data: bytes))
  }
}
