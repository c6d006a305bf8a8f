import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime
import SwiftProtobuf

/// The gRPC handlers of mart.user.v1.UserService.
///
/// `ServerAuthInterceptor` has checked the token and the method's access level before a handler
/// runs; handlers only check ownership (a customer acts on `Caller.requiredUserID()`'s data).
struct UserRPCService: Mart_User_V1_UserService.SimpleServiceProtocol {
  let options: UserServiceOptions
  let auth: AuthConfiguration
  let store: UserStore
  let accounts: UserAccounts
  let hasher: PasswordHasher
  let keys: SigningKeyRing
  let throttle: LoginThrottle
  let quotas: RequestQuota
  let logger: Logger

  init(context: ServiceContext, options: UserServiceOptions) {
    self.options = options
    self.auth = context.auth
    self.logger = context.logger
    let store = UserStore(database: context.database, outbox: context.outbox, logger: context.logger)
    let hasher = PasswordHasher(cost: options.passwordCost, queue: options.hashingQueue)
    self.store = store
    self.hasher = hasher
    self.accounts = UserAccounts(store: store, hasher: hasher)
    self.keys = SigningKeyRing(
      database: context.database,
      policy: SigningKeyPolicy(
        rotation: options.keyRotation, accessTokenLifetime: options.accessTokenLifetime,
        cacheTTL: options.signingKeyCacheTTL),
      encryption: options.keyEncryption, logger: context.logger)
    self.throttle = LoginThrottle(policy: options.loginThrottle, database: context.database, logger: context.logger)
    self.quotas = RequestQuota(database: context.database, logger: context.logger)
  }

  // MARK: - Authentication

  func register(request: Mart_User_V1_RegisterRequest, context: ServerContext) async throws
    -> Mart_User_V1_RegisterResponse
  {
    // Cheap checks first: no hashing for a request that will be refused anyway.
    let account = UserAccounts.NewAccount(
      email: request.email, password: request.password, fullName: request.fullName, phone: request.phone,
      locale: request.locale)
    let valid = try UserAccounts.validate(account)
    // Per email, taken or not: so that the owner of a taken one cannot be flooded with "someone
    // tried to register" mail. Per address is the gateway's register quota.
    if let wait = try await quotas.take("register:\(valid.email)", limit: 5, per: .seconds(3600)) {
      throw UserServiceError.rateLimited(retryAfter: wait, "too many registrations for this email")
    }
    let email: String
    do {
      email = try await accounts.register(account, verificationLifetime: options.emailVerificationLifetime)
    } catch let busy as PasswordHashingQueue.Busy {
      // Refused for the service's load, not the caller's: the attempt does not count, or a client
      // retrying after Retry-After would use up the email's quota on refusals.
      try? await quotas.giveBack("register:\(valid.email)")
      throw busy
    }
    logger.info("registration accepted")
    return .with { $0.email = email }
  }

  func verifyEmail(request: Mart_User_V1_VerifyEmailRequest, context: ServerContext) async throws
    -> Mart_User_V1_VerifyEmailResponse
  {
    guard !request.token.isEmpty else { throw APIStatus.invalid("token", "is required") }
    guard let hash = SecretTokens.hash(request.token), let user = try await store.verifyEmail(tokenHash: hash) else {
      throw UserServiceError.invalidVerificationToken
    }
    logger.info("email verified", metadata: ["user_id": "\(user.id.uuidString.lowercased())"])
    return .with { $0.user = user.proto }
  }

  func resendVerificationEmail(request: Mart_User_V1_ResendVerificationEmailRequest, context: ServerContext)
    async throws -> Mart_User_V1_ResendVerificationEmailResponse
  {
    let email: String
    switch Validation.normalizedEmail(request.email) {
    case .success(let value): email = value
    case .failure(let violation): throw UserServiceError.invalid([violation])
    }
    if let wait = try await quotas.take("resend:\(email)", limit: 3, per: .seconds(3600)) {
      throw UserServiceError.rateLimited(retryAfter: wait, "too many verification emails for this address")
    }
    let verification = SecretTokens.make()
    try await store.resendVerification(
      email: email,
      verification: NewVerification(
        token: verification.token, hash: verification.hash, lifetime: options.emailVerificationLifetime))
    return .init()
  }

  // MARK: - Passwords

