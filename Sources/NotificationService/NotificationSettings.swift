import Foundation
import MartRuntime
import NIOSSL
import SMTP

/// The notification service's settings, read from the environment (README: "Notifications").
///
/// Email goes over SMTP when `MART_SMTP_HOST` or `MART_SMTP_USERNAME` is set (Mailtrap's sandbox
/// by default), SMS through Twilio when `MART_TWILIO_ACCOUNT_SID` is; a channel without its
/// provider writes its messages to the file mailbox instead (`.mart/mail/` by default), so a
/// newcomer sees what the shop sends without an account anywhere. Secrets come only from the
/// environment.
public struct NotificationSettings: Sendable {
  /// The From of every email.
  public var emailFrom: EmailAddress
  public var smtp: SMTPConfiguration?
  var twilio: TwilioSettings?
  /// Where emails (`.eml`) and text messages (`.txt`) go when their channel has no provider.
  public var mailboxDirectory: String
  /// The shop's name in messages.
  public var shopName: String
  /// Where the verification email links to (`MART_NOTIFICATION_VERIFY_EMAIL_URL`): the shop's page
  /// that calls POST /v1/auth/verify-email with the `token` query parameter. Without it, the
  /// email gives the token as a code to paste.
  public var verifyEmailURL: String?
  /// Where the password-reset email links to (`MART_NOTIFICATION_RESET_PASSWORD_URL`): the shop's
  /// page that asks for a new password and calls POST /v1/auth/password-reset:confirm with the
  /// `token` query parameter. Without it, the email gives the token as a code to paste.
  public var resetPasswordURL: String?
  /// The right-hand side of our Message-IDs.
  public var messageDomain: String
  /// Attempts of one delivery before it is failed for good (8 over about 30 minutes by default).
  public var maximumAttempts: Int
  /// The wait after the first failed attempt; it doubles after each, up to `maximumRetryBackoff`,
  /// with up to a quarter of random jitter so that retries do not come in waves.
  public var firstRetryBackoff: Duration
  public var maximumRetryBackoff: Duration
  /// How long a sender holds a delivery it is sending. Each email's outcome is recorded as soon
  /// as the server answers it, but a batch shares one session, so keep it longer than a batch may
  /// take: another sender takes a delivery over only once its lease has run out.
  public var sendLease: Duration
  /// How long a delivery waits for its user's details (an order's event can overtake the user's
  /// registration on another topic) before it is skipped.
  public var unknownUserGrace: Duration
  /// How often the sender looks for due deliveries when nothing wakes it.
  public var pollInterval: Duration
  /// Events older than this go to the inbox only: a consumer group that starts from a topic's
  /// beginning (a new deployment) must not email about every past order.
  public var maximumEventAge: Duration
  /// Deliveries taken at once.
  public var batchSize: Int
  /// SMTP sessions a batch's emails are spread over, side by side (Mailtrap's free sandbox allows
  /// a few connections at once; a relay of one's own, more).
  public var emailSessions: Int

  public init(
    emailFrom: EmailAddress, smtp: SMTPConfiguration? = nil, mailboxDirectory: String = ".mart/mail",
    shopName: String = "Mart", messageDomain: String = "mart.localhost", maximumAttempts: Int = 8,
    firstRetryBackoff: Duration = .seconds(15), maximumRetryBackoff: Duration = .seconds(600),
    sendLease: Duration = .seconds(180), unknownUserGrace: Duration = .seconds(600),
    pollInterval: Duration = .seconds(5), maximumEventAge: Duration = .seconds(86_400), batchSize: Int = 32
  ) {
    self.maximumEventAge = maximumEventAge
    self.emailSessions = 4
    self.emailFrom = emailFrom
    self.smtp = smtp
    self.twilio = nil
    self.mailboxDirectory = mailboxDirectory
    self.shopName = shopName
    self.messageDomain = messageDomain
    self.maximumAttempts = maximumAttempts
    self.firstRetryBackoff = firstRetryBackoff
    self.maximumRetryBackoff = maximumRetryBackoff
    self.sendLease = sendLease
    self.unknownUserGrace = unknownUserGrace
    self.pollInterval = pollInterval
    self.batchSize = batchSize
  }

