import Logging
import MartCore
import PostgresNIO

/// One versioned schema change: the contents of `Migrations/NNNN_name.sql` in a service's target.
public struct Migration: Sendable {
  public var version: Int
  public var name: String
  public var sql: String

  public init(version: Int, name: String, sql: String) {
    self.version = version
    self.name = name
    self.sql = sql
  }

  /// A migration from a file embedded with SwiftPM's `.embedInCode` resource rule.
  public init(version: Int, name: String, embedded bytes: [UInt8]) {
    self.init(version: version, name: name, sql: String(decoding: bytes, as: UTF8.self))
  }

  /// FNV-1a (64 bit) of the SQL text: enough to notice that an applied migration was edited afterwards.
  public var checksum: String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in sql.utf8 {
      hash ^= UInt64(byte)
      hash = hash &* 0x100_0000_01b3
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
  }
}

public enum MigrationError: Error, CustomStringConvertible, Equatable {
  /// The database has migrations this code does not know: it was migrated by a newer release.
  case databaseIsNewer(databaseVersion: Int, codeVersion: Int)
  /// A migration that was applied has different SQL now.
  case checksumMismatch(version: Int, name: String)
  /// The code's own list is malformed (duplicate or unordered versions).
  case invalidMigrationList(String)
  /// A statement of a migration failed; nothing of that migration was kept.
  case migrationFailed(version: Int, name: String, reason: String)

  public var description: String {
    switch self {
    case .databaseIsNewer(let databaseVersion, let codeVersion):
      "the database is at schema version \(databaseVersion) but this build knows only up to \(codeVersion): refusing to run older code against a newer schema"
    case .checksumMismatch(let version, let name):
      "migration \(version) (\(name)) was changed after it was applied; add a new migration instead"
    case .invalidMigrationList(let reason):
      "invalid migration list: \(reason)"
    case .migrationFailed(let version, let name, let reason):
      "migration \(version) (\(name)) failed and was rolled back: \(reason)"
    }
  }
}

/// What a migration run found and did.
public struct MigrationReport: Sendable, Equatable {
  /// Versions this run applied, in order.
  public var applied: [Int]
  /// The schema version after the run.
  public var currentVersion: Int

  public init(applied: [Int], currentVersion: Int) {
    self.applied = applied
    self.currentVersion = currentVersion
  }
}

/// Applies a service's migrations in order, each in its own transaction, and records them in
/// `mart_schema_migrations`.
///
/// Every step runs under a transaction-scoped advisory lock, so two processes migrating the same
/// database at once apply each migration exactly once; a crash releases the lock with the session.
public struct MigrationRunner: Sendable {
  public static let tableName = "mart_schema_migrations"
  /// Arbitrary but fixed: all Mart processes agree on it (pg_advisory_xact_lock takes a bigint).
  static let advisoryLockKey: Int64 = 0x4d41_5254_4d49_4752  // "MARTMIGR"

  public let migrations: [Migration]
  let logger: Logger

  public init(migrations: [Migration], logger: Logger) throws {
    let versions = migrations.map(\.version)
    guard versions == versions.sorted(), Set(versions).count == versions.count, versions.allSatisfy({ $0 > 0 })
    else {
      throw MigrationError.invalidMigrationList("versions must be positive, unique and in order: \(versions)")
    }
    self.migrations = migrations
    self.logger = logger
  }

  public var latestVersion: Int { migrations.last?.version ?? 0 }

  /// Applies every pending migration. Safe to call again, and from several processes at once.
  @discardableResult
  public func migrate(_ client: PostgresClient) async throws -> MigrationReport {
    var applied: [Int] = []
    while true {
      let step = try await step(client, apply: true)
      if let version = step.appliedVersion {
        applied.append(version)
      } else {
        return MigrationReport(applied: applied, currentVersion: step.currentVersion)
      }
    }
  }

  /// The pending migrations, without applying them; throws when the database is newer or was edited.
  public func pending(_ client: PostgresClient) async throws -> [Migration] {
    let state = try await step(client, apply: false)
    return migrations.filter { $0.version > state.currentVersion }
  }

  private struct Step {
    var appliedVersion: Int?
    var currentVersion: Int
  }