  func requestPasswordReset(request: Mart_User_V1_RequestPasswordResetRequest, context: ServerContext)
    async throws -> Mart_User_V1_RequestPasswordResetResponse
  {
    let email: String
    switch Validation.normalizedEmail(request.email) {
    case .success(let value): email = value
    case .failure(let violation): throw UserServiceError.invalid([violation])
    }
    if let wait = try await quotas.take("reset:\(email)", limit: 3, per: .seconds(3600)) {
      throw UserServiceError.rateLimited(retryAfter: wait, "too many password-reset emails for this address")
    }
    let reset = SecretTokens.make()
    try await store.requestPasswordReset(
      email: email,
      reset: NewVerification(token: reset.token, hash: reset.hash, lifetime: options.passwordResetLifetime))
    return .init()
  }

  func resetPassword(request: Mart_User_V1_ResetPasswordRequest, context: ServerContext) async throws
    -> Mart_User_V1_ResetPasswordResponse
  {
    guard !request.token.isEmpty else { throw APIStatus.invalid("token", "is required") }
    guard let tokenHash = SecretTokens.hash(request.token),
      let email = try await store.passwordResetEmail(tokenHash: tokenHash)
    else { throw UserServiceError.invalidResetToken }
    let policy = Validation.passwordViolations(request.newPassword, email: email).map {
      FieldViolation("new_password", $0.reason)
    }
    if !policy.isEmpty { throw UserServiceError.invalid(policy) }
    let hash = try await hasher.hash(request.newPassword)
    // Spent meanwhile (a second click, a concurrent reset): the same answer as an unknown token.
    guard let user = try await store.resetPassword(tokenHash: tokenHash, passwordHash: hash) else {
      throw UserServiceError.invalidResetToken
    }
    logger.notice("password reset with an emailed link", metadata: ["user_id": "\(user.id.uuidString.lowercased())"])
    return .with { $0.email = user.email }
  }

  func changePassword(request: Mart_User_V1_ChangePasswordRequest, context: ServerContext) async throws
    -> Mart_User_V1_ChangePasswordResponse
  {
    let userID = try Caller.requiredUserID()
    var violations: [FieldViolation] = []
    if request.currentPassword.isEmpty { violations.append(.init("current_password", "is required")) }
    if request.currentPassword.utf8.count > 4096 { violations.append(.init("current_password", "is too long")) }
    if !violations.isEmpty { throw UserServiceError.invalid(violations) }
    guard let (account, currentHash) = try await store.credentials(userID: userID), account.disabledAt == nil else {
      throw UserServiceError.invalidCredentials
    }
    let policy = Validation.passwordViolations(request.newPassword, email: account.email).map {
      FieldViolation("new_password", $0.reason)
    }
    if !policy.isEmpty { throw UserServiceError.invalid(policy) }
    // A stolen access token must not become a way to guess the password: wrong current passwords
    // count against the login throttle, from this client's address, like failed sign-ins.
    let accountKey = LoginThrottle.accountKey(account.email)
    let clientAddress = ForwardedClient.clientAddress(peer: context.remotePeer).map(ClientAddress.key)
    let attempt: LoginThrottle.Attempt
    switch try await throttle.admit(account: accountKey, address: clientAddress) {
    case .refused(let wait): throw UserServiceError.rateLimited(retryAfter: wait)
    case .admitted(let admitted): attempt = admitted
    }
    let matches: Bool
    do {
      matches = try await hasher.verify(request.currentPassword, against: currentHash)
    } catch {
      try? await throttle.withdraw(attempt)
      throw error
    }
    // A wrong current password counts as a failed sign-in (the attempt's count stands).
    guard matches else { throw UserServiceError.invalidCredentials }
    try await throttle.succeeded(attempt)
    let newHash = try await hasher.hash(request.newPassword)
    let key = try await keys.signingKey()
    let refresh = SecretTokens.make()
    guard
      let (user, refreshExpiresAt) = try await store.changePassword(
        userID: userID, from: currentHash, to: newHash,
        session: NewRefreshToken(familyID: UUID(), hash: refresh.hash, lifetime: options.refreshTokenLifetime))
    else {
      throw RPCError(code: .aborted, message: "the password changed meanwhile; sign in again and retry")
    }
    logger.notice("password changed", metadata: ["user_id": "\(userID.uuidString.lowercased())"])
    return try .with {
      $0.tokens = try tokens(for: user, key: key, refreshToken: refresh.token, refreshExpiresAt: refreshExpiresAt)
    }
  }

