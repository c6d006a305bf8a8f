import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing
import UserService

/// `mart users create-admin` as operators run it: a process, the password on standard input.
@Suite struct CreateAdminCommandTests {
  @Test func createsThenReportsAnExistingAdminAndRefusesBadInput() async throws {
    try await ScratchDatabase.with("users_cli") { database in
      let url = databaseURL(database.configuration)
      let created = try await runMart(
        ["users", "create-admin", "--email", "Boss@Example.com", "--password-stdin"], input: "a long enough secret\n",
        databaseURL: url)
      #expect(created.status == 0, "\(created.errors)")
      #expect(created.output.contains("created admin account boss@example.com"))

      let again = try await runMart(
        ["users", "create-admin", "--email", "boss@example.com", "--password-stdin"], input: "", databaseURL: url)
      #expect(again.status == 0, "\(again.errors)")
      #expect(again.output.contains("already an admin"))

      let weak = try await runMart(
        ["users", "create-admin", "--email", "new@example.com", "--password-stdin"], input: "short\n",
        databaseURL: url)
      #expect(weak.status == 2)
      #expect(weak.errors.contains("password must be at least 8 characters"))

      let badEmail = try await runMart(
        ["users", "create-admin", "--email", "nonsense", "--password-stdin"], input: "a long enough secret\n",
        databaseURL: url)
      #expect(badEmail.status == 2)

      try await withPostgresClient(database.configuration) { client in
        let rows = try await client.query(
          "SELECT email, roles, password_hash FROM users ORDER BY email", logger: TestBed.logger)
        var users: [(String, [String], String)] = []
        for try await row in rows.decode((String, [String], String).self) { users.append(row) }
        #expect(users.map(\.0) == ["boss@example.com"])
        #expect(users.first?.1 == ["customer", "admin"])
        #expect(users.first?.2.hasPrefix("$scrypt$ln=17,r=8,p=1$") == true)
        let events = try await client.query(
          "SELECT count(*)::int8 FROM outbox WHERE event_type = 'mart.user.v1.UserRegistered'", logger: TestBed.logger)
        for try await count in events.decode(Int64.self) { #expect(count == 1) }
      }
    }
  }
}

extension CreateAdminCommandTests {
  /// An operator pointing the command at a database that is not there gets an answer in seconds
  /// (the command gives up after 5 s, where the pool would retry for minutes), naming the URL it
  /// tried, without its password, and the usual fix.
  @Test func anUnreachableDatabaseFailsNamingTheURLAndTheFix() async throws {
    let port = try freePort()
    let result = try await runMart(
      ["users", "create-admin", "--email", "boss@example.com", "--password-stdin"], input: "a long enough secret\n",
      databaseURL: "postgres://mart:hunter2secret@127.0.0.1:\(port)/mart_user")
    #expect(result.status == 1)
    #expect(result.errors.contains("cannot reach the user database at"))
    #expect(result.errors.contains("127.0.0.1:\(port)/mart_user"))
    #expect(!result.errors.contains("hunter2secret"))
    #expect(result.errors.contains("MART_USER_DATABASE_URL"))
    #expect(result.errors.contains("make run"))
  }
}

/// A `postgres://` URL for a database configuration (the test bed's role has no password).
func databaseURL(_ configuration: DatabaseConfiguration) -> String {
  ScratchDatabase(configuration: configuration).url
}

/// Runs the built `mart` with `input` on its standard input; its exit status and output.
func runMart(_ arguments: [String], input: String, databaseURL: String) async throws -> (
  status: Int32, output: String, errors: String
) {
  let mart = try ChildProcess.mart(
    arguments, environment: ["MART_USER_DATABASE_URL": databaseURL, "MART_LOG_LEVEL": "error"], input: input)
  let status = await mart.waitForExit()
  return (status, mart.standardOutput, mart.standardError)
}