  /// One transaction: lock, make sure the table exists, validate what is applied, apply the next one.
  private func step(_ client: PostgresClient, apply: Bool) async throws -> Step {
    do {
      return try await client.withTransaction(logger: logger) { connection in
        try await connection.query("SELECT pg_advisory_xact_lock(\(Self.advisoryLockKey))", logger: logger)
        try await connection.query(
          """
          CREATE TABLE IF NOT EXISTS mart_schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
          )
          """, logger: logger)
        var recorded: [Int: (name: String, checksum: String)] = [:]
        let rows = try await connection.query(
          "SELECT version, name, checksum FROM mart_schema_migrations ORDER BY version", logger: logger)
        for try await (version, name, checksum) in rows.decode((Int, String, String).self) {
          recorded[version] = (name, checksum)
        }
        let current = try validate(recorded)
        guard apply, let next = migrations.first(where: { recorded[$0.version] == nil }) else {
          return Step(appliedVersion: nil, currentVersion: current)
        }
        logger.info(
          "applying migration", metadata: ["version": "\(next.version)", "migration": "\(next.name)"])
        for statement in SQLStatementSplitter.split(next.sql) {
          do {
            try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
          } catch {
            throw MigrationError.migrationFailed(
              version: next.version, name: next.name, reason: APIStatus.redactedDescription(of: error))
          }
        }
        try await connection.query(
          "INSERT INTO mart_schema_migrations (version, name, checksum) VALUES (\(next.version), \(next.name), \(next.checksum))",
          logger: logger)
        return Step(appliedVersion: next.version, currentVersion: next.version)
      }
    } catch {
      throw error.unwrappingTransactionError
    }
  }

  /// Returns the current schema version; throws when the database is ahead of the code or was edited.
  private func validate(_ recorded: [Int: (name: String, checksum: String)]) throws -> Int {
    let known = Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, $0) })
    if let unknown = recorded.keys.filter({ known[$0] == nil }).max() {
      throw MigrationError.databaseIsNewer(
        databaseVersion: max(unknown, recorded.keys.max() ?? unknown), codeVersion: latestVersion)
    }
    for (version, record) in recorded {
      if let migration = known[version], migration.checksum != record.checksum {
        throw MigrationError.checksumMismatch(version: version, name: record.name)
      }
    }
    return recorded.keys.max() ?? 0
  }
}

/// Splits a SQL script into statements at top-level semicolons.
///
/// postgres-nio speaks only the extended query protocol, which takes one statement at a time.
/// Semicolons inside quotes, quoted identifiers, comments and dollar-quoted bodies (`$$ … $$`,
/// as in function definitions) do not split.
public enum SQLStatementSplitter {
  public static func split(_ script: String) -> [String] {
    let chars = Array(script.unicodeScalars)
    var statements: [String] = []
    var current = String.UnicodeScalarView()
    var index = 0
    // Whether the current statement has anything but comments and white space.
    var hasCode = false

    func flush() {
      if hasCode { statements.append(String(current).trimmingWhitespace()) }
      current = String.UnicodeScalarView()
      hasCode = false
    }

    while index < chars.count {
      let char = chars[index]
      let next: Unicode.Scalar? = index + 1 < chars.count ? chars[index + 1] : nil
      switch char {
      case "'", "\"":
        // A quoted string or identifier; a doubled quote is an escaped quote.
        hasCode = true
        current.append(char)
        index += 1
        while index < chars.count {
          current.append(chars[index])
          if chars[index] == char {
            if index + 1 < chars.count, chars[index + 1] == char {
              current.append(chars[index + 1])
              index += 2
              continue
            }
            break
          }
          index += 1
        }
        index += 1
      case "-" where next == "-":
        while index < chars.count, chars[index] != "\n" {
          current.append(chars[index])
          index += 1
        }
      case "/" where next == "*":
        var depth = 0
        while index < chars.count {
          if chars[index] == "/", index + 1 < chars.count, chars[index + 1] == "*" {
            depth += 1
            current.append(chars[index])
            current.append(chars[index + 1])
            index += 2
          } else if chars[index] == "*", index + 1 < chars.count, chars[index + 1] == "/" {
            depth -= 1
            current.append(chars[index])
            current.append(chars[index + 1])
            index += 2
            if depth == 0 { break }
          } else {
            current.append(chars[index])
            index += 1
          }
        }
      case "$":
        // A dollar quote: $$ or $tag$ where tag is an identifier; otherwise a positional parameter.
        var end = index + 1
        while end < chars.count,
          chars[end] == "_" || chars[end].properties.isAlphabetic
            || (end > index + 1 && ("0"..."9").contains(chars[end]))
        {
          end += 1
        }
        hasCode = true
        if end < chars.count, chars[end] == "$" {
          let tag = Array(chars[index...end])
          current.append(contentsOf: tag)
          index = end + 1
          while index < chars.count {
            if chars[index] == "$", index + tag.count <= chars.count,
              Array(chars[index..<(index + tag.count)]) == tag
            {
              current.append(contentsOf: tag)
              index += tag.count
              break
            }
            current.append(chars[index])
            index += 1
          }
        } else {
          current.append(char)
          index += 1
        }
      case ";":
        flush()
        index += 1
      default:
        if !char.properties.isWhitespace { hasCode = true }
        current.append(char)
        index += 1
      }
    }
    flush()
    return statements
  }
}
