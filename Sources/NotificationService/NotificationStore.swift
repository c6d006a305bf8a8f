import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO
import SwiftProtobuf

/// A row of `users`: what this service knows of an account.
struct UserContact: Sendable, Equatable {
  var userID: UUID
  var email: String?
  var phone: String?
  var fullName: String?
  var locale: String
  var isAdmin: Bool

  static let columns = "user_id, email, phone, full_name, locale, is_admin"
  typealias Row = (UUID, String?, String?, String?, String, Bool)

  init(_ row: Row) { (userID, email, phone, fullName, locale, isAdmin) = row }

  init(userID: UUID, email: String?, phone: String?, fullName: String?, locale: String, isAdmin: Bool) {
    (self.userID, self.email, self.phone, self.fullName, self.locale, self.isAdmin) =
      (userID, email, phone, fullName, locale, isAdmin)
  }

  func address(for channel: DeliveryChannel) -> String? { channel == .email ? email : phone }
}

/// A row of `notifications`: one item of a user's inbox.
struct NotificationRecord: Sendable {
  var id: UUID
  var userID: UUID
  var kind: NotificationKind
  var title: String
  var body: String
  var orderID: UUID?
  var sourceEventID: UUID?
  var createdAt: Date
  var readAt: Date?
  var createdMicros: Int64

  static let columns = """
    id, user_id, kind, title, body, order_id, source_event_id, created_at, read_at,
    floor(extract(epoch FROM created_at) * 1000000)::int8
    """
  typealias Row = (UUID, UUID, String, String, String, UUID?, UUID?, Date, Date?, Int64)

  init(_ row: Row) {
    let kind: String
    (id, userID, kind, title, body, orderID, sourceEventID, createdAt, readAt, createdMicros) = row
    // The table's CHECK admits only the kinds this enum lists.
    self.kind = NotificationKind(rawValue: kind) ?? .test
  }

  var proto: Mart_Notification_V1_Notification {
    .with {
      $0.id = id.lowercasedString
      $0.userID = userID.lowercasedString
      $0.kind = kind.proto
      $0.title = title
      $0.body = body
      $0.orderID = orderID?.lowercasedString ?? ""
      $0.sourceEventID = sourceEventID?.lowercasedString ?? ""
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      if let readAt { $0.readTime = Google_Protobuf_Timestamp(date: readAt) }
    }
  }
}

/// A row of `deliveries`: one email or SMS and where it stands.
struct DeliveryRecord: Sendable {
  var id: UUID
  var notificationID: UUID?
  var sourceEventID: UUID?
  var userID: UUID
  var kind: NotificationKind
  var channel: DeliveryChannel
  var recipient: String?
  var templateData: String
  var messageID: String
  var status: DeliveryStatus
  var attemptCount: Int
  var lastError: String?
  var providerMessageID: String?
  var createdAt: Date
  var sentAt: Date?
  var nextAttemptAt: Date?
  var createdMicros: Int64
  /// What the provider said of the message after taking it (Twilio's status callback).
  var providerStatus: String?

  static let columns = """
    id, notification_id, source_event_id, user_id, kind, channel, recipient, template_data::text, message_id, status,
    attempt_count, last_error, provider_message_id, created_at, sent_at, next_attempt_at,
    floor(extract(epoch FROM created_at) * 1000000)::int8, provider_status
    """
  typealias Row = (
    UUID, UUID?, UUID?, UUID, String, String, String?, String, String, String, Int32, String?, String?, Date, Date?,
    Date?, Int64, String?
  )

  init(_ row: Row) {
    let (kind, channel, status, attempts): (String, String, String, Int32)
    (
      id, notificationID, sourceEventID, userID, kind, channel, recipient, templateData, messageID, status, attempts,
      lastError, providerMessageID, createdAt, sentAt, nextAttemptAt, createdMicros, providerStatus
    ) = row
    // The table's CHECKs admit only the values these enums list.
    self.kind = NotificationKind(rawValue: kind) ?? .test
    self.channel = DeliveryChannel(rawValue: channel) ?? .email
    self.status = DeliveryStatus(rawValue: status) ?? .failed
    attemptCount = Int(attempts)
  }