  func login(request: Mart_User_V1_LoginRequest, context: ServerContext) async throws -> Mart_User_V1_LoginResponse {
    try await login(
      request, clientAddress: ForwardedClient.clientAddress(peer: context.remotePeer).map(ClientAddress.key))
  }

  private func login(_ request: Mart_User_V1_LoginRequest, clientAddress: String?) async throws
    -> Mart_User_V1_LoginResponse
  {
    var violations: [FieldViolation] = []
    if request.email.isEmpty { violations.append(.init("email", "is required")) }
    if request.password.isEmpty { violations.append(.init("password", "is required")) }
    if request.password.utf8.count > 4096 { violations.append(.init("password", "is too long")) }
    if !violations.isEmpty { throw UserServiceError.invalid(violations) }

    let email = request.email.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
    let accountKey = LoginThrottle.accountKey(email)
    // Counted before the slow hash, in the statement that says whether to wait: parallel guesses
    // cannot all pass the check before the first of them is counted.
    let attempt: LoginThrottle.Attempt
    switch try await throttle.admit(account: accountKey, address: clientAddress) {
    case .refused(let wait): throw UserServiceError.rateLimited(retryAfter: wait)
    case .admitted(let admitted): attempt = admitted
    }
    // Unknown email and wrong password take the same path and the same time: the password is
    // checked against a dummy hash of the same cost when there is no account.
    let found: (user: UserRecord, passwordHash: String)?
    let matches: Bool
    do {
      found = email.utf8.count <= Validation.maximumEmailLength ? try await store.credentials(email: email) : nil
      matches = try await hasher.verify(request.password, against: found?.passwordHash ?? hasher.dummyHash)
    } catch {
      // The password was never checked (a full hashing queue, the database away): no guess.
      try? await throttle.withdraw(attempt)
      throw error
    }
    // A wrong password against a hash made at a lower cost than today's would answer sooner than
    // an unknown email, which is checked at today's cost: spend the difference, so that timing
    // does not tell which accounts predate a cost change.
    if !matches, let found, hasher.needsRehash(found.passwordHash) {
      _ = try? await hasher.verify(request.password, against: hasher.dummyHash)
    }
    // When the shop requires it, an unverified account fails like a wrong password, after the same
    // work: otherwise Register then Login would tell whether the email was free.
    let refusedUnverified = options.signInRequiresVerifiedEmail && found?.user.emailVerifiedAt == nil
    guard matches, let found, !refusedUnverified else {
      // The attempt's count stands: it was a failure.
      logger.info("login failed", metadata: ["client_address": "\(clientAddress ?? "unknown")"])
      throw UserServiceError.invalidCredentials
    }
    if found.user.disabledAt != nil {
      try await throttle.withdraw(attempt)
      throw RPCError(code: .permissionDenied, message: "this account is disabled")
    }
    try await throttle.succeeded(attempt)
    // A hash made with weaker (older) parameters is replaced while the password is at hand.
    // A full queue skips the rehash: the sign-in itself has succeeded, and the next one rehashes.
    let newHash = hasher.needsRehash(found.passwordHash) ? try? await hasher.hash(request.password) : nil
    let key = try await keys.signingKey()
    let refresh = SecretTokens.make()
    guard
      let (user, refreshExpiresAt) = try await store.completeLogin(
        userID: found.user.id, newPasswordHash: newHash,
        session: NewRefreshToken(familyID: UUID(), hash: refresh.hash, lifetime: options.refreshTokenLifetime))
    else { throw UserServiceError.invalidCredentials }
    return try .with {
      $0.user = user.proto
      $0.tokens = try tokens(for: user, key: key, refreshToken: refresh.token, refreshExpiresAt: refreshExpiresAt)
    }
  }

  func refresh(request: Mart_User_V1_RefreshRequest, context: ServerContext) async throws
    -> Mart_User_V1_RefreshResponse
  {
    guard !request.refreshToken.isEmpty else { throw APIStatus.invalid("refresh_token", "is required") }
    guard let presented = SecretTokens.hash(request.refreshToken) else {
      throw UserServiceError.invalidRefreshToken()
    }
    let key = try await keys.signingKey()
    let successor = SecretTokens.make()
    let outcome = try await store.rotate(
      presentedHash: presented, successorHash: successor.hash, lifetime: options.refreshTokenLifetime,
      sessionLifetime: options.sessionLifetime)
    switch outcome {
    case .rotated(let user, let expiresAt):
      return try .with {
        $0.tokens = try tokens(for: user, key: key, refreshToken: successor.token, refreshExpiresAt: expiresAt)
      }
    case .reused:
      logger.warning("refresh token reused: its session is revoked")
      throw UserServiceError.refreshTokenReused
    case .invalid:
      throw UserServiceError.invalidRefreshToken()
    }
  }

