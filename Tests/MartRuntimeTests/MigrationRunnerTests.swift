import Logging
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing

@Suite struct MigrationRunnerTests {
  static let migrations = [
    Migration(version: 1, name: "widgets", sql: "CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL);"),
    Migration(
      version: 2, name: "widget_colour",
      sql: """
        ALTER TABLE widgets ADD COLUMN colour text;
        -- a second statement in the same file, in the same transaction
        INSERT INTO widgets (id, name, colour) VALUES (1, 'seed; widget', 'red');
        """),
  ]

  func runner(_ migrations: [Migration] = Self.migrations) throws -> MigrationRunner {
    try MigrationRunner(migrations: migrations, logger: TestBed.logger)
  }

  @Test func appliesInOrderThenReappliesAsANoOp() async throws {
    try await ScratchDatabase.with("migrate") { database in
      try await withPostgresClient(database.configuration) { client in
        let first = try await runner().migrate(client)
        #expect(first == MigrationReport(applied: [1, 2], currentVersion: 2))
        let second = try await runner().migrate(client)
        #expect(second == MigrationReport(applied: [], currentVersion: 2))
        #expect(try await runner().pending(client).isEmpty)

        let rows = try await client.query("SELECT count(*)::int FROM widgets", logger: TestBed.logger)
        var count = 0
        for try await value in rows.decode(Int.self) { count = value }
        #expect(count == 1)

        // A later build adds a migration: only that one runs.
        let third = Migration(version: 3, name: "index", sql: "CREATE INDEX widgets_name ON widgets (name);")
        #expect(try await runner(Self.migrations + [third]).pending(client).map(\.version) == [3])
        let upgrade = try await runner(Self.migrations + [third]).migrate(client)
        #expect(upgrade == MigrationReport(applied: [3], currentVersion: 3))
      }
    }
  }

  @Test func concurrentRunnersApplyEachMigrationOnce() async throws {
    try await ScratchDatabase.with("concurrent") { database in
      // Several independent pools, as separate processes would have.
      let reports = try await withThrowingTaskGroup(of: MigrationReport.self) { group in
        for _ in 0..<4 {
          group.addTask {
            try await withPostgresClient(database.configuration) { client in
              try await runner().migrate(client)
            }
          }
        }
        return try await group.reduce(into: [MigrationReport]()) { $0.append($1) }
      }
      #expect(reports.flatMap(\.applied).sorted() == [1, 2])
      #expect(reports.allSatisfy { $0.currentVersion == 2 })
      try await withPostgresClient(database.configuration) { client in
        let rows = try await client.query(
          "SELECT count(*)::int FROM mart_schema_migrations", logger: TestBed.logger)
        for try await count in rows.decode(Int.self) { #expect(count == 2) }
      }
    }
  }

  @Test func refusesADatabaseNewerThanTheCode() async throws {
    try await ScratchDatabase.with("newer") { database in
      try await withPostgresClient(database.configuration) { client in
        try await runner().migrate(client)
        let older = try runner(Array(Self.migrations.prefix(1)))
        await #expect(throws: MigrationError.databaseIsNewer(databaseVersion: 2, codeVersion: 1)) {
          try await older.migrate(client)
        }
        await #expect(throws: MigrationError.databaseIsNewer(databaseVersion: 2, codeVersion: 1)) {
          try await older.pending(client)
        }
      }
    }
  }

  @Test func refusesAnAppliedMigrationThatWasEdited() async throws {
    try await ScratchDatabase.with("edited") { database in
      try await withPostgresClient(database.configuration) { client in
        try await runner().migrate(client)
        var edited = Self.migrations
        edited[0].sql += "\n-- edited afterwards"
        await #expect(throws: MigrationError.checksumMismatch(version: 1, name: "widgets")) {
          try await runner(edited).migrate(client)
        }
      }
    }
  }

  @Test func aFailingMigrationLeavesNothingBehind() async throws {
    try await ScratchDatabase.with("failing") { database in
      try await withPostgresClient(database.configuration) { client in
        let broken = Migration(
          version: 2, name: "broken",
          sql: "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
        let error = await #expect(throws: MigrationError.self) {
          try await runner([Self.migrations[0], broken]).migrate(client)
        }
        guard case .migrationFailed(2, "broken", let reason) = error else {
          Issue.record("unexpected error \(String(describing: error))")
          return
        }
        #expect(reason.contains("no_such_table"))
        // Migration 1 stays; migration 2's first statement was rolled back with it.
        #expect(try await runner([Self.migrations[0], broken]).pending(client).map(\.version) == [2])
        let rows = try await client.query("SELECT to_regclass('half_done')::text", logger: TestBed.logger)
        for try await name in rows.decode(String?.self) { #expect(name == nil) }
      }
    }
  }

  @Test func rejectsAMalformedMigrationList() {
    #expect(throws: MigrationError.self) {
      try MigrationRunner(migrations: [Self.migrations[1], Self.migrations[0]], logger: TestBed.logger)
    }
    #expect(throws: MigrationError.self) {
      try MigrationRunner(migrations: [Self.migrations[0], Self.migrations[0]], logger: TestBed.logger)
    }
  }
}