  /// The address for display: enough to recognise, not enough to harvest.
  var maskedRecipient: String {
    guard let recipient else { return "" }
    if channel == .email, let at = recipient.firstIndex(of: "@") {
      return "\(recipient.prefix(1))***\(recipient[at...])"
    }
    return "\(recipient.prefix(3))***\(recipient.suffix(2))"
  }

  var proto: Mart_Notification_V1_Delivery {
    .with {
      $0.id = id.lowercasedString
      $0.notificationID = notificationID?.lowercasedString ?? ""
      $0.sourceEventID = sourceEventID?.lowercasedString ?? ""
      $0.userID = userID.lowercasedString
      $0.kind = kind.proto
      $0.channel = channel.proto
      $0.destination = maskedRecipient
      $0.status = status.proto
      $0.attemptCount = Int32(attemptCount)
      $0.lastError = lastError ?? ""
      $0.providerMessageID = providerMessageID ?? ""
      $0.providerStatus = providerStatus ?? ""
      $0.createTime = Google_Protobuf_Timestamp(date: createdAt)
      if let sentAt { $0.sendTime = Google_Protobuf_Timestamp(date: sentAt) }
      if let nextAttemptAt, [.queued, .retrying].contains(status) {
        $0.nextAttemptTime = Google_Protobuf_Timestamp(date: nextAttemptAt)
      }
    }
  }
}

/// A delivery the sender has taken, with what it needs to send it now: the user's current details.
struct ClaimedDelivery: Sendable {
  var delivery: DeliveryRecord
  var contact: UserContact?
  /// The previous attempt was cut off mid-send (its lease ran out): the provider may already
  /// have it, so this send may be a duplicate, recognisable by the same Message-ID.
  var resumed: Bool
}

/// The keyset position of a list row: newest first by (created_at, id).
struct NotificationCursor: Codable, Sendable, Equatable {
  var micros: Int64
  var id: UUID

  enum CodingKeys: String, CodingKey {
    case micros = "t"
    case id = "i"
  }
}

/// The notification service's SQL. Changes that belong together (a notification, its deliveries
/// and the inbox row of the event that caused them) share the caller's transaction.
struct NotificationStore: Sendable {
  let database: PostgresClient
  let outbox: Outbox
  let logger: Logger

  /// Notified in the transaction that queues a delivery: the sender wakes when it commits.
  static let senderChannel = "mart_notification_deliveries"

  // MARK: - Users

  /// Replaces what is known of a user when `version` is newer than what is held. False when it
  /// is not (a redelivered or overtaken event).
  @discardableResult
  func applyUser(_ contact: UserContact, version: Int64, on connection: PostgresConnection) async throws -> Bool {
    let rows = try await connection.query(
      """
      INSERT INTO users (user_id, email, phone, full_name, locale, is_admin, version)
      VALUES (\(contact.userID), \(contact.email), \(contact.phone), \(contact.fullName), \(contact.locale),
              \(contact.isAdmin), \(version))
      ON CONFLICT (user_id) DO UPDATE SET
        email = excluded.email, phone = excluded.phone, full_name = excluded.full_name, locale = excluded.locale,
        is_admin = excluded.is_admin, version = excluded.version, updated_at = now()
      WHERE users.version < excluded.version
      RETURNING 1
      """, logger: logger)
    var applied = false
    for try await _ in rows.decode(Int.self) { applied = true }
    return applied
  }

  func user(_ id: UUID, on connection: PostgresConnection) async throws -> UserContact? {
    let rows = try await connection.query(
      "SELECT \(unescaped: UserContact.columns) FROM users WHERE user_id = \(id)", logger: logger)
    var result: UserContact?
    for try await row in rows.decode(UserContact.Row.self) { result = UserContact(row) }
    return result
  }

  func admins(on connection: PostgresConnection) async throws -> [UserContact] {
    let rows = try await connection.query(
      "SELECT \(unescaped: UserContact.columns) FROM users WHERE is_admin ORDER BY user_id", logger: logger)
    var result: [UserContact] = []
    for try await row in rows.decode(UserContact.Row.self) { result.append(UserContact(row)) }
    return result
  }

  // MARK: - Preferences

