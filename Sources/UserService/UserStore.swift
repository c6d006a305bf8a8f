import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO
import SwiftProtobuf

/// A row of `users`.
struct UserRecord: Sendable, Equatable {
  var id: UUID
  var email: String
  var fullName: String
  var phone: String?
  var roles: [String]
  var emailVerifiedAt: Date?
  var lastLoginAt: Date?
  var createdAt: Date
  var updatedAt: Date
  var disabledAt: Date?
  var locale: String
  /// Counted by a trigger at every change of what UserUpdated carries (migration 0003).
  var version: Int64

  static let columns = """
    id, email, full_name, phone, roles, email_verified_at, last_login_at, created_at, updated_at, disabled_at, locale,
    version
    """
  typealias Row = (UUID, String, String, String?, [String], Date?, Date?, Date, Date, Date?, String, Int64)

  init(_ row: Row) {
    (
      id, email, fullName, phone, roles, emailVerifiedAt, lastLoginAt, createdAt, updatedAt, disabledAt, locale,
      version
    ) = row
  }

  var isAdmin: Bool { roles.contains(MartRole.admin) }

  /// The roles a user access token carries (`service` is only ever a service token's).
  var tokenRoles: [String] {
    [MartRole.customer, MartRole.admin].filter { roles.contains($0) }
  }

  var protoRoles: [Mart_User_V1_User.Role] { Self.protoRoles(roles) }

  static func protoRoles(_ roles: [String]) -> [Mart_User_V1_User.Role] {
    var result: [Mart_User_V1_User.Role] = []
    if roles.contains(MartRole.customer) { result.append(.customer) }
    if roles.contains(MartRole.admin) { result.append(.admin) }
    return result
  }

  var proto: Mart_User_V1_User {
    .with {
      $0.id = id.uuidString.lowercased()
      $0.email = email
      $0.fullName = fullName
      $0.phone = phone ?? ""
      $0.roles = protoRoles
      $0.emailVerified = emailVerifiedAt != nil
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt)
      if let lastLoginAt { $0.lastLoginTime = Google_Protobuf_Timestamp(date: lastLoginAt) }
      $0.locale = locale
    }
  }

  /// The account's whole state after a change, for the services that keep a copy of it.
  func updatedEvent(previousRoles: [Mart_User_V1_User.Role]) -> Mart_User_V1_UserUpdated {
    .with {
      $0.userID = id.uuidString.lowercased()
      $0.email = email
      $0.fullName = fullName
      $0.phone = phone ?? ""
      $0.roles = protoRoles
      $0.locale = locale
      $0.version = version
      $0.previousRoles = previousRoles
      $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt)
    }
  }
}

/// A row of `addresses`.
struct AddressRecord: Sendable {
  var id: UUID
  var userID: UUID
  var label: String?
  var recipientName: String
  var lines: [String]
  var city: String
  var region: String?
  var postalCode: String?
  var countryCode: String
  var phone: String?
  var isDefault: Bool
  var createdAt: Date
  /// `created_at` in microseconds since 1970, for page tokens.
  var createdMicros: Int64

  static let columns = """
    id, user_id, label, recipient_name, line1, line2, line3, city, region, postal_code, country_code::text, phone,
    is_default, created_at, floor(extract(epoch FROM created_at) * 1000000)::int8
    """
  typealias Row = (
    UUID, UUID, String?, String, String, String?, String?, String, String?, String?, String, String?, Bool, Date, Int64
  )

  init(_ row: Row) {
    let line1: String
    let line2: String?
    let line3: String?
    (
      id, userID, label, recipientName, line1, line2, line3, city, region, postalCode, countryCode, phone, isDefault,
      createdAt, createdMicros
    ) = row
    lines = [line1] + [line2, line3].compactMap { $0 }
  }

  var proto: Mart_User_V1_UserAddress {
    .with {
      $0.id = id.uuidString.lowercased()
      $0.userID = userID.uuidString.lowercased()
      $0.label = label ?? ""
      $0.address =
        PostalAddress(
          recipientName: recipientName, lines: lines, city: city, region: region, postalCode: postalCode,
          countryCode: countryCode, phone: phone
        ).proto
      $0.isDefault = isDefault
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
    }
  }
}

/// A refresh token about to be stored: its SHA-256 and lifetime (the token itself is never stored).
struct NewRefreshToken: Sendable {
  var id = UUID()
  var familyID: UUID
  var hash: Data
  var lifetime: Duration
}

