import Foundation

/// Connection settings for one service's PostgreSQL database, parsed from a
/// `postgres://user[:password]@host[:port]/database[?sslmode=disable|require]` URL.
public struct DatabaseConfiguration: Sendable, CustomStringConvertible {
  public enum TLSMode: String, Sendable {
    case disable, require
  }

  public var host: String
  public var port: Int
  public var username: String
  public var password: String?
  public var database: String
  public var tls: TLSMode
  public var maximumConnections: Int

  public init(
    host: String, port: Int = 5432, username: String, password: String? = nil, database: String,
    tls: TLSMode = .disable, maximumConnections: Int = 20
  ) {
    self.host = host
    self.port = port
    self.username = username
    self.password = password
    self.database = database
    self.tls = tls
    self.maximumConnections = maximumConnections
  }

  /// Parses a database URL; `variable` names the setting in the error when it is malformed.
  public init(variable: String, url: String) throws {
    func invalid(_ reason: String) -> ConfigurationError {
      ConfigurationError(variable: variable, value: Self.redacted(url), reason: reason)
    }
    guard let components = URLComponents(string: url) else {
      throw invalid("not a URL; expected postgres://user@host:port/database")
    }
    guard let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme) else {
      throw invalid("the scheme must be postgres://")
    }
    guard let host = components.host, !host.isEmpty else { throw invalid("the URL names no host") }
    guard let user = components.user, !user.isEmpty else { throw invalid("the URL names no user") }
    let database = String(components.path.drop(while: { $0 == "/" }))
    guard !database.isEmpty, !database.contains("/") else {
      throw invalid("the URL names no database (postgres://user@host:port/DATABASE)")
    }
    var tls = TLSMode.disable
    var maximumConnections = 20
    for item in components.queryItems ?? [] {
      switch (item.name, item.value ?? "") {
      case ("sslmode", let value):
        switch value {
        case "disable": tls = .disable
        case "require", "verify-full": tls = .require
        default: throw invalid("sslmode must be disable, require or verify-full")
        }
      case ("max_connections", let value):
        guard let count = Int(value), count > 0 else { throw invalid("max_connections must be a positive number") }
        maximumConnections = count
      default:
        throw invalid("unknown URL parameter \(item.name)")
      }
    }
    self.init(
      host: host, port: components.port ?? 5432, username: user, password: components.password,
      database: database, tls: tls, maximumConnections: maximumConnections)
  }

  /// The same database on the same server, under another name (tests create scratch databases).
  public func withDatabase(_ name: String) -> DatabaseConfiguration {
    var copy = self
    copy.database = name
    return copy
  }

  public var description: String {
    "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database)"
  }

  package static func redacted(_ url: String) -> String {
    // Never echo a password into logs or error messages.
    guard var components = URLComponents(string: url), components.password != nil else { return url }
    components.password = "***"
    return components.string ?? "<unparseable URL>"
  }
}
