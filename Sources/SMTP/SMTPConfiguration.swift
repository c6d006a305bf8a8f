import NIOSSL

/// Where and how to submit mail.
public struct SMTPConfiguration: Sendable {
  public enum Security: Sendable, Equatable {
    /// Plain TCP, then STARTTLS before anything else is said; a server that does not offer it is
    /// refused rather than spoken to in the clear (the usual submission port, 587).
    case startTLS
    /// TLS from the first byte (port 465).
    case implicitTLS
    /// No encryption at all, credentials included: only for a server on this machine, and never
    /// a default, so that it is always written down where it is chosen.
    case plaintext
  }

  /// Printed without the password, so that logging a configuration cannot leak it.
  public struct Credentials: Sendable, CustomStringConvertible {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
      self.username = username
      self.password = password
    }

    public var description: String { "Credentials(username: \(username), password: <redacted>)" }
  }

  /// The SASL mechanisms the client speaks.
  public enum AuthMechanism: String, Sendable, Equatable {
    case plain = "PLAIN"
    case login = "LOGIN"
  }

  public var host: String
  public var port: Int
  public var security: Security
  public var credentials: Credentials?
  /// The name we give in EHLO.
  public var heloName: String
  /// Used for STARTTLS and implicit TLS alike. The host name (unless it is an IP literal) is sent
  /// as SNI and checked against the certificate as this configuration says.
  public var tlsConfiguration: TLSConfiguration
  /// The mechanism to use when the server offers it; otherwise (and when nil) PLAIN is preferred
  /// over LOGIN.
  public var preferredAuthMechanism: AuthMechanism?
  public var connectTimeout: Duration
  /// The wait for each reply but the last: greeting, EHLO, STARTTLS and the TLS handshake, AUTH,
  /// MAIL, RCPT, DATA's 354, RSET, QUIT.
  public var commandTimeout: Duration
  /// The wait for the reply to the message itself (after the final "."), when the server does
  /// its checks. RFC 5321 4.5.3.2 suggests 10 minutes; a sender that retries is better served by
  /// giving up sooner.
  public var dataTimeout: Duration

  public init(
    host: String, port: Int, security: Security, credentials: Credentials? = nil, heloName: String = "localhost"
  ) {
    self.host = host
    self.port = port
    self.security = security
    self.credentials = credentials
    self.heloName = heloName
    self.tlsConfiguration = .makeClientConfiguration()
    self.preferredAuthMechanism = nil
    self.connectTimeout = .seconds(10)
    self.commandTimeout = .seconds(30)
    self.dataTimeout = .seconds(60)
  }
}
