import Foundation
import Logging
import MartCore
import NIOCore
import NIOSSL
import PostgresNIO

extension DatabaseConfiguration {
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

  /// Settings for one connection outside the pool (`DatabaseProbe`).
  public func connectionConfiguration() throws -> PostgresConnection.Configuration {
    let tlsSetting: PostgresConnection.Configuration.TLS =
      switch tls {
      case .disable: .disable
      case .require: .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
      }
    return PostgresConnection.Configuration(
      host: host, port: port, username: username, password: password, database: database, tls: tlsSetting)
  }

  public func makeClient(logger: Logger) throws -> PostgresClient {
    PostgresClient(configuration: try clientConfiguration(), backgroundLogger: logger)
  }
}

extension Error {
  /// What failed inside a `PostgresTransactionError`: the closure's error, or else the
  /// COMMIT's (a deferred constraint checked at commit fails there).
  public var unwrappingTransactionError: any Error {
    if let transactionError = self as? PostgresTransactionError,
      let inner = transactionError.closureError ?? transactionError.commitError
    {
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

/// A statement that did not return what it must have (an INSERT ... RETURNING without its row):
/// a bug or a broken schema, answered as INTERNAL.
public struct PostgresStoreError: Error, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}

extension PostgresClient {
  /// `withTransaction` in a span named for the store method that runs it
  /// (`transaction OrderStore.place(_:…)`), a child of the call's or the event's span:
  /// a trace shows each transaction a handler ran, how long it took, and whether it failed.
  /// Events appended inside it (`Outbox.append`) are its children.
  public func transaction<Result: Sendable>(
    logger: Logger, function: String = #function, fileID: String = #fileID, file: String = #file,
    line: Int = #line, _ body: (PostgresConnection) async throws -> Result
  ) async throws -> Result {
    let store = fileID.split(separator: "/").last.map { $0.replacingOccurrences(of: ".swift", with: "") } ?? ""
    return try await MartTracing.withSpan("transaction \(store).\(function)") { span in
      span.attributes["db.system.name"] = "postgresql"
      // The caller's file and line, for the errors postgres-nio reports.
      return try await withTransaction(logger: logger, file: file, line: line) { connection in
        try await body(connection)
      }
    }
  }
}
