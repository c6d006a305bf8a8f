import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO

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

  static func redacted(_ url: String) -> String {
    // Never echo a password into logs or error messages.
    guard var components = URLComponents(string: url), components.password != nil else { return url }
    components.password = "***"
    return components.string ?? "<unparseable URL>"
  }

  /// Settings for postgres-nio's connection pool.
  public func clientConfiguration() throws -> PostgresClient.Configuration {
    let tlsSetting: PostgresClient.Configuration.TLS =
      switch tls {
      case .disable: .disable
      case .require: .require(.makeClientConfiguration())
      }
    var configuration = PostgresClient.Configuration(
      host: host, port: port, username: username, password: password, database: database,
      tls: tlsSetting)
    configuration.options.maximumConnections = maximumConnections
    configuration.options.connectTimeout = .seconds(5)
    return configuration
  }

  public func makeClient(logger: Logger) throws -> PostgresClient {
    PostgresClient(configuration: try clientConfiguration(), backgroundLogger: logger)
  }
}

extension Error {
  /// The error a `withTransaction` closure threw, unwrapped from `PostgresTransactionError`.
  public var unwrappingTransactionError: any Error {
    if let transactionError = self as? PostgresTransactionError, let inner = transactionError.closureError {
      return inner
    }
    return self
  }

  /// Whether the error says the database could not be reached or went away (as opposed to a
  /// statement that failed): connection failures, SQLSTATE classes 08 (connection) and 57P
  /// (server shutting down), and 53300 (too many connections).
  public var isDatabaseUnavailable: Bool {
    let error = unwrappingTransactionError
    if error is TimeoutError { return true }
    if let transactionError = error as? PostgresTransactionError, transactionError.beginError != nil { return true }
    guard let psql = error as? PSQLError else { return false }
    guard let state = psql.serverInfo?[.sqlState] else { return true }
    return state.hasPrefix("08") || state.hasPrefix("57P") || state == "53300"
  }
}

/// A Swift enum kept in a text column (with a CHECK constraint listing its values). It decodes
/// straight from a row, so that `rows.decode((UUID, ReservationStatus).self)` needs no second
/// step, and a value no case matches is a decoding error naming the column (logged and answered
/// as INTERNAL), never a silent fallback to some case: a row the code does not understand is a
/// bug or a newer schema, and guessing a terminal state would hide it.
public protocol PostgresTextEnum: RawRepresentable, PostgresDecodable, Sendable where RawValue == String {}

extension PostgresTextEnum {
  public init<JSONDecoder: PostgresJSONDecoder>(
    from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat,
    context: PostgresDecodingContext<JSONDecoder>
  ) throws {
    let text = try String(from: &buffer, type: type, format: format, context: context)
    guard let value = Self(rawValue: text) else { throw PostgresDecodingError.Code.failure }
    self = value
  }
}
