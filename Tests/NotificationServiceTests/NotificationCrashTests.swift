import Foundation
import MartRuntime
import MartTestSupport
import PostgresNIO
import Testing

/// The notification service as a process, killed with SIGKILL while the SMTP server holds a
/// message it has taken but not yet answered: the worst moment, after the provider has the
/// message and before our commit.
@Suite("Notification sender killed mid-send", .serialized)
struct NotificationCrashTests {
  /// After the restart the delivery is sent once more, carrying the same Message-ID: the
  /// duplicate is detectable (and the resumed send is logged and counted). No delivery is lost.
  @Test func aSenderKilledMidSendSendsAgainWithTheSameMessageID() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    try await ScratchDatabase.with("notify_kill") { database in
      let port = try freePort()
      var environment = [
        "MART_NOTIFICATION_DATABASE_URL": database.url, "MART_NOTIFICATION_PORT": "\(port)",
        "MART_SMTP_HOST": "127.0.0.1", "MART_SMTP_PORT": "\(server.port)", "MART_SMTP_SECURITY": "starttls",
        "MART_NOTIFICATION_SEND_LEASE": "2s", "MART_NOTIFICATION_POLL_INTERVAL": "200ms",
        "MART_NOTIFICATION_EMAIL_FROM": "Mart <shop@mart.test>", "MART_LOG_LEVEL": "info",
      ]
      if let credentials = server.credentials {
        environment["MART_SMTP_USERNAME"] = credentials.user
        environment["MART_SMTP_PASSWORD"] = credentials.password
      }
      let certificate: String = try #require(server.certificatePath)
      environment["MART_SMTP_CA_FILE"] = certificate
      let first = try ChildProcess.mart(["serve", "notification"], environment: environment)
      let name = MartService.notification.grpcServiceName
      #expect(await eventually { await healthStatus(port: port, service: name) == .serving }, "\(first.standardError)")

      // A queued welcome email for a known user, as the consumer would leave it; the server
      // keeps the first message to this address and never answers it.
      let userID = UUID()
      let deliveryID = UUID()
      let messageID = "<\(deliveryID.lowercasedString)@mart.test>"
      try await withPostgresClient(database.configuration) { postgres in
        try await postgres.withTransaction(logger: TestBed.logger) { connection in
          try await connection.query(
            """
            INSERT INTO users (user_id, email, full_name, version) VALUES (\(userID), 'hangonce+k@example.com', 'Kim', 1)
            """, logger: TestBed.logger)
          try await connection.query(
            """
            INSERT INTO deliveries (id, user_id, kind, channel, recipient, message_id, next_attempt_at)
            VALUES (\(deliveryID), \(userID), 'welcome', 'email', 'hangonce+k@example.com', \(messageID), now())
            """, logger: TestBed.logger)
          try await connection.query("SELECT pg_notify('mart_notification_deliveries', '')", logger: TestBed.logger)
        }
      }
      _ = try await server.waitForMessages(1)
      first.signal(SIGKILL)
      _ = await first.waitForExit()
      #expect(try await status(of: deliveryID, in: database) == "sending")

      let second = try ChildProcess.mart(["serve", "notification"], environment: environment)
      defer { second.signal(SIGTERM) }
      let sent = await eventually { try await status(of: deliveryID, in: database) == "sent" }
      #expect(sent, "\(second.standardError.suffix(3000))")
      let received = try await server.waitForMessages(2)
      #expect(received.count == 2)
      #expect(received.map { $0.header("Message-ID") } == [messageID, messageID])
      #expect(second.standardError.contains("sending again a delivery whose previous attempt was cut off"))
      try await withPostgresClient(database.configuration) { postgres in
        let rows = try await postgres.query(
          "SELECT attempt_count FROM deliveries WHERE id = \(deliveryID)", logger: TestBed.logger)
        for try await attempts in rows.decode(Int32.self) { #expect(attempts == 2) }
      }
    }
  }

  private func status(of deliveryID: UUID, in database: ScratchDatabase) async throws -> String? {
    try await withPostgresClient(database.configuration) { postgres in
      let rows = try await postgres.query(
        "SELECT status FROM deliveries WHERE id = \(deliveryID)", logger: TestBed.logger)
      var status: String?
      for try await value in rows.decode(String.self) { status = value }
      return status
    }
  }
}
