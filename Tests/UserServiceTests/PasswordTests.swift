import Foundation
import GRPCCore
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import NIOCore
import PostgresNIO
import SwiftProtobuf
import Testing
import UserService

/// Passwords after sign-up: a reset link that proves the mailbox, ChangePassword, and a shop that
/// lets only verified accounts sign in.
@Suite struct PasswordTests {
  /// The reset link sets a new password once; it answers the same for any email, has a quota,
  /// checks the password policy, verifies the email, and signs every session out.
  @Test func aResetLinkSetsANewPasswordOnceAndSignsEveryoneOut() async throws {
    try await withUserService("users_reset") { service in
      let before = try await service.register(email: "rita@example.com")
      #expect(!before.user.emailVerified)
      _ = try await service.client.requestPasswordReset(.with { $0.email = "Rita@Example.com" })
      _ = try await service.client.requestPasswordReset(.with { $0.email = "nobody@example.com" })
      let tokens = try await service.resetTokens("rita@example.com")
      #expect(tokens.count == 1)
      #expect(try await service.count("SELECT count(*)::int8 FROM password_resets") == 1)
      let token = try #require(tokens.first)

      let bogus = await rpcError {
        _ = try await service.client.resetPassword(
          .with {
            $0.token = "not-a-token"
            $0.newPassword = "a brand new password"
          })
      }
      #expect(bogus?.code == .invalidArgument)
      #expect(reason(bogus) == "INVALID_RESET_TOKEN")
      #expect(fields(bogus) == ["token"])
      let weak = await rpcError {
        _ = try await service.client.resetPassword(
          .with {
            $0.token = token
            $0.newPassword = "short"
          })
      }
      #expect(reason(weak) == "WEAK_PASSWORD")
      #expect(fields(weak) == ["new_password"])
      let isEmail = await rpcError {
        _ = try await service.client.resetPassword(
          .with {
            $0.token = token
            $0.newPassword = "rita@example.com"
          })
      }
      #expect(fields(isEmail) == ["new_password"])

      let reset = try await service.client.resetPassword(
        .with {
          $0.token = token
          $0.newPassword = "a brand new password"
        })
      #expect(reset.email == "rita@example.com")
      let reused = await rpcError {
        _ = try await service.client.resetPassword(
          .with {
            $0.token = token
            $0.newPassword = "yet another password"
          })
      }
      #expect(reason(reused) == "INVALID_RESET_TOKEN")
      // The session from before is over, the old password opens nothing, the new one does, and
      // the email counts as verified: the link reached the mailbox.
      let oldSession = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = before.tokens.refreshToken })
      }
      #expect(oldSession?.code == .unauthenticated)
      let oldPassword = await rpcError { _ = try await service.login("rita@example.com", defaultPassword) }
      #expect(reason(oldPassword) == "INVALID_CREDENTIALS")
      let after = try await service.login("rita@example.com", "a brand new password")
      #expect(after.user.emailVerified)
      #expect(try await service.passwordChanges("rita@example.com") == [.reset])

      // Links requested before a reset are spent by it; an expired one resets nothing.
      _ = try await service.client.requestPasswordReset(.with { $0.email = "rita@example.com" })
      _ = try await service.client.requestPasswordReset(.with { $0.email = "rita@example.com" })
      let pending = try await service.resetTokens("rita@example.com")
      try await service.database.query(
        "UPDATE password_resets SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour'",
        logger: TestBed.logger)
      let expired = await rpcError {
        _ = try await service.client.resetPassword(
          .with {
            $0.token = pending[1]
            $0.newPassword = "yet another password"
          })
      }
      #expect(reason(expired) == "INVALID_RESET_TOKEN")
      // Three an hour for one email, whether or not it has an account.
      let limited = await rpcError {
        _ = try await service.client.requestPasswordReset(.with { $0.email = "rita@example.com" })
      }
      #expect(limited?.code == .resourceExhausted)
      _ = try await service.client.requestPasswordReset(.with { $0.email = "nobody@example.com" })
      _ = try await service.client.requestPasswordReset(.with { $0.email = "nobody@example.com" })
      let unknownLimited = await rpcError {
        _ = try await service.client.requestPasswordReset(.with { $0.email = "nobody@example.com" })
      }
      #expect(unknownLimited?.code == .resourceExhausted)
      let badEmail = await rpcError {
        _ = try await service.client.requestPasswordReset(.with { $0.email = "not an email" })
      }
      #expect(fields(badEmail) == ["email"])
    }
  }

  /// Someone registers another person's email first. When the owner tries to register, the notice
  /// says the account was never verified, and a reset link, which only the owner's mailbox gets,
  /// makes it theirs and signs the squatter out.
  @Test func theOwnerOfAnEmailTakesBackAnAccountSomeoneRegisteredFirst() async throws {
    try await withUserService("users_squatter") { service in
      let squatter = try await service.register(email: "owner@example.com", password: "the squatter's password")
      _ = try await service.client.register(
        .with {
          $0.email = "owner@example.com"
          $0.password = "the owner's own password"
          $0.fullName = "Owner"
        })
      let attempts = try await service.events(Mart_User_V1_RegistrationAttempted.self)
      #expect(attempts.map(\.emailVerified) == [false])

      _ = try await service.client.requestPasswordReset(.with { $0.email = "owner@example.com" })
      let token = try #require(try await service.resetTokens("owner@example.com").first)
      _ = try await service.client.resetPassword(
        .with {
          $0.token = token
          $0.newPassword = "the owner's own password"
        })
      let squatterSession = await rpcError {
        _ = try await service.client.refresh(.with { $0.refreshToken = squatter.tokens.refreshToken })
      }
      #expect(squatterSession?.code == .unauthenticated)
      let squatterLogin = await rpcError { _ = try await service.login("owner@example.com", "the squatter's password") }
      #expect(reason(squatterLogin) == "INVALID_CREDENTIALS")
      let owner = try await service.login("owner@example.com", "the owner's own password")
      #expect(owner.user.emailVerified)
    }
  }

  /// ChangePassword needs the current password (wrong ones count against the login throttle),
  /// checks the policy, signs every other session out and starts a new one.
  @Test func changePasswordNeedsTheCurrentOneAndSignsOutOtherSessions() async throws {
    var options = testOptions
    // In-process calls have no client address: the account's own slow-down is what counts here.
    options.loginThrottle.accountThreshold = 2
    try await withUserService("users_change", options: options) { service in
      let first = try await service.register(email: "cleo@example.com")
      let second = try await service.login("cleo@example.com", defaultPassword)
      let auth = bearer(first.tokens.accessToken)
      let anonymous = await rpcError {
        _ = try await service.client.changePassword(
          .with {
            $0.currentPassword = defaultPassword
            $0.newPassword = "a changed password"
          })
      }
      #expect(anonymous?.code == .unauthenticated)
      let weak = await rpcError {
        _ = try await service.client.changePassword(
          .with {
            $0.currentPassword = defaultPassword
            $0.newPassword = "short"
          }, metadata: auth)
      }
      #expect(reason(weak) == "WEAK_PASSWORD")
      #expect(fields(weak) == ["new_password"])
      let missing = await rpcError {
        _ = try await service.client.changePassword(.with { $0.newPassword = "a changed password" }, metadata: auth)
      }
      #expect(fields(missing) == ["current_password"])
      var wrongAnswers: [String?] = []
      for _ in 0..<3 {
        let wrong = await rpcError {
          _ = try await service.client.changePassword(
            .with {
              $0.currentPassword = "not the password"
              $0.newPassword = "a changed password"
            }, metadata: auth)
        }
        wrongAnswers.append(reason(wrong))
      }
      // The third is refused by the throttle without looking at the password.
      #expect(wrongAnswers == ["INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "RATE_LIMITED"])
      try await service.database.query("DELETE FROM login_failures", logger: TestBed.logger)

      let changed = try await service.client.changePassword(
        .with {
          $0.currentPassword = defaultPassword
          $0.newPassword = "a changed password"
        }, metadata: auth)
      for session in [first, second] {
        let old = await rpcError {
          _ = try await service.client.refresh(.with { $0.refreshToken = session.tokens.refreshToken })
        }
        #expect(old?.code == .unauthenticated)
      }
      let renewed = try await service.client.refresh(.with { $0.refreshToken = changed.tokens.refreshToken })
      #expect(!renewed.tokens.accessToken.isEmpty)
      let oldPassword = await rpcError { _ = try await service.login("cleo@example.com", defaultPassword) }
      #expect(reason(oldPassword) == "INVALID_CREDENTIALS")
      _ = try await service.login("cleo@example.com", "a changed password")
      #expect(try await service.passwordChanges("cleo@example.com") == [.change])
    }
  }

  /// With `signInRequiresVerifiedEmail`, an unverified account fails like a wrong password, so that
  /// Register then Login tells nothing about which emails were free; verifying opens it, and an
  /// admin made by the operator's command is verified from the start.
  @Test func whenTheShopRequiresItOnlyVerifiedAccountsSignIn() async throws {
    var options = testOptions
    options.signInRequiresVerifiedEmail = true
    try await withUserService("users_verified_only", options: options) { service in
      // Taken (but unverified) and free emails: a stranger's Register then Login fail alike.
      _ = try await service.client.register(registration("taken@example.com", "the owner's password"))
      _ = try await service.client.register(registration("taken@example.com", "a stranger's password"))
      _ = try await service.client.register(registration("free@example.com", "a stranger's password"))
      let onTaken = await rpcError { _ = try await service.login("taken@example.com", "a stranger's password") }
      let onFree = await rpcError { _ = try await service.login("free@example.com", "a stranger's password") }
      let unknown = await rpcError { _ = try await service.login("nobody@example.com", "a stranger's password") }
      #expect(onTaken?.code == .unauthenticated)
      #expect(reason(onTaken) == "INVALID_CREDENTIALS")
      #expect(onFree?.code == onTaken?.code && onFree?.message == onTaken?.message)
      #expect(unknown?.code == onTaken?.code && unknown?.message == onTaken?.message)

      let token = try #require(try await service.verificationTokens("free@example.com").first)
      _ = try await service.client.verifyEmail(.with { $0.token = token })
      let signedIn = try await service.login("free@example.com", "a stranger's password")
      #expect(signedIn.user.emailVerified)

      _ = try await UserAdministration.createAdmin(
        database: service.database, email: "boss@example.com", fullName: "Boss", passwordCost: .testing,
        logger: TestBed.logger, password: { defaultPassword })
      let admin = try await service.login("boss@example.com", defaultPassword)
      #expect(admin.user.emailVerified)
    }
  }

  /// A hash made at a lower cost than today's (an account from before the cost went up) is
  /// replaced at the next successful sign-in, while the password is at hand; a wrong password
  /// replaces nothing.
  @Test func aSignInReplacesAHashMadeAtAnOlderCost() async throws {
    try await withUserService("users_rehash") { service in
      let registered = try await service.register(email: "olga@example.com")
      let userID = try #require(UUID(uuidString: registered.user.id))
      @Sendable func storedHash() async throws -> String? {
        let rows = try await service.database.query(
          "SELECT password_hash FROM users WHERE id = \(userID)", logger: TestBed.logger)
        for try await hash in rows.decode(String.self) { return hash }
        return nil
      }
      let older = PasswordHasher(cost: .init(logN: 8, blockSize: 8, parallelism: 1))
      let oldHash = try await older.hash(defaultPassword)
      try await service.database.query(
        "UPDATE users SET password_hash = \(oldHash) WHERE id = \(userID)", logger: TestBed.logger)

      let wrong = await rpcError { _ = try await service.login("olga@example.com", "not the password") }
      #expect(wrong?.code == .unauthenticated)
      #expect(try await storedHash() == oldHash)

      _ = try await service.login("olga@example.com", defaultPassword)
      let newHash = try #require(try await storedHash())
      #expect(newHash != oldHash)
      #expect(newHash.hasPrefix("$scrypt$\(PasswordHasher.Cost.testing)$"), "\(newHash)")
      // The new hash is of the same password.
      _ = try await service.login("olga@example.com", defaultPassword)
    }
  }

  /// A registration refused because the hashing queue is full (503, retry later) does not count
  /// against the email's quota: a client that retries after Retry-After is not locked out by the
  /// shop's own load.
  @Test func registrationsRefusedForLoadDoNotUseUpTheEmailsQuota() async throws {
    var options = testOptions
    options.passwordCost = .init(logN: 14, blockSize: 8, parallelism: 1)
    options.hashingQueue = PasswordHashingQueue(concurrency: 1, maximumWaiting: 0)
    try await withUserService("users_busy_register", options: options) { service in
      let client = service.client
      let request = registration("retrying@example.com", "a patient password")
      // Five at once: no more than the quota, so that nothing here is refused for the quota itself.
      let outcomes = await withTaskGroup(of: RPCError?.self) { group in
        for _ in 0..<5 {
          group.addTask { await rpcError { _ = try await client.register(request) } }
        }
        var outcomes: [RPCError?] = []
        for await outcome in group { outcomes.append(outcome) }
        return outcomes
      }
      let accepted = outcomes.filter { $0 == nil }.count
      let busy = outcomes.filter { $0?.code == .unavailable }.count
      #expect(busy > 0, "the queue of one never overflowed: \(outcomes)")
      #expect(accepted + busy == 5, "\(outcomes)")
      let counted = try await service.count(
        "SELECT requests::int8 FROM request_quotas WHERE key = 'register:retrying@example.com'")
      #expect(counted == Int64(accepted))
    }
  }

  private func registration(_ email: String, _ password: String) -> Mart_User_V1_RegisterRequest {
    .with {
      $0.email = email
      $0.password = password
      $0.fullName = "Someone"
    }
  }
}

extension UserServiceUnderTest {
  func login(_ email: String, _ password: String) async throws -> Mart_User_V1_LoginResponse {
    try await client.login(
      .with {
        $0.email = email
        $0.password = password
      })
  }

  /// The reset tokens the outbox holds for this email, oldest first.
  func resetTokens(_ email: String) async throws -> [String] {
    try await events(Mart_User_V1_PasswordResetRequested.self).filter { $0.email == email }.map(\.token)
  }

  /// How this account's password was changed, in order (PasswordChanged events).
  func passwordChanges(_ email: String) async throws -> [Mart_User_V1_PasswordChanged.Method] {
    try await events(Mart_User_V1_PasswordChanged.self).filter { $0.email == email }.map(\.method)
  }

  /// Every event of this type in the outbox, oldest first.
  func events<Event: SwiftProtobuf.Message>(_ type: Event.Type) async throws -> [Event] {
    let rows = try await database.query(
      "SELECT payload FROM outbox WHERE event_type = \(Event.protoMessageName) ORDER BY id", logger: TestBed.logger)
    var events: [Event] = []
    for try await payload in rows.decode(ByteBuffer.self) {
      events.append(try Event(serializedBytes: Array(buffer: payload)))
    }
    return events
  }
}