  /// A user's switches per category (the defaults where never changed) and when they last changed.
  func preferences(of userID: UUID, on connection: PostgresConnection? = nil) async throws -> (
    switches: [PreferenceCategory: ChannelSwitches], updatedAt: Date?
  ) {
    let query: PostgresQuery =
      "SELECT category, email_enabled, sms_enabled, updated_at FROM preferences WHERE user_id = \(userID)"
    let rows =
      if let connection {
        try await connection.query(query, logger: logger)
      } else {
        try await database.query(query, logger: logger)
      }
    var switches = Dictionary(uniqueKeysWithValues: PreferenceCategory.allCases.map { ($0, $0.defaults) })
    var updatedAt: Date?
    for try await (category, email, sms, updated) in rows.decode((String, Bool, Bool, Date).self) {
      guard let category = PreferenceCategory(rawValue: category) else { continue }
      switches[category] = ChannelSwitches(email: email, sms: sms)
      updatedAt = max(updatedAt ?? updated, updated)
    }
    return (switches, updatedAt)
  }

  struct PreferenceChange: Sendable {
    var category: PreferenceCategory
    var channel: DeliveryChannel
    var enabled: Bool
  }

  /// Sets each switch named, in one transaction, touching no other: two requests that change
  /// different switches of one category both take effect.
  func setPreferences(of userID: UUID, _ changes: [PreferenceChange]) async throws {
    let logger = self.logger
    try await database.transaction(logger: logger) { connection in
      for change in changes {
        let defaults = change.category.defaults
        let email = change.channel == .email ? change.enabled : defaults.email
        let sms = change.channel == .sms ? change.enabled : defaults.sms
        let update: PostgresQuery =
          change.channel == .email
          ? "email_enabled = excluded.email_enabled" : "sms_enabled = excluded.sms_enabled"
        try await connection.query(
          """
          INSERT INTO preferences (user_id, category, email_enabled, sms_enabled)
          VALUES (\(userID), \(change.category.rawValue), \(email), \(sms))
          ON CONFLICT (user_id, category) DO UPDATE SET \(unescaped: update.sql), updated_at = now()
          """, logger: logger)
      }
    }
  }

  // MARK: - Notifications and their deliveries

  /// Inserts an inbox item; nil when this event already notified this user.
  func insertNotification(
    userID: UUID, kind: NotificationKind, title: String, body: String, orderID: UUID?, sourceEventID: UUID?,
    on connection: PostgresConnection
  ) async throws -> UUID? {
    let rows = try await connection.query(
      """
      INSERT INTO notifications (user_id, kind, title, body, order_id, source_event_id)
      VALUES (\(userID), \(kind.rawValue), \(title), \(body), \(orderID), \(sourceEventID))
      ON CONFLICT (source_event_id, user_id) DO NOTHING
      RETURNING id
      """, logger: logger)
    var id: UUID?
    for try await value in rows.decode(UUID.self) { id = value }
    return id
  }

  /// Queues one email or SMS and wakes the sender when the transaction commits. Nil when this
  /// event already queued this channel for this user (the unique key). With `claimedFor`, the
  /// delivery is born taken by the caller for that lease (its first attempt counted), and no sender
  /// is woken: the caller sends it itself (SendTestNotification, which answers with the outcome).
  func queueDelivery(
    notificationID: UUID, sourceEventID: UUID?, userID: UUID, kind: NotificationKind, channel: DeliveryChannel,
    recipient: String?, templateData: String, messageDomain: String, claimedFor lease: Duration? = nil,
    on connection: PostgresConnection
  ) async throws -> UUID? {
    let id = UUID()
    let messageID = "<\(id.lowercasedString)@\(messageDomain)>"
    let status = lease == nil ? DeliveryStatus.queued : .sending
    let rows = try await connection.query(
      """
      INSERT INTO deliveries (id, notification_id, source_event_id, user_id, kind, channel, recipient,
                              template_data, message_id, status, attempt_count, next_attempt_at)
      VALUES (\(id), \(notificationID), \(sourceEventID), \(userID), \(kind.rawValue), \(channel.rawValue),
              \(recipient), \(templateData)::jsonb, \(messageID), \(status.rawValue), \(lease == nil ? 0 : 1),
              now() + \(lease?.timeInterval ?? 0) * interval '1 second')
      ON CONFLICT (source_event_id, channel, user_id) DO NOTHING
      RETURNING id
      """, logger: logger)
    var queued: UUID?
    for try await value in rows.decode(UUID.self) { queued = value }
    if queued != nil, lease == nil {
      try await connection.query("SELECT pg_notify(\(Self.senderChannel), '')", logger: logger)
    }
    return queued
  }

