import Foundation
import GRPCProtobuf
import Logging
import MartRuntime
import PostgresNIO

/// Operations on the user database for the `mart users` command (no gRPC, no token): the same
/// validation, password policy, hashing and store code as Register.
public enum UserAdministration {
  /// What `createAdmin` did.
  public enum CreateAdminResult: Sendable, Equatable {
    /// A new account with roles customer and admin (UserRegistered emitted).
    case created(userID: UUID)
    /// The account existed and `promoteExisting` was given: it now holds admin too, its password
    /// is the one given, and every session it had is revoked.
    case promoted(userID: UUID)
    /// The account existed and was already an admin: nothing changed.
    case alreadyAdmin(userID: UUID)
  }

  /// Input the command must refuse (exit code 2), with a message for the operator.
  public struct InvalidInput: Error, CustomStringConvertible, Equatable {
    public var description: String
  }

  /// The email as stored, or why it is not acceptable.
  public static func normalizedEmail(_ raw: String) throws(InvalidInput) -> String {
    switch Validation.normalizedEmail(raw) {
    case .success(let email): return email
    case .failure(let violation): throw InvalidInput(description: "\(violation.field) \(violation.description)")
    }
  }

  /// Why a password does not meet the policy (empty when it does).
  public static func passwordProblems(_ password: String, email: String) -> [String] {
    Validation.passwordViolations(password, email: email).map { "\($0.field) \($0.reason)" }
  }

  /// Creates an admin account (customer + admin) with this email and the password `password`
  /// gives. An account that already has the email is not this command's: anyone may have
  /// registered it first, to be promoted and own an admin account. It is refused (`InvalidInput`)
  /// unless the operator asks for it with `promoteExisting`; then it gains admin, its password
  /// becomes the one given, and every session it had is revoked, so whoever registered it is out.
  /// Throws `InvalidInput` for a bad email, name or password.
  public static func createAdmin(
    database: PostgresClient, email rawEmail: String, fullName: String, promoteExisting: Bool = false,
    passwordCost: PasswordHasher.Cost = .production, logger: Logger,
    password: () async throws -> String
  ) async throws -> CreateAdminResult {
    let email = try normalizedEmail(rawEmail)
    let store = UserStore(database: database, outbox: Outbox(service: .user), logger: logger)
    let hasher = PasswordHasher(cost: passwordCost)
    let accounts = UserAccounts(store: store, hasher: hasher)
    if let existing = try await promote(
      store, email, promoteExisting: promoteExisting, hasher: hasher, logger: logger, password: password)
    {
      return existing
    }
    let secret = try await password()
    do {
      let (user, _) = try await accounts.create(
        .init(email: email, password: secret, fullName: fullName, phone: ""),
        roles: [MartRole.customer, MartRole.admin], session: nil)
      logger.notice("admin account created", metadata: ["user_id": "\(user.id.uuidString.lowercased())"])
      return .created(userID: user.id)
    } catch let status as GoogleRPCStatus where status.code == .alreadyExists {
      // Registered meanwhile: the same rules as an account that was there before.
      if let existing = try await promote(
        store, email, promoteExisting: promoteExisting, hasher: hasher, logger: logger, password: { secret })
      {
        return existing
      }
      throw status
    } catch let status as GoogleRPCStatus where status.code == .invalidArgument {
      throw InvalidInput(description: status.message)
    }
  }

  /// What to do with an account that already has the email: nil when there is none.
  private static func promote(
    _ store: UserStore, _ email: String, promoteExisting: Bool, hasher: PasswordHasher, logger: Logger,
    password: () async throws -> String
  ) async throws -> CreateAdminResult? {
    guard let (user, _) = try await store.credentials(email: email) else { return nil }
    if user.isAdmin { return .alreadyAdmin(userID: user.id) }
    guard promoteExisting else {
      throw InvalidInput(
        description: """
          \(email) already has an account (id \(user.id.uuidString.lowercased())) that this command did not \
          create: whoever registered it knows its password. It was not made an admin. To make it one, run \
          again with --promote-existing: its password is then reset to the one you give and all its sessions \
          are signed out.
          """)
    }
    let secret = try await password()
    let problems = passwordProblems(secret, email: email)
    guard problems.isEmpty else { throw InvalidInput(description: problems.joined(separator: "; ")) }
    let hash = try await hasher.hash(secret)
    switch try await store.promoteToAdmin(email: email, resettingPasswordTo: hash) {
    case .promoted(let promoted):
      logger.notice(
        "existing account made an admin; password reset and sessions revoked",
        metadata: ["user_id": "\(promoted.id.uuidString.lowercased())"])
      return .promoted(userID: promoted.id)
    case .alreadyAdmin(let admin): return .alreadyAdmin(userID: admin.id)
    case .notFound: return nil
    }
  }

  /// The admin an operator's command acts for: the one with `email`, or the longest-standing
  /// admin when `email` is nil. Nil when there is no such admin.
  public static func admin(email: String?, database: PostgresClient, logger: Logger) async throws -> UUID? {
    let rows =
      if let email {
        try await database.query(
          "SELECT id FROM users WHERE lower(email) = lower(\(email)) AND 'admin' = ANY(roles)", logger: logger)
      } else {
        try await database.query(
          "SELECT id FROM users WHERE 'admin' = ANY(roles) ORDER BY created_at, id LIMIT 1", logger: logger)
      }
    for try await id in rows.decode(UUID.self) { return id }
    return nil
  }

  /// What `ensureCustomer` did.
  public enum EnsureCustomerResult: Sendable, Equatable {
    /// A new customer account with this password (UserRegistered emitted).
    case created(userID: UUID, password: String)
    /// An account with the email existed: it is left exactly as it was.
    case existed(userID: UUID)
  }

  /// A customer account with this email: made, with a new random password, when there is none;
  /// otherwise left untouched (its password is not known here, and is never reset by this).
  public static func ensureCustomer(
    database: PostgresClient, email rawEmail: String, fullName: String,
    passwordCost: PasswordHasher.Cost = .production, logger: Logger
  ) async throws -> EnsureCustomerResult {
    let email = try normalizedEmail(rawEmail)
    let store = UserStore(database: database, outbox: Outbox(service: .user), logger: logger)
    if let (user, _) = try await store.credentials(email: email) { return .existed(userID: user.id) }
    // 18 random bytes: 24 base64url characters, well inside the password policy.
    let password = Base64URL.encode(Data(PasswordHasher.randomBytes(18)))
    let accounts = UserAccounts(store: store, hasher: PasswordHasher(cost: passwordCost))
    do {
      let (user, _) = try await accounts.create(
        .init(email: email, password: password, fullName: fullName, phone: ""), roles: [MartRole.customer],
        session: nil)
      return .created(userID: user.id, password: password)
    } catch let status as GoogleRPCStatus where status.code == .alreadyExists {
      // Registered meanwhile: that account is someone's; leave it.
      guard let (user, _) = try await store.credentials(email: email) else { throw status }
      return .existed(userID: user.id)
    }
  }

  /// An error for the operator, without the bound values of a failed statement.
  public static func describe(_ error: any Error) -> String {
    APIStatus.redactedDescription(of: error)
  }
}