  public init(environment env: EnvironmentReader) throws {
    let fromRaw = env.string("MART_NOTIFICATION_EMAIL_FROM", default: "Mart <no-reply@mart.localhost>")
    guard let from = Self.parseAddress(fromRaw) else {
      throw ConfigurationError(
        variable: "MART_NOTIFICATION_EMAIL_FROM", value: fromRaw,
        reason: "expected an address, or a name and an address: Shop <shop@example.com>")
    }
    self.init(emailFrom: from)
    smtp = try Self.smtp(env)
    twilio = try TwilioSettings.fromEnvironment(env)
    mailboxDirectory = env.string("MART_NOTIFICATION_MAILBOX_DIR", default: mailboxDirectory)
    shopName = env.string("MART_NOTIFICATION_SHOP_NAME", default: shopName)
    verifyEmailURL = try Self.pageURL(env, "MART_NOTIFICATION_VERIFY_EMAIL_URL")
    resetPasswordURL = try Self.pageURL(env, "MART_NOTIFICATION_RESET_PASSWORD_URL")
    messageDomain = String(from.address.split(separator: "@").last ?? "mart.localhost")
    // EHLO names the client; some servers refuse "localhost". The From address's domain is the
    // name the mail claims to come from anyway.
    smtp?.heloName = env.string("MART_SMTP_HELO_NAME", default: messageDomain)
    maximumAttempts = try env.positiveInteger("MART_NOTIFICATION_MAX_ATTEMPTS", default: maximumAttempts)
    firstRetryBackoff = try env.duration("MART_NOTIFICATION_RETRY_BACKOFF", default: firstRetryBackoff)
    maximumRetryBackoff = try env.duration("MART_NOTIFICATION_MAX_RETRY_BACKOFF", default: maximumRetryBackoff)
    pollInterval = try env.duration("MART_NOTIFICATION_POLL_INTERVAL", default: pollInterval)
    sendLease = try env.duration("MART_NOTIFICATION_SEND_LEASE", default: sendLease)
    maximumEventAge = try env.duration("MART_NOTIFICATION_MAX_EVENT_AGE", default: maximumEventAge)
    unknownUserGrace = try env.duration("MART_NOTIFICATION_UNKNOWN_USER_GRACE", default: unknownUserGrace)
    batchSize = try env.positiveInteger("MART_NOTIFICATION_BATCH_SIZE", default: batchSize)
    emailSessions = try env.positiveInteger("MART_NOTIFICATION_SMTP_SESSIONS", default: emailSessions)
  }

  /// "Name <address>" or "address".
  static func parseAddress(_ raw: String) -> EmailAddress? {
    let trimmed = raw.trimmingCharacters(in: .whitespaces)
    if let open = trimmed.lastIndex(of: "<"), trimmed.hasSuffix(">") {
      let name = trimmed[..<open].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: ["\""])
      let address = String(trimmed[trimmed.index(after: open)..<trimmed.index(before: trimmed.endIndex)])
      return try? EmailAddress(address, name: name.isEmpty ? nil : name)
    }
    return try? EmailAddress(trimmed)
  }

  /// Mailtrap's sandbox unless told otherwise: `sandbox.smtp.mailtrap.io:2525` with STARTTLS and
  /// the inbox's username and password.
  /// A page of the shop's that an email links to: an http(s) URL with a host, or nil if unset.
  static func pageURL(_ env: EnvironmentReader, _ variable: String) throws -> String? {
    guard let url = env.string(variable) else { return nil }
    guard let parsed = URL(string: url), ["https", "http"].contains(parsed.scheme?.lowercased() ?? ""),
      parsed.host != nil
    else {
      throw ConfigurationError(variable: variable, value: url, reason: "expected an http(s) URL")
    }
    return url
  }

  static func smtp(_ env: EnvironmentReader) throws -> SMTPConfiguration? {
    let host = env.string("MART_SMTP_HOST")
    let username = env.string("MART_SMTP_USERNAME")
    let password = env.string("MART_SMTP_PASSWORD")
    guard host != nil || username != nil else {
      if password != nil {
        throw ConfigurationError(
          variable: "MART_SMTP_PASSWORD", value: "(set)", reason: "set MART_SMTP_USERNAME (and MART_SMTP_HOST) too")
      }
      return nil
    }
    let securityRaw = env.string("MART_SMTP_SECURITY", default: "starttls").lowercased()
    let security: SMTPConfiguration.Security
    let defaultPort: Int
    switch securityRaw {
    case "starttls": (security, defaultPort) = (.startTLS, 2525)
    case "tls": (security, defaultPort) = (.implicitTLS, 465)
    case "plaintext": (security, defaultPort) = (.plaintext, 25)
    default:
      throw ConfigurationError(
        variable: "MART_SMTP_SECURITY", value: securityRaw,
        reason: "expected starttls, tls, or plaintext (for a local server only)")
    }
    var credentials: SMTPConfiguration.Credentials?
    if let username {
      guard let password else {
        throw ConfigurationError(
          variable: "MART_SMTP_PASSWORD", value: "", reason: "MART_SMTP_USERNAME is set, so the password is needed")
      }
      credentials = SMTPConfiguration.Credentials(username: username, password: password)
    }
    var configuration = SMTPConfiguration(
      host: host ?? "sandbox.smtp.mailtrap.io", port: try env.port("MART_SMTP_PORT", default: defaultPort),
      security: security, credentials: credentials)
    if let caFile = env.string("MART_SMTP_CA_FILE") {
      do {
        configuration.tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
      } catch {
        throw ConfigurationError(variable: "MART_SMTP_CA_FILE", value: caFile, reason: "not a PEM certificate file")
      }
    }
    return configuration
  }

  /// The wait before attempt `attempt + 1` after `attempt` failed, jittered.
  func retryDelay(afterAttempt attempt: Int) -> Duration {
    let base = firstRetryBackoff * (1 << min(max(attempt - 1, 0), 20))
    let capped = min(base, maximumRetryBackoff)
    return capped * Double.random(in: 0.75...1.0)
  }
}