  func logout(request: Mart_User_V1_LogoutRequest, context: ServerContext) async throws
    -> Mart_User_V1_LogoutResponse
  {
    guard !request.refreshToken.isEmpty else { throw APIStatus.invalid("refresh_token", "is required") }
    // Idempotent: a token that cannot be ours has nothing to revoke.
    if let presented = SecretTokens.hash(request.refreshToken) {
      try await store.revoke(presentedHash: presented, allSessions: request.allSessions)
    }
    return Mart_User_V1_LogoutResponse()
  }

  /// The token pair for a signed-in user: an ES256 access token and the given refresh token.
  private func tokens(for user: UserRecord, key: TokenSigningKey, refreshToken: String, refreshExpiresAt: Date)
    throws -> Mart_User_V1_AuthTokens
  {
    let now = Date()
    let issuedAt = Int64(now.timeIntervalSince1970)
    let lifetime = options.accessTokenLifetime.components.seconds
    let accessToken = try key.sign(
      AccessTokenClaims(
        sub: user.id.uuidString.lowercased(), roles: user.tokenRoles, iss: auth.issuer, aud: auth.audience,
        iat: issuedAt, exp: issuedAt + lifetime, emailVerified: user.emailVerifiedAt != nil))
    return .with {
      $0.accessToken = accessToken
      $0.tokenType = "Bearer"
      $0.expiresIn = lifetime
      $0.accessTokenExpireTime = Google_Protobuf_Timestamp(seconds: issuedAt + lifetime)
      $0.refreshToken = refreshToken
      $0.refreshTokenExpireTime = Google_Protobuf_Timestamp(date: refreshExpiresAt)
    }
  }

  // MARK: - The signed-in user

  func getMe(request: Mart_User_V1_GetMeRequest, context: ServerContext) async throws -> Mart_User_V1_User {
    let userID = try Caller.requiredUserID()
    guard let user = try await store.user(id: userID) else { throw APIStatus.notFound("user not found") }
    return user.proto
  }

  func updateMe(request: Mart_User_V1_UpdateMeRequest, context: ServerContext) async throws -> Mart_User_V1_User {
    let userID = try Caller.requiredUserID()
    let paths = request.updateMask.paths
    guard request.hasUpdateMask, !paths.isEmpty else {
      throw APIStatus.invalid("update_mask", "is required: list the fields to update (full_name, phone, locale)")
    }
    let unknown = paths.filter { !["full_name", "phone", "locale"].contains($0) }
    guard unknown.isEmpty else {
      throw APIStatus.invalid(
        "update_mask", "cannot update \(unknown.joined(separator: ", ")); updatable: full_name, phone, locale")
    }
    var violations: [FieldViolation] = []
    var fullName: String?
    var phone: String??
    var locale: String?
    if paths.contains("locale") {
      switch Validation.locale(request.user.locale, field: "user.locale") {
      case .success(let value): locale = value
      case .failure(let violation): violations.append(violation)
      }
    }
    if paths.contains("full_name") {
      switch Validation.fullName(request.user.fullName, field: "user.full_name") {
      case .success(let value): fullName = value
      case .failure(let violation): violations.append(violation)
      }
    }
    if paths.contains("phone") {
      switch Validation.phone(request.user.phone, field: "user.phone") {
      case .success(let value): phone = .some(value)
      case .failure(let violation): violations.append(violation)
      }
    }
    if !violations.isEmpty { throw APIStatus.invalid(violations) }
    guard
      let user = try await store.updateProfile(
        userID: userID, fullName: fullName, phone: phone, locale: locale)
    else {
      throw APIStatus.notFound("user not found")
    }
    return user.proto
  }

