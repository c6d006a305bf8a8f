import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// How long a command waits for a database to answer before it gives up and says what to do.
/// The pool would otherwise retry for minutes, and an operator who typed a command deserves an
/// answer in seconds.
let databaseReachTimeout: Duration = .seconds(5)

/// Runs `body` with a client of `configuration`'s database once that database has answered a
/// first query within `databaseReachTimeout`. An unreachable database ends the command (exit 1)
/// with the URL it tried, without its password, and the usual fix.
func withReachableDatabase<Result: Sendable>(
  _ configuration: ServiceConfiguration, logger: Logger, _ body: (PostgresClient) async throws -> Result
) async throws -> Result {
  let client = try configuration.database.makeClient(logger: logger)
  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { await client.run() }
    defer { group.cancelAll() }
    do {
      try await withTimeout(databaseReachTimeout) {
        try await client.query("SELECT 1", logger: logger).consume()
      }
    } catch {
      let variable = "\(configuration.service.environmentPrefix)_DATABASE_URL"
      fail(
        1,
        """
        cannot reach the \(configuration.service.rawValue) database at \(configuration.database) \
        (\(error is TimeoutError ? "no answer within \(databaseReachTimeout)" : APIStatus.redactedDescription(of: error))).
        Is PostgreSQL running there? For the cluster that `make run` starts, keep `make run` running and use \
        `make admin EMAIL=…` or `make seed`, which read .mart/env; otherwise set \(variable).
        """)
    }
    return try await body(client)
  }
}

extension PostgresRowSequence {
  /// Reads and drops every row: for a statement run only for its effect or to see that it works.
  func consume() async throws {
    for try await _ in self {}
  }
}

/// Prints `mart: <message>` on standard error and exits with `code`.
func fail(_ code: Int32, _ message: String) -> Never {
  FileHandle.standardError.write(Data("mart: \(message)\n".utf8))
  exit(code)
}