  /// A user's inbox, newest first, after the cursor.
  func notifications(
    of userID: UUID, unreadOnly: Bool, after cursor: NotificationCursor?, limit: Int
  ) async throws -> [NotificationRecord] {
    let hasCursor = cursor != nil
    let rows = try await database.query(
      """
      SELECT \(unescaped: NotificationRecord.columns) FROM notifications
      WHERE user_id = \(userID) AND (NOT \(unreadOnly) OR read_at IS NULL)
        AND (NOT \(hasCursor) OR (created_at, id) <
             ('epoch'::timestamptz + \(cursor?.micros ?? 0) * interval '1 microsecond', \(cursor?.id ?? UUID())))
      ORDER BY created_at DESC, id DESC
      LIMIT \(limit)
      """, logger: logger)
    var result: [NotificationRecord] = []
    for try await row in rows.decode(NotificationRecord.Row.self) { result.append(NotificationRecord(row)) }
    return result
  }

  func notification(_ id: UUID) async throws -> NotificationRecord? {
    let rows = try await database.query(
      "SELECT \(unescaped: NotificationRecord.columns) FROM notifications WHERE id = \(id)", logger: logger)
    var result: NotificationRecord?
    for try await row in rows.decode(NotificationRecord.Row.self) { result = NotificationRecord(row) }
    return result
  }

  func unreadCount(of userID: UUID) async throws -> Int {
    let rows = try await database.query(
      "SELECT count(*)::int8 FROM notifications WHERE user_id = \(userID) AND read_at IS NULL", logger: logger)
    var count: Int64 = 0
    for try await value in rows.decode(Int64.self) { count = value }
    return Int(count)
  }

  /// Marks the user's notification read (keeping the first read time); nil when the user has no
  /// such notification, whoever else might.
  func markRead(_ id: UUID, of userID: UUID) async throws -> NotificationRecord? {
    let rows = try await database.query(
      """
      UPDATE notifications SET read_at = coalesce(read_at, now())
      WHERE id = \(id) AND user_id = \(userID)
      RETURNING \(unescaped: NotificationRecord.columns)
      """, logger: logger)
    var result: NotificationRecord?
    for try await row in rows.decode(NotificationRecord.Row.self) { result = NotificationRecord(row) }
    return result
  }

  // MARK: - The delivery log

  struct DeliveryFilter: Sendable {
    var userID: UUID?
    var notificationID: UUID?
    var channel: DeliveryChannel?
    var status: DeliveryStatus?
  }

  /// Deliveries, newest first, after the cursor.
  func deliveries(matching filter: DeliveryFilter, after cursor: NotificationCursor?, limit: Int) async throws
    -> [DeliveryRecord]
  {
    let hasCursor = cursor != nil
    let rows = try await database.query(
      """
      SELECT \(unescaped: DeliveryRecord.columns) FROM deliveries
      WHERE (\(filter.userID)::uuid IS NULL OR user_id = \(filter.userID))
        AND (\(filter.notificationID)::uuid IS NULL OR notification_id = \(filter.notificationID))
        AND (\(filter.channel?.rawValue)::text IS NULL OR channel = \(filter.channel?.rawValue))
        AND (\(filter.status?.rawValue)::text IS NULL OR status = \(filter.status?.rawValue))
        AND (NOT \(hasCursor) OR (created_at, id) <
             ('epoch'::timestamptz + \(cursor?.micros ?? 0) * interval '1 microsecond', \(cursor?.id ?? UUID())))
      ORDER BY created_at DESC, id DESC
      LIMIT \(limit)
      """, logger: logger)
    var result: [DeliveryRecord] = []
    for try await row in rows.decode(DeliveryRecord.Row.self) { result.append(DeliveryRecord(row)) }
    return result
  }

