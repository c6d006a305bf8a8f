import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing
import UserService

/// The housekeeping sweeper deletes the user service's bookkeeping once it is over, and nothing
/// still in force.
@Suite struct UserHousekeepingTests {
  @Test func staleRowsGoAndRowsInForceStay() async throws {
    try await withUserService("users_housekeeping") { service in
      let signedIn = try await service.register(email: "hanna@example.com")
      let userID = signedIn.user.id
      let db = service.database
      func run(_ sql: String) async throws {
        try await db.query(PostgresQuery(unsafeSQL: sql), logger: TestBed.logger)
      }
      // Throttle counts (window 15 minutes): over when the window and the lock ended a window ago.
      try await run(
        """
        INSERT INTO login_failures (key, window_start, failures, locked_until, updated_at) VALUES
          ('ip:over', now() - interval '1 hour', 7, now() - interval '40 minutes', now() - interval '40 minutes'),
          ('ip:never-locked', now() - interval '1 hour', 2, NULL, now() - interval '1 hour'),
          ('pair:lock-ended-lately', now() - interval '1 hour', 9, now() - interval '10 minutes',
           now() - interval '1 hour'),
          ('pair:locked', now() - interval '1 hour', 9, now() + interval '10 minutes', now() - interval '1 hour'),
          ('account:counting', now() - interval '5 minutes', 3, NULL, now() - interval '5 minutes')
        """)
      try await run(
        """
        INSERT INTO login_known_addresses (account, address, last_success_at) VALUES
          ('account:hanna@example.com', '192.0.2.1', now() - interval '200 days'),
          ('account:hanna@example.com', '192.0.2.2', now() - interval '100 days')
        """)
      try await run(
        """
        INSERT INTO request_quotas (key, window_start, requests) VALUES
          ('register:over', now() - interval '2 hours', 5), ('resend:current', now() - interval '10 minutes', 1)
        """)
      // Verification links: done (expired or used) more than a day ago go.
      let randomHash = "decode(md5(random()::text) || md5(random()::text), 'hex')"
      try await run(
        """
        INSERT INTO email_verifications (token_hash, user_id, email, created_at, expires_at, used_at) VALUES
          (\(randomHash), '\(userID)', 'expired-long-ago', now() - interval '3 days', now() - interval '2 days', NULL),
          (\(randomHash), '\(userID)', 'used-long-ago', now() - interval '3 days', now() + interval '1 hour',
           now() - interval '2 days'),
          (\(randomHash), '\(userID)', 'expired-lately', now() - interval '1 day', now() - interval '1 hour', NULL),
          (\(randomHash), '\(userID)', 'used-lately', now() - interval '2 hours', now() + interval '1 hour',
           now() - interval '1 hour')
        """)
      try await run(
        """
        INSERT INTO password_resets (token_hash, user_id, email, created_at, expires_at, used_at) VALUES
          (\(randomHash), '\(userID)', 'reset-expired-long-ago', now() - interval '3 days', now() - interval '2 days',
           NULL),
          (\(randomHash), '\(userID)', 'reset-pending', now() - interval '10 minutes', now() + interval '50 minutes',
           NULL)
        """)
      // Refresh-token families, each a chain of one or two tokens. The sign-in's own family is
      // live, so its spent token from long ago stays: presenting it again must still be reuse.
      try await run(
        """
        INSERT INTO refresh_tokens (family_id, user_id, token_hash, created_at, expires_at, used_at, replaced_by)
        SELECT family_id, user_id, \(randomHash), now() - interval '20 days', now() - interval '10 days',
               now() - interval '19 days', id
        FROM refresh_tokens WHERE user_id = '\(userID)'
        """)
      /// A family of a head and, if asked, the spent token it replaced; its id.
      func family(expires: String, revoked: String?, predecessor: Bool) async throws -> String {
        let family = UUID().uuidString.lowercased()
        let head = UUID().uuidString.lowercased()
        try await run(
          """
          INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at, revoked_at)
          VALUES ('\(head)', '\(family)', '\(userID)', \(randomHash), now() - interval '40 days',
                  now() + interval '\(expires)', \(revoked.map { "now() + interval '\($0)'" } ?? "NULL"))
          """)
        if predecessor {
          try await run(
            """
            INSERT INTO refresh_tokens (family_id, user_id, token_hash, created_at, expires_at, used_at, revoked_at,
                                        replaced_by)
            VALUES ('\(family)', '\(userID)', \(randomHash), now() - interval '41 days',
                    now() + interval '\(expires)' - interval '1 day', now() - interval '40 days',
                    \(revoked.map { "now() + interval '\($0)'" } ?? "NULL"), '\(head)')
            """)
        }
        return family
      }
      var names: [String: String] = [:]
      names[try await family(expires: "-2 days", revoked: nil, predecessor: true)] = "expired-long-ago"
      names[try await family(expires: "20 days", revoked: "-2 days", predecessor: true)] = "revoked-long-ago"
      names[try await family(expires: "20 days", revoked: "-1 hour", predecessor: false)] = "revoked-lately"
      names[try await family(expires: "-1 hour", revoked: nil, predecessor: false)] = "expired-lately"
      let tokensBefore = try await service.count("SELECT count(*)::int8 FROM refresh_tokens")
      #expect(tokensBefore == 2 + 2 + 2 + 1 + 1)

      // Two instances at once, in batches of two rows: neither fails, and together they finish.
      let settings = UserHousekeeping.Settings(batchSize: 2)
      let window = LoginThrottle.Policy.standard.window
      let one = UserHousekeeping(database: db, settings: settings, throttleWindow: window, logger: TestBed.logger)
      let other = UserHousekeeping(database: db, settings: settings, throttleWindow: window, logger: TestBed.logger)
      async let first = one.sweep()
      async let second = other.sweep()
      let reports = try await [first, second]
      // The service's own sweeper may have run a round too: what counts is what is left.
      let deleted: Int = reports[0].total + reports[1].total
      let stale = 9  // 2 counts, 1 address, 1 quota, 3 links, 2 families
      #expect(deleted <= stale)

      let failures = try await service.strings("SELECT key FROM login_failures ORDER BY key")
      #expect(failures == ["account:counting", "pair:lock-ended-lately", "pair:locked"])
      let known = try await service.strings("SELECT address FROM login_known_addresses ORDER BY address")
      #expect(known == ["192.0.2.2"])
      let quotas = try await service.strings("SELECT key FROM request_quotas WHERE key NOT LIKE 'register:hanna%'")
      #expect(quotas == ["resend:current"])
      let links = try await service.strings("SELECT email FROM email_verifications ORDER BY email")
      #expect(links == ["expired-lately", "hanna@example.com", "used-lately"])
      let resets = try await service.strings("SELECT email FROM password_resets")
      #expect(resets == ["reset-pending"])
      let families = try await service.strings("SELECT DISTINCT family_id::text FROM refresh_tokens")
      #expect(Set(families.map { names[$0] ?? "sign-in" }) == ["sign-in", "revoked-lately", "expired-lately"])
      let signInTokens = try await service.count(
        "SELECT count(*)::int8 FROM refresh_tokens WHERE user_id = '\(userID)' AND created_at > now() - interval '30 days'"
      )
      #expect(signInTokens == 2)

      // Nothing is left to do.
      let again = try await one.sweep()
      #expect(again.total == 0)
    }
  }
}
