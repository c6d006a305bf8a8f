import Foundation
import GRPCCore
import GRPCInProcessTransport
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import NIOSSL
import NotificationService
import PostgresNIO
import SMTP
import Testing
import UserService

@testable import NotificationService

/// The notification service with the real user service, in-process on one network and one event
/// transport: a registration there is a UserRegistered here. Order, payment and inventory events
/// are published by the test as those services' relays would.
struct NotificationHarness: Sendable {
  let notifications: Mart_Notification_V1_NotificationService.Client<InProcessTransport.Client>
  let userService: Mart_User_V1_UserService.Client<InProcessTransport.Client>
  let database: PostgresClient
  let transport: any EventTransport
  let users: TestUsers
  let admin: Metadata

  static let password = "correct horse battery staple"

  /// Settings for tests: quick retries, a short wait for unknown users, a scratch mailbox.
  static func settings(smtp: SMTPConfiguration? = nil, mailbox: String? = nil) throws -> NotificationSettings {
    NotificationSettings(
      emailFrom: try EmailAddress("shop@mart.test", name: "Mart Test"), smtp: smtp,
      mailboxDirectory: mailbox
        ?? FileManager.default.temporaryDirectory
        .appendingPathComponent("mart-mailbox-\(UUID().uuidString)").path,
      shopName: "Mart Test", messageDomain: "mart.test", maximumAttempts: 4,
      firstRetryBackoff: .milliseconds(50), maximumRetryBackoff: .milliseconds(200), sendLease: .seconds(30),
      unknownUserGrace: .seconds(60), pollInterval: .milliseconds(200))
  }

  /// SMTP to `server` with STARTTLS and AUTH, trusting its self-signed certificate.
  static func smtp(_ server: SMTPTestServer, dataTimeout: Duration = .seconds(2)) throws -> SMTPConfiguration {
    var configuration = SMTPConfiguration(
      host: "127.0.0.1", port: server.port, security: .startTLS,
      credentials: server.credentials.map { .init(username: $0.user, password: $0.password) })
    if let certificate = server.certificatePath {
      configuration.tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
    }
    configuration.commandTimeout = .seconds(5)
    configuration.dataTimeout = dataTimeout
    return configuration
  }

  static func run(
    _ label: String, settings: NotificationSettings, _ body: (NotificationHarness) async throws -> Void
  ) async throws {
    let users = try TestUsers()
    let network = InProcessNetwork()
    let transport = InProcessEventTransport()
    try await ScratchDatabase.with("\(label)_u") { userDatabase in
      try await ScratchDatabase.with("\(label)_n") { notificationDatabase in
        try await withHost(
          UserServiceModule.makeDefinition(
            options: UserServiceOptions(passwordCost: .testing, keyEncryption: .random())), service: .user,
          database: userDatabase, users: users, transport: transport, network: network
        ) { _, userGRPC in
          try await withHost(
            NotificationServiceModule.makeDefinition(settings: settings), service: .notification,
            database: notificationDatabase, users: users, transport: transport, network: network
          ) { host, notificationGRPC in
            try await body(
              NotificationHarness(
                notifications: .init(wrapping: notificationGRPC), userService: .init(wrapping: userGRPC),
                database: host.database, transport: transport, users: users,
                admin: try users.bearer(roles: ["customer", "admin"])))
          }
        }
      }
    }
  }

  // MARK: Users

  /// Registers an account with the user service (its UserRegistered reaches the notification
  /// service); its id and a token for it.
  func register(
    _ email: String, name: String = "Thandi Nkosi", phone: String = "", locale: String = ""
  ) async throws -> (id: UUID, auth: Metadata) {
    _ = try await userService.register(
      .with {
        $0.email = email
        $0.password = Self.password
        $0.fullName = name
        $0.phone = phone
        $0.locale = locale
      })
    let response = try await userService.login(
      .with {
        $0.email = email
        $0.password = Self.password
      })
    let id = try #require(UUID(uuidString: response.user.id))
    return (id, try users.bearer(roles: ["customer"], subject: id))
  }

  /// Waits until the notification service knows the user (its projection row).
  func waitUntilKnown(_ userID: UUID, version: Int64 = 1) async throws {
    let known = await eventually {
      let rows = try await database.query(
        "SELECT version FROM users WHERE user_id = \(userID)", logger: TestBed.logger)
      for try await seen in rows.decode(Int64.self) where seen >= version { return true }
      return false
    }
    #expect(known, "the notification service never learnt of user \(userID)")
  }

  // MARK: Events

  /// Publishes an event as its service's relay would, `times` times (redeliveries of one event).
  func publish<Event: DomainEvent>(
    _ event: Event, id: UUID = UUID(), subject: String, time: Date = Date(), times: Int = 1
  ) async throws {
    var event = event
    event.metadata.eventID = id.lowercasedString
    let envelope = EventEnvelope(
      id: id, type: Event.protoMessageName, source: "/mart/test", subject: subject, time: time,
      topic: Event.topic.name, payload: try event.serializedBytes())
    _ = await transport.publish(Array(repeating: OutgoingRecord(envelope), count: times))
  }

  static func orderPaid(_ userID: UUID, number: String = "M-2026-000042") -> Mart_Order_V1_OrderPaid {
    .with {
      $0.orderID = UUID().lowercasedString
      $0.orderNumber = number
      $0.userID = userID.lowercasedString
      $0.paymentID = UUID().lowercasedString
      $0.amount = Mart_Common_V1_Money(minor: 123_450, currency: "ZAR")
    }
  }

  // MARK: The delivery log

  struct DeliveryRow: Sendable, Equatable {
    var kind: String
    var channel: String
    var status: String
    var attempts: Int
    var recipient: String?
    var messageID: String
    var lastError: String?
  }

  func deliveries(of userID: UUID) async throws -> [DeliveryRow] {
    let rows = try await database.query(
      """
      SELECT kind, channel, status, attempt_count, recipient, message_id, last_error FROM deliveries
      WHERE user_id = \(userID) ORDER BY created_at, channel
      """, logger: TestBed.logger)
    var result: [DeliveryRow] = []
    for try await (kind, channel, status, attempts, recipient, messageID, error) in rows.decode(
      (String, String, String, Int32, String?, String, String?).self)
    {
      result.append(
        DeliveryRow(
          kind: kind, channel: channel, status: status, attempts: Int(attempts), recipient: recipient,
          messageID: messageID, lastError: error))
    }
    return result
  }

  /// Waits until every delivery of the user has left the queue (sent, failed or skipped), and
  /// there are at least `count`.
  func settledDeliveries(of userID: UUID, count: Int) async throws -> [DeliveryRow] {
    _ = await eventually {
      let rows = try await deliveries(of: userID)
      return rows.count >= count && rows.allSatisfy { ["sent", "failed", "skipped"].contains($0.status) }
    }
    return try await deliveries(of: userID)
  }

  /// The service's store over the harness's database, for what only the store shows.
  var store: NotificationStore {
    NotificationStore(database: database, outbox: Outbox(service: .notification), logger: TestBed.logger)
  }

  func outboxCount(type: String) async throws -> Int {
    let rows = try await database.query(
      "SELECT count(*)::int8 FROM outbox WHERE event_type = \(type)", logger: TestBed.logger)
    var count: Int64 = 0
    for try await value in rows.decode(Int64.self) { count = value }
    return Int(count)
  }
}
