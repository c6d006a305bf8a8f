import Foundation
import GRPCCore
import Logging
import MartProto
import MartRuntime
import MartTestSupport
import NIOSSL
import NotificationService
import PostgresNIO
import SMTP

// Emails per second from the notification service's sender to a local SMTP server (aiosmtpd with
// STARTTLS and AUTH, as Mailtrap is reached), and how long an event takes from its publication to
// the SMTP server's acceptance (the delivery's sent_at, committed after the server's 250).
//
// The service runs in-process with its consumers on the in-process event transport and its own
// PostgreSQL database; the events are OrderPaid for users it already knows.
//   (a) flat out: BENCH_EMAILS events published at once; emails/s until the last is sent.
//   (b) paced: BENCH_RATE events per second for BENCH_SECONDS; p50/p99/max of event → SMTP.
//
// Environment: the test bed's (MART_TEST_DATABASE_URL, MART_AIOSMTPD_PYTHON), BENCH_EMAILS
// (default 2000), BENCH_RATE (default 50), BENCH_SECONDS (default 20), BENCH_BATCH (the sender's
// batch size, default 32), BENCH_SMTP_SESSIONS (sessions a batch's emails share, default 4).

let env = EnvironmentReader()
let emails = try env.positiveInteger("BENCH_EMAILS", default: 2000)
let rate = try env.positiveInteger("BENCH_RATE", default: 50)
let seconds = try env.positiveInteger("BENCH_SECONDS", default: 20)
let batch = try env.positiveInteger("BENCH_BATCH", default: 32)
let sessions = try env.positiveInteger("BENCH_SMTP_SESSIONS", default: 4)
let users = 200

func report(_ line: String) {
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
  guard !sorted.isEmpty else { return 0 }
  return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
}

let server = try await SMTPTestServer.start()
defer { server.stop() }
/// The service's settings for the run: SMTP to the local server, trusting its certificate.
func benchSettings() throws -> NotificationSettings {
  var smtp = SMTPConfiguration(
    host: "127.0.0.1", port: server.port, security: .startTLS,
    credentials: server.credentials.map { .init(username: $0.user, password: $0.password) })
  if let certificate = server.certificatePath {
    smtp.tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
  }
  var settings = NotificationSettings(
    emailFrom: try EmailAddress("shop@mart.bench", name: "Mart"), smtp: smtp, messageDomain: "mart.bench")
  settings.batchSize = batch
  settings.emailSessions = sessions
  settings.pollInterval = .milliseconds(200)
  return settings
}
let settings = try benchSettings()

let testUsers = try TestUsers()
let transport = InProcessEventTransport()
let userIDs = (0..<users).map { _ in UUID() }

/// Publishes OrderPaid for user `n % users`; its event id.
func publishOrderPaid(_ n: Int) async throws -> UUID {
  let id = UUID()
  let user = userIDs[n % users]
  let event = Mart_Order_V1_OrderPaid.with {
    $0.metadata.eventID = id.lowercasedString
    $0.orderID = UUID().lowercasedString
    $0.orderNumber = "M-BENCH-\(n)"
    $0.userID = user.lowercasedString
    $0.amount = Mart_Common_V1_Money(minor: 12_345, currency: "ZAR")
  }
  let envelope = EventEnvelope(
    id: id, type: Mart_Order_V1_OrderPaid.protoMessageName, source: "/mart/bench", subject: event.orderID,
    time: Date(), topic: Mart_Order_V1_OrderPaid.topic.name, payload: try event.serializedBytes())
  _ = await transport.publish([OutgoingRecord(envelope)])
  return id
}

/// Sent deliveries of these events: their latency from `published` to sent_at, in ms.
func latencies(_ published: [UUID: Date], database: PostgresClient) async throws -> [Double] {
  let rows = try await database.query(
    "SELECT source_event_id, sent_at FROM deliveries WHERE status = 'sent' AND source_event_id = ANY(\(Array(published.keys)))",
    logger: TestBed.logger)
  var result: [Double] = []
  for try await (id, sentAt) in rows.decode((UUID, Date).self) {
    if let start = published[id] { result.append(sentAt.timeIntervalSince(start) * 1000) }
  }
  return result.sorted()
}

func sentCount(_ database: PostgresClient) async throws -> Int {
  let rows = try await database.query(
    "SELECT count(*)::int8 FROM deliveries WHERE status = 'sent' AND kind = 'order_paid'", logger: TestBed.logger)
  var count: Int64 = 0
  for try await value in rows.decode(Int64.self) { count = value }
  return Int(count)
}

/// Both runs against one service and one SMTP server.
func run() async throws {
  try await ScratchDatabase.with("bench_notifications") { database in
    try await withHost(
      testUsers.withTestKeys(NotificationServiceModule.makeDefinition(settings: settings)), service: .notification,
      database: database, users: testUsers, transport: transport
    ) { host, _ in
      // The users the events name, as their registration would have left them.
      try await host.database.withTransaction(logger: TestBed.logger) { connection in
        for (n, id) in userIDs.enumerated() {
          try await connection.query(
            "INSERT INTO users (user_id, email, full_name, version) VALUES (\(id), \("customer\(n)@example.com"), 'Bench Customer', 1)",
            logger: TestBed.logger)
        }
      }

      // (a) Flat out.
      var published: [UUID: Date] = [:]
      let start = ContinuousClock.now
      for n in 0..<emails { published[try await publishOrderPaid(n)] = Date() }
      while try await sentCount(host.database) < emails {
        try await Task.sleep(for: .milliseconds(50))
        if ContinuousClock.now - start > .seconds(600) { throw CancellationError() }
      }
      let elapsed = ContinuousClock.now - start
      let flat = try await latencies(published, database: host.database)
      report(
        String(
          format: "flat out: %d emails in %.1f s = %.0f emails/s (event -> SMTP p50 %.0f ms, p99 %.0f ms)", emails,
          elapsed.timeInterval, Double(emails) / elapsed.timeInterval,
          percentile(flat, 0.5), percentile(flat, 0.99)))

      // (b) Paced.
      published = [:]
      let interval = Duration.seconds(1) / rate
      var next = ContinuousClock.now
      for n in 0..<(rate * seconds) {
        try await Task.sleep(until: next)
        published[try await publishOrderPaid(emails + n)] = Date()
        next += interval
      }
      while try await sentCount(host.database) < emails + rate * seconds {
        try await Task.sleep(for: .milliseconds(50))
      }
      let paced = try await latencies(published, database: host.database)
      report(
        String(
          format: "paced at %d events/s for %d s: event -> SMTP p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d emails)",
          rate, seconds, percentile(paced, 0.5), percentile(paced, 0.99), paced.last ?? 0, paced.count))
      let received = try server.receivedMessages().count
      report("the SMTP server received \(received) messages for \(emails + rate * seconds) events")
    }
  }
}

try await run()