  func delivery(_ id: UUID) async throws -> DeliveryRecord? {
    let rows = try await database.query(
      "SELECT \(unescaped: DeliveryRecord.columns) FROM deliveries WHERE id = \(id)", logger: logger)
    var result: DeliveryRecord?
    for try await row in rows.decode(DeliveryRecord.Row.self) { result = DeliveryRecord(row) }
    return result
  }

  /// Takes up to `limit` due deliveries for one attempt each: queued and retrying ones whose time
  /// has come, and sending ones whose sender's lease ran out (it died mid-send). Each is marked
  /// sending for `lease`, so no other sender takes it meanwhile. One cut off `maximumAttempts`
  /// times is failed instead: a message that kills its sender is not sent for ever.
  func claimDue(limit: Int, lease: Duration, maximumAttempts: Int) async throws -> [ClaimedDelivery] {
    try await database.query(
      """
      UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = now(),
        last_error = 'given up: every attempt was cut off before its outcome was recorded'
      WHERE status = 'sending' AND next_attempt_at <= now() AND attempt_count >= \(maximumAttempts)
      """, logger: logger)
    let rows = try await database.query(
      """
      WITH due AS (
        SELECT id, status = 'sending' AS resumed FROM deliveries
        WHERE status IN ('queued', 'sending', 'retrying') AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT \(limit)
        FOR UPDATE SKIP LOCKED
      ), taken AS (
        UPDATE deliveries d SET status = 'sending', attempt_count = d.attempt_count + 1, updated_at = now(),
          next_attempt_at = now() + \(lease.timeInterval) * interval '1 second'
        FROM due WHERE d.id = due.id
        RETURNING d.*, due.resumed
      )
      SELECT \(unescaped: DeliveryRecord.columns), resumed, \(unescaped: Self.contactColumns)
      FROM taken LEFT JOIN users u USING (user_id)
      ORDER BY next_attempt_at
      """, logger: logger)
    return try await Self.claimed(rows)
  }

  /// A delivery this caller holds (`queueDelivery(claimedFor:)`), with its user's details.
  func claimed(_ id: UUID) async throws -> ClaimedDelivery? {
    let rows = try await database.query(
      """
      SELECT \(unescaped: DeliveryRecord.columns), false, \(unescaped: Self.contactColumns)
      FROM deliveries LEFT JOIN users u USING (user_id)
      WHERE id = \(id) AND status = 'sending'
      """, logger: logger)
    return try await Self.claimed(rows).first
  }

  /// The user's columns beside a delivery's (`users u`), for `claimed(_:)`.
  private static let contactColumns = UserContact.columns.split(separator: ",")
    .map { "u.\($0.trimmingCharacters(in: .whitespaces))" }.joined(separator: ", ")

  /// Claimed deliveries from rows of a delivery's columns, whether it was resumed, and its user's.
  private static func claimed(_ rows: PostgresRowSequence) async throws -> [ClaimedDelivery] {
    var result: [ClaimedDelivery] = []
    for try await row in rows.decode(
      (
        UUID, UUID?, UUID?, UUID, String, String, String?, String, String, String, Int32, String?, String?, Date,
        Date?, Date?, Int64, String?, Bool, UUID?, String?, String?, String?, String?, Bool?
      ).self)
    {
      let (
        a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, resumed, contactID, email, phone, name, locale, admin
      ) =
        row
      let delivery = DeliveryRecord((a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r))
      let contact = contactID.map {
        UserContact(
          userID: $0, email: email, phone: phone, fullName: name, locale: locale ?? "en", isAdmin: admin ?? false)
      }
      result.append(ClaimedDelivery(delivery: delivery, contact: contact, resumed: resumed))
    }
    return result
  }

  // Each outcome is recorded only while the caller still holds the delivery: it is sending, and
  // with the attempt this caller made (the attempt count is the lease's fencing token). A sender
  // whose lease ran out and whose delivery another sender took cannot overwrite that one's work.