/// A link that verifies an account's email: the token goes into the event for the email, only its
/// hash into the table.
struct NewVerification: Sendable {
  var token: String
  var hash: Data
  var lifetime: Duration
}

/// What happened to a presented refresh token.
enum RotationOutcome: Sendable {
  /// Spent; its successor is stored. The user and the successor's expiry.
  case rotated(UserRecord, expiresAt: Date)
  /// Already spent once: the whole family is now revoked.
  case reused
  /// Unknown, expired or revoked (or the account is gone or disabled).
  case invalid
}

enum SetRolesOutcome: Sendable {
  case updated(UserRecord)
  case notFound
  case lastAdmin
}

enum PromotionOutcome: Sendable {
  case promoted(UserRecord)
  case alreadyAdmin(UserRecord)
  case notFound
}

/// The user service's SQL. Every multi-statement change runs in one transaction; events go to
/// the outbox in the transaction of the change they describe.
struct UserStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  // MARK: - Accounts

  /// Inserts a user and emits UserRegistered (and stores the first refresh token of its session,
  /// if given) in one transaction. Nil when the email is taken (case-insensitively). For the
  /// operator's commands (`mart users`): the operator gave the email, so it counts as verified.
  func createUser(
    email: String, passwordHash: String, fullName: String, phone: String?, locale: String, roles: [String],
    session: NewRefreshToken?
  ) async throws -> (user: UserRecord, refreshExpiresAt: Date?)? {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        INSERT INTO users (email, password_hash, full_name, phone, locale, roles, email_verified_at)
        VALUES (lower(\(email)), \(passwordHash), \(fullName), \(phone), \(locale), \(roles), now())
        ON CONFLICT DO NOTHING
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      var inserted: UserRecord?
      for try await row in rows.decode(UserRecord.Row.self) { inserted = UserRecord(row) }
      guard let user = inserted else { return nil }
      try await Self.appendRegistered(user, outbox: outbox, on: connection, logger: logger)
      var expiresAt: Date?
      if let session {
        expiresAt = try await Self.insertRefreshToken(session, userID: user.id, on: connection, logger: logger)
      }
      return (user, expiresAt)
    }
  }

  /// Register's transaction: a new account with its UserRegistered event and its first
  /// verification link, or, for a taken email, RegistrationAttempted for the existing account.
  func register(
    email: String, passwordHash: String, fullName: String, phone: String?, locale: String,
    verification: NewVerification
  ) async throws {
    let outbox = self.outbox
    let logger = self.logger
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        INSERT INTO users (email, password_hash, full_name, phone, locale, roles)
        VALUES (lower(\(email)), \(passwordHash), \(fullName), \(phone), \(locale), \(["customer"]))
        ON CONFLICT DO NOTHING
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      if let user = try await Self.firstUser(rows) {
        try await Self.appendRegistered(user, outbox: outbox, on: connection, logger: logger)
        try await Self.insertVerification(
          verification, userID: user.id, email: user.email, atRegistration: true, outbox: outbox, on: connection,
          logger: logger)
        return
      }
      let existing = try await connection.query(
        "SELECT id, email, email_verified_at IS NOT NULL FROM users WHERE lower(email) = lower(\(email))",
        logger: logger)
      for try await (id, storedEmail, verified) in existing.decode((UUID, String, Bool).self) {
        let event = Mart_User_V1_RegistrationAttempted.with {
          $0.userID = id.uuidString.lowercased()
          $0.email = storedEmail
          $0.attemptTime = Google_Protobuf_Timestamp(date: Date())
          $0.emailVerified = verified
        }
        try await outbox.append(
          event, aggregateType: "user", aggregateID: id.uuidString.lowercased(), on: connection, logger: logger)
      }
    }
  }

  /// A new verification link for the account with this email, if it has one that is not verified
  /// yet; nothing otherwise.
  func resendVerification(email: String, verification: NewVerification) async throws {
    let outbox = self.outbox
    let logger = self.logger
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        SELECT id, email FROM users
        WHERE lower(email) = lower(\(email)) AND email_verified_at IS NULL AND disabled_at IS NULL
        FOR UPDATE
        """, logger: logger)
      for try await (id, storedEmail) in rows.decode((UUID, String).self) {
        try await Self.insertVerification(
          verification, userID: id, email: storedEmail, atRegistration: false, outbox: outbox, on: connection,
          logger: logger)
      }
    }
  }

  /// Spends a verification token and marks its account's email verified; nil when the token is
  /// unknown, spent, expired, or for an address the account no longer has.
  func verifyEmail(tokenHash: Data) async throws -> UserRecord? {
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let spent = try await connection.query(
        """
        UPDATE email_verifications v SET used_at = now()
        FROM users u
        WHERE v.token_hash = \(tokenHash) AND v.used_at IS NULL AND v.expires_at > now()
          AND u.id = v.user_id AND lower(u.email) = lower(v.email) AND u.disabled_at IS NULL
        RETURNING v.user_id
        """, logger: logger)
      var userID: UUID?
      for try await id in spent.decode(UUID.self) { userID = id }
      guard let userID else { return nil }
      let rows = try await connection.query(
        """
        UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = \(userID)
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      return try await Self.firstUser(rows)
    }
  }

  private static func insertVerification(
    _ verification: NewVerification, userID: UUID, email: String, atRegistration: Bool, outbox: Outbox,
    on connection: PostgresConnection, logger: Logger
  ) async throws {
    let lifetime = Double(verification.lifetime.components.seconds)
    let rows = try await connection.query(
      """
      INSERT INTO email_verifications (token_hash, user_id, email, expires_at)
      VALUES (\(verification.hash), \(userID), \(email), now() + make_interval(secs => \(lifetime)))
      RETURNING expires_at
      """, logger: logger)
    var expiresAt = Date()
    for try await value in rows.decode(Date.self) { expiresAt = value }
    let event = Mart_User_V1_EmailVerificationRequested.with {
      $0.userID = userID.uuidString.lowercased()
      $0.email = email
      $0.token = verification.token
      $0.expireTime = Google_Protobuf_Timestamp(date: expiresAt)
      $0.atRegistration = atRegistration
    }
    try await outbox.append(
      event, aggregateType: "user", aggregateID: userID.uuidString.lowercased(), on: connection, logger: logger)
  }

  private static func appendRegistered(
    _ user: UserRecord, outbox: Outbox, on connection: PostgresConnection, logger: Logger
  ) async throws {
    let event = Mart_User_V1_UserRegistered.with {
      $0.userID = user.id.uuidString.lowercased()
      $0.email = user.email
      $0.fullName = user.fullName
      $0.phone = user.phone ?? ""
      $0.roles = user.protoRoles
      $0.registerTime = Google_Protobuf_Timestamp(date: user.createdAt)
      $0.locale = user.locale
      $0.version = user.version
    }
    try await outbox.append(
      event, aggregateType: "user", aggregateID: user.id.uuidString.lowercased(), on: connection, logger: logger)
  }

  /// The account with this email (any case) and its password hash.
  func credentials(email: String) async throws -> (user: UserRecord, passwordHash: String)? {
    try await credentials(
      where: "SELECT \(unescaped: UserRecord.columns), password_hash FROM users WHERE lower(email) = lower(\(email))")
  }

  /// The account with this id and its password hash (ChangePassword).
  func credentials(userID: UUID) async throws -> (user: UserRecord, passwordHash: String)? {
    try await credentials(
      where: "SELECT \(unescaped: UserRecord.columns), password_hash FROM users WHERE id = \(userID)")
  }

  private func credentials(where query: PostgresQuery) async throws -> (user: UserRecord, passwordHash: String)? {
    let rows = try await database.query(query, logger: logger)
    var result: (UserRecord, String)?
    for try await row in rows.decode(
      (UUID, String, String, String?, [String], Date?, Date?, Date, Date, Date?, String, Int64, String).self)
    {
      let (a, b, c, d, e, f, g, h, i, j, k, l, hash) = row
      result = (UserRecord((a, b, c, d, e, f, g, h, i, j, k, l)), hash)
    }
    return result
  }

  func user(id: UUID) async throws -> UserRecord? {
    let rows = try await database.query(
      "SELECT \(unescaped: UserRecord.columns) FROM users WHERE id = \(id)", logger: logger)
    return try await Self.firstUser(rows)
  }

  /// Records a successful login (and a stronger password hash, if one was made) and starts a new
  /// session. Nil if the account is gone or disabled.
  func completeLogin(userID: UUID, newPasswordHash: String?, session: NewRefreshToken) async throws
    -> (user: UserRecord, refreshExpiresAt: Date)?
  {
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        UPDATE users SET last_login_at = now(), password_hash = coalesce(\(newPasswordHash), password_hash)
        WHERE id = \(userID) AND disabled_at IS NULL
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let user = try await Self.firstUser(rows) else { return nil }
      let expiresAt = try await Self.insertRefreshToken(session, userID: user.id, on: connection, logger: logger)
      return (user, expiresAt)
    }
  }

  /// Replaces the paths given (non-nil) of a user's profile, and emits UserUpdated when that
  /// changed anything (the version tells).
  func updateProfile(userID: UUID, fullName: String?, phone: String??, locale: String?) async throws -> UserRecord? {
    let setName = fullName != nil
    let setPhone = phone != nil
    let newPhone: String? = phone ?? nil
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let before = try await connection.query(
        "SELECT version FROM users WHERE id = \(userID) FOR UPDATE", logger: logger)
      var previousVersion: Int64?
      for try await version in before.decode(Int64.self) { previousVersion = version }
      guard previousVersion != nil else { return nil }
      let rows = try await connection.query(
        """
        UPDATE users SET
          full_name = CASE WHEN \(setName) THEN \(fullName ?? "") ELSE full_name END,
          phone = CASE WHEN \(setPhone) THEN \(newPhone) ELSE phone END,
          locale = coalesce(\(locale), locale),
          updated_at = now()
        WHERE id = \(userID)
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let user = try await Self.firstUser(rows) else { return nil }
      if user.version != previousVersion {
        try await Self.appendUpdated(user, previousRoles: [], outbox: outbox, on: connection, logger: logger)
      }
      return user
    }
  }

  /// UserUpdated for a change made in this transaction.
  static func appendUpdated(
    _ user: UserRecord, previousRoles: [Mart_User_V1_User.Role], outbox: Outbox, on connection: PostgresConnection,
    logger: Logger
  ) async throws {
    try await outbox.append(
      user.updatedEvent(previousRoles: previousRoles), aggregateType: "user",
      aggregateID: user.id.uuidString.lowercased(), on: connection, logger: logger)
  }

  /// Users, newest first, after the page token's position.
  func listUsers(query: String, role: String?, after cursor: ListCursor?, limit: Int) async throws -> [(
    UserRecord, micros: Int64
  )] {
    let hasCursor = cursor != nil
    let cursorMicros = cursor?.micros ?? 0
    let cursorID = cursor?.id ?? UUID()
    let rows = try await database.query(
      """
      SELECT \(unescaped: UserRecord.columns), floor(extract(epoch FROM created_at) * 1000000)::int8
      FROM users
      WHERE (\(query) = '' OR strpos(lower(email), lower(\(query))) > 0
             OR strpos(lower(full_name), lower(\(query))) > 0)
        AND (\(role)::text IS NULL OR \(role)::text = ANY (roles))
        AND (NOT \(hasCursor)
             OR (created_at, id) < ('epoch'::timestamptz + \(cursorMicros) * interval '1 microsecond', \(cursorID)))
      ORDER BY created_at DESC, id DESC
      LIMIT \(limit)
      """, logger: logger)
    var result: [(UserRecord, micros: Int64)] = []
    for try await row in rows.decode(
      (UUID, String, String, String?, [String], Date?, Date?, Date, Date, Date?, String, Int64, Int64).self)
    {
      let (a, b, c, d, e, f, g, h, i, j, k, l, micros) = row
      result.append((UserRecord((a, b, c, d, e, f, g, h, i, j, k, l)), micros))
    }
    return result
  }

  /// Replaces a user's roles (CUSTOMER always kept, `service` never granted nor taken here),
  /// refusing to remove the last enabled admin. The admins' rows are locked (in id order, so two
  /// concurrent calls cannot deadlock), so two concurrent demotions cannot both pass the check.
  func setRoles(userID: UUID, granting requested: Set<String>) async throws -> SetRolesOutcome {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        SELECT id, roles, disabled_at IS NULL FROM users
        WHERE id = \(userID) OR 'admin' = ANY (roles)
        ORDER BY id FOR UPDATE
        """, logger: logger)
      var target: [String]?
      var otherActiveAdmins = 0
      for try await (id, roles, enabled) in rows.decode((UUID, [String], Bool).self) {
        if id == userID {
          target = roles
        } else if enabled && roles.contains(MartRole.admin) {
          otherActiveAdmins += 1
        }
      }
      guard let current = target else { return .notFound }
      var newRoles = [MartRole.customer]
      if requested.contains(MartRole.admin) { newRoles.append(MartRole.admin) }
      if current.contains(MartRole.service) { newRoles.append(MartRole.service) }
      if current.contains(MartRole.admin) && !newRoles.contains(MartRole.admin) && otherActiveAdmins == 0 {
        return .lastAdmin
      }
      let updated = try await connection.query(
        """
        UPDATE users SET roles = \(newRoles),
          updated_at = CASE WHEN roles = \(newRoles) THEN updated_at ELSE now() END
        WHERE id = \(userID)
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let user = try await Self.firstUser(updated) else { return .notFound }
      if Set(user.roles) != Set(current) {
        try await Self.appendUpdated(
          user, previousRoles: UserRecord.protoRoles(current), outbox: outbox, on: connection, logger: logger)
      }
      return .updated(user)
    }
  }

  /// Adds the admin role to the account with this email, sets its password hash, and revokes
  /// every session it has (for `mart users create-admin --promote-existing`), in one transaction.
  func promoteToAdmin(email: String, resettingPasswordTo passwordHash: String) async throws -> PromotionOutcome {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        "SELECT \(unescaped: UserRecord.columns) FROM users WHERE lower(email) = lower(\(email)) FOR UPDATE",
        logger: logger)
      guard let user = try await Self.firstUser(rows) else { return .notFound }
      if user.isAdmin { return .alreadyAdmin(user) }
      let updated = try await connection.query(
        """
        UPDATE users SET roles = array_append(roles, 'admin'), password_hash = \(passwordHash), updated_at = now()
        WHERE id = \(user.id)
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let promoted = try await Self.firstUser(updated) else { return .notFound }
      try await Self.revokeSessions(of: user.id, on: connection, logger: logger)
      try await Self.appendUpdated(
        promoted, previousRoles: user.protoRoles, outbox: outbox, on: connection, logger: logger)
      try await Self.appendPasswordChanged(promoted, method: .operator, outbox: outbox, on: connection, logger: logger)
      return .promoted(promoted)
    }
  }

  // MARK: - Passwords

  /// A password-reset link for the account with this email, if it has one that is not disabled;
  /// nothing otherwise (the caller answers the same either way).
  func requestPasswordReset(email: String, reset: NewVerification) async throws {
    let outbox = self.outbox
    let logger = self.logger
    let lifetime = Double(reset.lifetime.components.seconds)
    try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        INSERT INTO password_resets (token_hash, user_id, email, expires_at)
        SELECT \(reset.hash), id, email, now() + make_interval(secs => \(lifetime))
        FROM users WHERE lower(email) = lower(\(email)) AND disabled_at IS NULL
        RETURNING user_id, email, expires_at
        """, logger: logger)
      for try await (userID, storedEmail, expiresAt) in rows.decode((UUID, String, Date).self) {
        let event = Mart_User_V1_PasswordResetRequested.with {
          $0.userID = userID.uuidString.lowercased()
          $0.email = storedEmail
          $0.token = reset.token
          $0.expireTime = Google_Protobuf_Timestamp(date: expiresAt)
        }
        try await outbox.append(
          event, aggregateType: "user", aggregateID: userID.uuidString.lowercased(), on: connection, logger: logger)
      }
    }
  }

  /// The address a password-reset token was sent to, while it can still be spent.
  func passwordResetEmail(tokenHash: Data) async throws -> String? {
    let rows = try await database.query(
      """
      SELECT r.email FROM password_resets r JOIN users u ON u.id = r.user_id
      WHERE r.token_hash = \(tokenHash) AND r.used_at IS NULL AND r.expires_at > now()
        AND lower(u.email) = lower(r.email) AND u.disabled_at IS NULL
      """, logger: logger)
    for try await email in rows.decode(String.self) { return email }
    return nil
  }

  /// Spends a password-reset token and gives its account the new password hash, in one
  /// transaction: the email counts as verified (the link reached the mailbox), every other reset
  /// link of the account is spent, every session is revoked, and PasswordChanged is emitted. Nil
  /// when the token is unknown, spent, expired, or for an address the account no longer has.
  func resetPassword(tokenHash: Data, passwordHash: String) async throws -> UserRecord? {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let spent = try await connection.query(
        """
        UPDATE password_resets r SET used_at = now()
        FROM users u
        WHERE r.token_hash = \(tokenHash) AND r.used_at IS NULL AND r.expires_at > now()
          AND u.id = r.user_id AND lower(u.email) = lower(r.email) AND u.disabled_at IS NULL
        RETURNING r.user_id
        """, logger: logger)
      var userID: UUID?
      for try await id in spent.decode(UUID.self) { userID = id }
      guard let userID else { return nil }
      try await connection.query(
        "UPDATE password_resets SET used_at = now() WHERE user_id = \(userID) AND used_at IS NULL", logger: logger)
      let rows = try await connection.query(
        """
        UPDATE users SET password_hash = \(passwordHash), email_verified_at = coalesce(email_verified_at, now())
        WHERE id = \(userID)
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let user = try await Self.firstUser(rows) else { return nil }
      try await Self.revokeSessions(of: userID, on: connection, logger: logger)
      try await Self.appendPasswordChanged(user, method: .reset, outbox: outbox, on: connection, logger: logger)
      return user
    }
  }

  /// ChangePassword's transaction: the new hash, if the account still has the hash the current
  /// password was checked against (a concurrent change wins, and this one is refused); every
  /// session revoked; a new one started; PasswordChanged emitted. Nil if the account is gone,
  /// disabled, or its password changed meanwhile.
  func changePassword(userID: UUID, from checkedHash: String, to passwordHash: String, session: NewRefreshToken)
    async throws -> (user: UserRecord, refreshExpiresAt: Date)?
  {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        UPDATE users SET password_hash = \(passwordHash)
        WHERE id = \(userID) AND password_hash = \(checkedHash) AND disabled_at IS NULL
        RETURNING \(unescaped: UserRecord.columns)
        """, logger: logger)
      guard let user = try await Self.firstUser(rows) else { return nil }
      try await Self.revokeSessions(of: userID, on: connection, logger: logger)
      let expiresAt = try await Self.insertRefreshToken(session, userID: userID, on: connection, logger: logger)
      try await Self.appendPasswordChanged(user, method: .change, outbox: outbox, on: connection, logger: logger)
      return (user, expiresAt)
    }
  }

  static func appendPasswordChanged(
    _ user: UserRecord, method: Mart_User_V1_PasswordChanged.Method, outbox: Outbox,
    on connection: PostgresConnection, logger: Logger
  ) async throws {
    let event = Mart_User_V1_PasswordChanged.with {
      $0.userID = user.id.uuidString.lowercased()
      $0.email = user.email
      $0.method = method
      $0.changeTime = Google_Protobuf_Timestamp(date: Date())
    }
    try await outbox.append(
      event, aggregateType: "user", aggregateID: user.id.uuidString.lowercased(), on: connection, logger: logger)
  }

  // MARK: - Refresh tokens

  /// Starts a session for a user who is already signed in (Register's own session is stored with
  /// the account).
  @discardableResult
  static func insertRefreshToken(
    _ token: NewRefreshToken, userID: UUID, on connection: PostgresConnection, logger: Logger
  ) async throws -> Date {
    let seconds = Double(token.lifetime.components.seconds)
    let rows = try await connection.query(
      """
      INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at)
      VALUES (\(token.id), \(token.familyID), \(userID), \(token.hash), now() + make_interval(secs => \(seconds)))
      RETURNING expires_at
      """, logger: logger)
    for try await expiresAt in rows.decode(Date.self) { return expiresAt }
    throw PostgresStoreError("INSERT INTO refresh_tokens returned no row")
  }

  /// Spends a refresh token and stores its successor in the same family, atomically (the spending
  /// UPDATE of the schema's comment). Changes to one user's refresh tokens are serialised
  /// (`lockSessions`), so of two concurrent calls with one token the second finds it used, which
  /// is reuse: the family, the first call's successor included, is revoked.
  /// The successor never outlives the session: `sessionLifetime` from its family's first token.
  /// A session past that end is over (its family revoked): sign in again.
  func rotate(presentedHash: Data, successorHash: Data, lifetime: Duration, sessionLifetime: Duration) async throws
    -> RotationOutcome
  {
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      guard try await Self.lockSessions(ofTokenHash: presentedHash, on: connection, logger: logger) != nil else {
        return .invalid
      }
      let spent = try await connection.query(
        """
        UPDATE refresh_tokens SET used_at = now()
        WHERE token_hash = \(presentedHash) AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
        RETURNING id, family_id, user_id
        """, logger: logger)
      var found: (id: UUID, family: UUID, user: UUID)?
      for try await row in spent.decode((UUID, UUID, UUID).self) { found = row }

      guard let (tokenID, familyID, userID) = found else {
        let rows = try await connection.query(
          "SELECT family_id, used_at IS NOT NULL FROM refresh_tokens WHERE token_hash = \(presentedHash)",
          logger: logger)
        var state: (family: UUID, used: Bool)?
        for try await row in rows.decode((UUID, Bool).self) { state = row }
        guard let state, state.used else { return .invalid }
        try await Self.revokeFamily(state.family, on: connection, logger: logger)
        return .reused
      }

      let users = try await connection.query(
        "SELECT \(unescaped: UserRecord.columns) FROM users WHERE id = \(userID)", logger: logger)
      guard let user = try await Self.firstUser(users), user.disabledAt == nil else {
        try await Self.revokeFamily(familyID, on: connection, logger: logger)
        return .invalid
      }
      let started = try await connection.query(
        """
        SELECT extract(epoch FROM min(created_at) + make_interval(secs => \(sessionLifetime.timeInterval)) - now())::float8
        FROM refresh_tokens WHERE family_id = \(familyID)
        """, logger: logger)
      var secondsLeft = 0.0
      for try await value in started.decode(Double.self) { secondsLeft = value }
      guard secondsLeft > 1 else {
        try await Self.revokeFamily(familyID, on: connection, logger: logger)
        return .invalid
      }
      let successor = NewRefreshToken(
        familyID: familyID, hash: successorHash, lifetime: min(lifetime, .seconds(secondsLeft)))
      let expiresAt = try await Self.insertRefreshToken(successor, userID: userID, on: connection, logger: logger)
      try await connection.query(
        "UPDATE refresh_tokens SET replaced_by = \(successor.id) WHERE id = \(tokenID)", logger: logger)
      return .rotated(user, expiresAt: expiresAt)
    }
  }

  /// Revokes the presented token's family; with `allSessions`, every token of its user (only if
  /// the presented token is still live: an old, spent token ends its own family only). Unknown
  /// tokens are ignored: logout is idempotent.
  func revoke(presentedHash: Data, allSessions: Bool) async throws {
    let logger = self.logger
    try await database.transaction(logger: logger) { connection in
      guard let userID = try await Self.lockSessions(ofTokenHash: presentedHash, on: connection, logger: logger)
      else { return }
      let rows = try await connection.query(
        """
        SELECT family_id, used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
        FROM refresh_tokens WHERE token_hash = \(presentedHash)
        """, logger: logger)
      var found: (family: UUID, live: Bool)?
      for try await row in rows.decode((UUID, Bool).self) { found = row }
      guard let found else { return }
      if allSessions && found.live {
        try await connection.query(
          "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = \(userID) AND revoked_at IS NULL",
          logger: logger)
      } else {
        try await Self.revokeFamily(found.family, on: connection, logger: logger)
      }
    }
  }

  /// Revokes every session of a user, under the sessions lock (`lockSessions`), so that a Refresh
  /// in flight cannot store a successor the revocation misses.
  static func revokeSessions(of userID: UUID, on connection: PostgresConnection, logger: Logger) async throws {
    try await lockSessions(ofUser: userID, on: connection, logger: logger)
    try await connection.query(
      "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = \(userID) AND revoked_at IS NULL",
      logger: logger)
  }

  static func revokeFamily(_ familyID: UUID, on connection: PostgresConnection, logger: Logger) async throws {
    try await connection.query(
      "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = \(familyID) AND revoked_at IS NULL",
      logger: logger)
  }

  /// Serialises, until the end of the transaction, every change to the refresh tokens of the user
  /// who holds this token (a transaction-scoped advisory lock); returns that user, nil for an
  /// unknown token. Row locks alone are not enough: concurrent reuses revoking one family, queued
  /// behind spends waiting on the same row, can deadlock; and a Logout(all_sessions) racing a
  /// Refresh would not see the successor the Refresh inserts.
  static func lockSessions(ofTokenHash hash: Data, on connection: PostgresConnection, logger: Logger) async throws
    -> UUID?
  {
    let rows = try await connection.query(
      "SELECT user_id FROM refresh_tokens WHERE token_hash = \(hash)", logger: logger)
    var userID: UUID?
    for try await id in rows.decode(UUID.self) { userID = id }
    guard let userID else { return nil }
    try await lockSessions(ofUser: userID, on: connection, logger: logger)
    return userID
  }

  static func lockSessions(ofUser userID: UUID, on connection: PostgresConnection, logger: Logger) async throws {
    try await connection.query(
      "SELECT pg_advisory_xact_lock(hashtextextended('mart.user.sessions:' || \(userID)::text, 0))",
      logger: logger)
  }

  // MARK: - Address book

  /// A user's addresses, default first, then newest first, after the page token's position.
  func addresses(userID: UUID, after cursor: ListCursor?, limit: Int) async throws -> [AddressRecord] {
    let hasCursor = cursor != nil
    let cursorDefault = cursor?.isDefault ?? false
    let cursorMicros = cursor?.micros ?? 0
    let cursorID = cursor?.id ?? UUID()
    let rows = try await database.query(
      """
      SELECT \(unescaped: AddressRecord.columns) FROM addresses
      WHERE user_id = \(userID)
        AND (NOT \(hasCursor)
             OR (is_default, created_at, id)
                < (\(cursorDefault), 'epoch'::timestamptz + \(cursorMicros) * interval '1 microsecond', \(cursorID)))
      ORDER BY is_default DESC, created_at DESC, id DESC
      LIMIT \(limit)
      """, logger: logger)
    var result: [AddressRecord] = []
    for try await row in rows.decode(AddressRecord.Row.self) { result.append(AddressRecord(row)) }
    return result
  }

  /// Saves an address; it becomes the default when asked, or when the user has no default yet.
  /// The user's row is locked, so concurrent changes to one address book are serialised. Nil if
  /// the user does not exist.
  func addAddress(userID: UUID, _ input: Validation.AddressInput, setDefault: Bool) async throws -> AddressRecord? {
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let locked = try await connection.query("SELECT id FROM users WHERE id = \(userID) FOR UPDATE", logger: logger)
      var exists = false
      for try await _ in locked.decode(UUID.self) { exists = true }
      guard exists else { return nil }
      let defaults = try await connection.query(
        "SELECT count(*)::int8 FROM addresses WHERE user_id = \(userID) AND is_default", logger: logger)
      var hasDefault = false
      for try await count in defaults.decode(Int64.self) { hasDefault = count > 0 }
      let makeDefault = setDefault || !hasDefault
      if makeDefault && hasDefault {
        // The unique index is checked row by row: clear the old default first.
        try await connection.query(
          "UPDATE addresses SET is_default = false WHERE user_id = \(userID) AND is_default", logger: logger)
      }
      let address = input.address
      let lines = address.lines
      let line2: String? = lines.count > 1 ? lines[1] : nil
      let line3: String? = lines.count > 2 ? lines[2] : nil
      let rows = try await connection.query(
        """
        INSERT INTO addresses (user_id, label, recipient_name, line1, line2, line3, city, region, postal_code,
                               country_code, phone, is_default)
        VALUES (\(userID), \(input.label), \(address.recipientName), \(lines.first ?? ""), \(line2), \(line3),
                \(address.city), \(address.region), \(address.postalCode), \(address.countryCode), \(address.phone),
                \(makeDefault))
        RETURNING \(unescaped: AddressRecord.columns)
        """, logger: logger)
      for try await row in rows.decode(AddressRecord.Row.self) { return AddressRecord(row) }
      throw PostgresStoreError("INSERT INTO addresses returned no row")
    }
  }

  /// Deletes one of the user's addresses; if it was the default, the newest remaining one
  /// becomes the default. False if the user has no such address.
  func deleteAddress(userID: UUID, addressID: UUID) async throws -> Bool {
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      try await connection.query("SELECT id FROM users WHERE id = \(userID) FOR UPDATE", logger: logger)
      let deleted = try await connection.query(
        "DELETE FROM addresses WHERE id = \(addressID) AND user_id = \(userID) RETURNING is_default",
        logger: logger)
      var wasDefault: Bool?
      for try await value in deleted.decode(Bool.self) { wasDefault = value }
      guard let wasDefault else { return false }
      if wasDefault {
        try await connection.query(
          """
          UPDATE addresses SET is_default = true
          WHERE id = (SELECT id FROM addresses WHERE user_id = \(userID) ORDER BY created_at DESC, id DESC LIMIT 1)
          """, logger: logger)
      }
      return true
    }
  }

  // MARK: - Helpers

  static func firstUser(_ rows: PostgresRowSequence) async throws -> UserRecord? {
    var result: UserRecord?
    for try await row in rows.decode(UserRecord.Row.self) where result == nil { result = UserRecord(row) }
    return result
  }
}