  func listMyAddresses(request: Mart_User_V1_ListMyAddressesRequest, context: ServerContext) async throws
    -> Mart_User_V1_ListMyAddressesResponse
  {
    let userID = try Caller.requiredUserID()
    var validation = RequestValidation()
    let pageSize = validation.pageSize(request.pageSize, default: 20, maximum: 100)
    try validation.check()
    let fingerprint = PageTokenCodec.fingerprint(["addresses"])
    let cursor = try PageTokenCodec.decode(request.pageToken, as: ListCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.addresses(userID: userID, after: cursor, limit: pageSize + 1), limit: pageSize,
      fingerprint: fingerprint
    ) { ListCursor(isDefault: $0.isDefault, micros: $0.createdMicros, id: $0.id) }
    return .with {
      $0.addresses = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func addAddress(request: Mart_User_V1_AddAddressRequest, context: ServerContext) async throws
    -> Mart_User_V1_UserAddress
  {
    let userID = try Caller.requiredUserID()
    let input = try Validation.address(request)
    guard let address = try await store.addAddress(userID: userID, input, setDefault: request.setDefault) else {
      throw APIStatus.notFound("user not found")
    }
    return address.proto
  }

  func deleteAddress(request: Mart_User_V1_DeleteAddressRequest, context: ServerContext) async throws
    -> Mart_User_V1_DeleteAddressResponse
  {
    let userID = try Caller.requiredUserID()
    let addressID = try RequestValidation.requiredUUID(request.addressID, field: "address_id")
    guard try await store.deleteAddress(userID: userID, addressID: addressID) else {
      throw APIStatus.notFound("address not found")
    }
    return Mart_User_V1_DeleteAddressResponse()
  }

  // MARK: - Administration

  func listUsers(request: Mart_User_V1_ListUsersRequest, context: ServerContext) async throws
    -> Mart_User_V1_ListUsersResponse
  {
    var validation = RequestValidation()
    let pageSize = validation.pageSize(request.pageSize, default: 50, maximum: 100)
    try validation.check()
    let query = request.query.trimmingCharacters(in: .whitespacesAndNewlines)
    guard query.unicodeScalars.count <= 200 else {
      throw APIStatus.invalid("query", "must be at most 200 characters")
    }
    let role: String?
    switch request.role {
    case .unspecified: role = nil
    case .customer: role = MartRole.customer
    case .admin: role = MartRole.admin
    case .UNRECOGNIZED: throw APIStatus.invalid("role", "is not a known role")
    }
    let fingerprint = PageTokenCodec.fingerprint(["users", query, role ?? ""])
    let cursor = try PageTokenCodec.decode(request.pageToken, as: ListCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.listUsers(query: query, role: role, after: cursor, limit: pageSize + 1), limit: pageSize,
      fingerprint: fingerprint
    ) { ListCursor(micros: $0.micros, id: $0.0.id) }
    return .with {
      $0.users = page.rows.map(\.0.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func getUser(request: Mart_User_V1_GetUserRequest, context: ServerContext) async throws -> Mart_User_V1_User {
    let userID = try RequestValidation.requiredUUID(request.userID, field: "user_id")
    guard let user = try await store.user(id: userID) else { throw APIStatus.notFound("user not found") }
    return user.proto
  }

  func setRoles(request: Mart_User_V1_SetRolesRequest, context: ServerContext) async throws -> Mart_User_V1_User {
    let userID = try RequestValidation.requiredUUID(request.userID, field: "user_id")
    var roles: Set<String> = [MartRole.customer]
    for role in request.roles {
      switch role {
      case .customer: roles.insert(MartRole.customer)
      case .admin: roles.insert(MartRole.admin)
      case .unspecified, .UNRECOGNIZED:
        throw APIStatus.invalid("roles", "must list only CUSTOMER and ADMIN")
      }
    }
    switch try await store.setRoles(userID: userID, granting: roles) {
    case .updated(let user):
      let caller = Caller.current?.subject ?? "unknown"
      logger.notice(
        "roles changed",
        metadata: ["user_id": "\(user.id.uuidString.lowercased())", "roles": "\(user.roles)", "by": "\(caller)"])
      return user.proto
    case .notFound:
      throw APIStatus.notFound("user not found")
    case .lastAdmin:
      throw UserServiceError.lastAdmin
    }
  }

  func getJwks(request: Mart_User_V1_GetJwksRequest, context: ServerContext) async throws
    -> Mart_User_V1_JsonWebKeySet
  {
    let keys = try await keys.publishedKeys()
    return .with {
      $0.keys = keys.map { jwk in
        .with {
          $0.kty = jwk.kty
          $0.use = jwk.use
          $0.kid = jwk.kid
          $0.alg = jwk.alg
          $0.crv = jwk.crv
          $0.x = jwk.x
          $0.y = jwk.y
        }
      }
    }
  }
}