  /// Records that the provider took the message: its id, and NotificationSent, in one transaction.
  /// False when the caller no longer held the delivery.
  @discardableResult
  func recordSent(_ delivery: DeliveryRecord, recipient: String, providerMessageID: String) async throws -> Bool {
    let outbox = self.outbox
    let logger = self.logger
    return try await database.transaction(logger: logger) { connection in
      let rows = try await connection.query(
        """
        UPDATE deliveries SET status = 'sent', recipient = \(recipient), provider_message_id = \(providerMessageID),
          sent_at = now(), updated_at = now(), next_attempt_at = NULL, last_error = NULL
        WHERE id = \(delivery.id) AND status = 'sending' AND attempt_count = \(Int32(delivery.attemptCount))
        RETURNING sent_at
        """, logger: logger)
      var sentAt: Date?
      for try await value in rows.decode(Date.self) { sentAt = value }
      guard let sentAt else { return false }
      let event = Mart_Notification_V1_NotificationSent.with {
        $0.notificationID = delivery.notificationID?.lowercasedString ?? ""
        $0.deliveryID = delivery.id.lowercasedString
        $0.userID = delivery.userID.lowercasedString
        $0.kind = delivery.kind.proto
        $0.channel = delivery.channel.proto
        $0.providerMessageID = providerMessageID
        $0.sendTime = Google_Protobuf_Timestamp(date: sentAt)
      }
      // Keyed by the recipient, as the contract says: one user's notices stay in order.
      try await outbox.append(
        event, aggregateType: "notification", aggregateID: delivery.userID.lowercasedString, on: connection,
        logger: logger)
      return true
    }
  }

  /// Records a failed attempt: tried again at `retryAt`, or failed for good when that is nil.
  /// False when the caller no longer held the delivery.
  func recordFailure(_ delivery: DeliveryRecord, recipient: String?, error: String, retryAt: Date?) async throws
    -> Bool
  {
    let status = retryAt == nil ? DeliveryStatus.failed : .retrying
    return try await updatedHeld(
      delivery,
      """
      UPDATE deliveries SET status = \(status.rawValue), last_error = \(String(error.prefix(1000))),
        recipient = coalesce(\(recipient), recipient), next_attempt_at = \(retryAt), updated_at = now()
      WHERE id = \(delivery.id) AND status = 'sending' AND attempt_count = \(Int32(delivery.attemptCount))
      RETURNING 1
      """)
  }

  /// Puts a delivery back in the queue until `retryAt` without counting the attempt: it was not
  /// tried, only put off (its user's details are not known yet).
  func postpone(_ delivery: DeliveryRecord, reason: String, until retryAt: Date) async throws {
    try await updatedHeld(
      delivery,
      """
      UPDATE deliveries SET status = 'queued', attempt_count = attempt_count - 1, last_error = \(reason),
        next_attempt_at = \(retryAt), updated_at = now()
      WHERE id = \(delivery.id) AND status = 'sending' AND attempt_count = \(Int32(delivery.attemptCount))
      RETURNING 1
      """)
  }

  /// Records that there is nowhere to send it (no address, the channel is not configured).
  func recordSkipped(_ delivery: DeliveryRecord, reason: String) async throws {
    try await updatedHeld(
      delivery,
      """
      UPDATE deliveries SET status = 'skipped', last_error = \(reason), next_attempt_at = NULL, updated_at = now()
      WHERE id = \(delivery.id) AND status = 'sending' AND attempt_count = \(Int32(delivery.attemptCount))
      RETURNING 1
      """)
  }

  /// Records what the provider says of a text it took (Twilio's status callback), found by its
  /// message SID. False when no delivery has that SID.
  func recordProviderStatus(sid: String, status: String) async throws -> Bool {
    let rows = try await database.query(
      """
      UPDATE deliveries SET provider_status = \(status), provider_status_at = now(), updated_at = now()
      WHERE channel = 'sms' AND provider_message_id = \(sid)
      RETURNING 1
      """, logger: logger)
    var matched = false
    for try await _ in rows.decode(Int.self) { matched = true }
    return matched
  }

  /// Runs a fenced update; whether it matched (the caller still held the delivery).
  @discardableResult
  private func updatedHeld(_ delivery: DeliveryRecord, _ query: PostgresQuery) async throws -> Bool {
    let rows = try await database.query(query, logger: logger)
    var matched = false
    for try await _ in rows.decode(Int.self) { matched = true }
    if !matched {
      logger.warning(
        "a delivery's outcome came after another sender took it over (the lease ran out); the other's stands",
        metadata: ["delivery_id": "\(delivery.id.lowercasedString)"])
    }
    return matched
  }
}
