import GRPCCore
import MartRuntime

/// The user service as the runtime runs it: its schema and its gRPC handlers.
///
/// Shape shared by every service: `UserService.swift` (this definition), the gRPC handlers,
/// the SQL store, the event handlers, and `Migrations/NNNN_name.sql` (embedded in the binary).
public enum UserServiceModule {
  /// The service as `mart serve` and `mart dev` run it: options from the environment.
  public static let definition = makeDefinition(options: nil)

  /// The service with fixed options (tests: a cheap password hash, forced key rotation).
  public static func makeDefinition(options fixed: UserServiceOptions?) -> ServiceDefinition {
    ServiceDefinition(
      service: .user,
      migrations: [
        Migration(version: 1, name: "init", embedded: PackageResources._001_init_sql),
        .eventTables(version: 2),
        Migration(version: 3, name: "profile_versions", embedded: PackageResources._003_profile_versions_sql),
        Migration(
          version: 4, name: "login_known_addresses", embedded: PackageResources._004_login_known_addresses_sql),
        Migration(
          version: 5, name: "signing_key_encryption", embedded: PackageResources._005_signing_key_encryption_sql),
        Migration(version: 6, name: "email_verification", embedded: PackageResources._006_email_verification_sql),
        Migration(version: 7, name: "password_resets", embedded: PackageResources._007_password_resets_sql),
        Migration(version: 8, name: "housekeeping", embedded: PackageResources._008_housekeeping_sql),
      ],
      makeRPCServices: { context in
        let options = try fixed ?? UserServiceOptions(environment: EnvironmentReader())
        return [UserRPCService(context: context, options: options)]
      },
      // The user service verifies its own tokens from its key table, not by calling itself.
      makeUserKeyProvider: { context in
        DatabaseKeyProvider(
          database: context.database, logger: context.logger,
          cacheTTL: fixed?.signingKeyCacheTTL ?? .seconds(60))
      },
      makeBackgroundServices: { context in
        let options = try fixed ?? UserServiceOptions(environment: EnvironmentReader())
        return [
          UserHousekeeping(
            database: context.database, settings: options.housekeeping,
            throttleWindow: options.loginThrottle.window, logger: context.logger)
        ]
      }
    )
  }
}

/// Settings of the user service.
///
/// | variable | default |
/// |---|---|
/// | `MART_JWT_KEY_ROTATION` | `24h`: how long a signing key signs new tokens (at least `1m`) |
/// | `MART_SESSION_LIFETIME` | `30d` written `720h`: how long a session lasts from its sign-in, however often it is refreshed |
/// | `MART_USER_KEY_ENCRYPTION_KEYS` | none, required: `<id>:<base64 of 32 bytes>,…`, the keys that seal the signing keys at rest (`KeyEncryptionKeys`) |
/// | `MART_USER_SIGN_IN_REQUIRES_VERIFIED_EMAIL` | `false`: whether Login refuses an account whose email is not verified (`signInRequiresVerifiedEmail`) |
///
/// Issuer and audience are the shared `MART_JWT_ISSUER` / `MART_JWT_AUDIENCE` (AuthConfiguration).
public struct UserServiceOptions: Sendable {
  /// How long a signing key signs new access tokens before the next one takes over. A retired key
  /// stays published for the access-token lifetime plus five minutes.
  public var keyRotation: Duration
  /// Lifetime of an access token (JWT `exp - iat`).
  public var accessTokenLifetime: Duration
  /// Lifetime of a refresh token; each rotation issues a successor with this lifetime, but never
  /// past the session's end.
  public var refreshTokenLifetime: Duration
  /// How long a session lasts from its sign-in (the first token of its family), however often it
  /// is refreshed: a stolen refresh token cannot keep a session alive for ever.
  public var sessionLifetime: Duration
  /// scrypt cost of new password hashes. Only tests lower it.
  public var passwordCost: PasswordHasher.Cost
  /// How long an instance signs with the key it loaded, and trusts a verification key it looked
  /// up, before asking the database again.
  public var signingKeyCacheTTL: Duration
  /// How failed logins are throttled (`LoginThrottle`).
  public var loginThrottle: LoginThrottle.Policy = .standard
  /// Where password hashes are computed, and how many may wait (`PasswordHashingQueue`).
  public var hashingQueue: PasswordHashingQueue = .shared
  /// How often, and how much, the housekeeping sweeper deletes stale rows (`UserHousekeeping`).
  public var housekeeping: UserHousekeeping.Settings = .standard
  /// How long an email-verification link works.
  public var emailVerificationLifetime: Duration = .seconds(24 * 3600)
  /// How long a password-reset link works.
  public var passwordResetLifetime: Duration = .seconds(3600)
  /// Whether Login refuses an account whose email is not verified yet, with the answer and the work
  /// of a wrong password. Off by default: most shops let a new customer sign in and buy at once.
  /// On, Register followed by Login no longer tells whether an email was free (a new account
  /// cannot sign in until its owner opens the link), at the cost of a step before the first
  /// sign-in.
  public var signInRequiresVerifiedEmail = false
  /// What seals the JWT signing keys at rest (`MART_USER_KEY_ENCRYPTION_KEYS`).
  public var keyEncryption: KeyEncryptionKeys

  public init(
    keyRotation: Duration = .seconds(24 * 3600), accessTokenLifetime: Duration = .seconds(15 * 60),
    refreshTokenLifetime: Duration = .seconds(30 * 24 * 3600), passwordCost: PasswordHasher.Cost = .production,
    signingKeyCacheTTL: Duration = .seconds(60), sessionLifetime: Duration = .seconds(30 * 24 * 3600),
    keyEncryption: KeyEncryptionKeys
  ) {
    self.keyEncryption = keyEncryption
    self.sessionLifetime = sessionLifetime
    self.keyRotation = keyRotation
    self.accessTokenLifetime = accessTokenLifetime
    self.refreshTokenLifetime = refreshTokenLifetime
    self.passwordCost = passwordCost
    self.signingKeyCacheTTL = signingKeyCacheTTL
  }

  public init(environment: EnvironmentReader) throws {
    let variable = "MART_JWT_KEY_ROTATION"
    let rotation = try environment.duration(variable, default: .seconds(24 * 3600))
    guard rotation >= .seconds(60) else {
      throw ConfigurationError(
        variable: variable, value: environment.string(variable) ?? "", reason: "must be at least 1m")
    }
    self.init(
      keyRotation: rotation,
      sessionLifetime: try environment.duration("MART_SESSION_LIFETIME", default: .seconds(30 * 24 * 3600)),
      keyEncryption: try KeyEncryptionKeys(environment: environment))
    signInRequiresVerifiedEmail = try environment.bool("MART_USER_SIGN_IN_REQUIRES_VERIFIED_EMAIL", default: false)
  }
}
