import Foundation
import Logging
import MartProto
import MartRuntime
import PostgresNIO
import SwiftProtobuf

/// The events the notification service consumes. Each is applied inside the runtime's inbox
/// transaction, and every notification is keyed by its event, so a redelivered event notifies no
/// one twice.
enum NotificationEventHandlers {
  /// The user projection (contacts, language, admins) and the account's own notices.
  static func users(store: NotificationStore, notifier: Notifier, logger: Logger) -> EventConsumerDefinition {
    var handlers = EventHandlers()
    handlers.on(Mart_User_V1_UserRegistered.self) { received, connection in
      let event = received.event
      let userID = try uuid(event.userID, "user_id", received)
      try await store.applyUser(
        contact(
          userID, email: event.email, phone: event.phone, name: event.fullName, locale: event.locale,
          roles: event.roles),
        version: max(event.version, 1), on: connection)
      // The welcome email is sent on the account's first EmailVerificationRequested, which
      // follows this event: it carries the link that verifies the address.
    }
    handlers.on(Mart_User_V1_UserUpdated.self) { received, connection in
      let event = received.event
      let userID = try uuid(event.userID, "user_id", received)
      guard event.version >= 1 else { throw InvalidEvent("UserUpdated \(received.envelope.id) has no version") }
      try await store.applyUser(
        contact(
          userID, email: event.email, phone: event.phone, name: event.fullName, locale: event.locale,
          roles: event.roles),
        version: event.version, on: connection)
      // A change of roles is a security notice, whatever the order the events arrive in.
      let before = Set(event.previousRoles)
      let after = Set(event.roles)
      guard !event.previousRoles.isEmpty, before != after else { return }
      let roles = event.roles.compactMap(roleName).joined(separator: ", ")
      try await notifier.notify(
        userID, of: .rolesChanged,
        values: [
          "roles": .text(roles), "admin_granted": .flag(after.contains(.admin) && !before.contains(.admin)),
          "admin_revoked": .flag(before.contains(.admin) && !after.contains(.admin)),
        ], sourceEventID: received.envelope.id, eventTime: received.envelope.time, on: connection)
    }
    // The link that verifies an email, in the welcome email at registration and in an email of its
    // own when asked for again; to the address it verifies (which the projection may not hold
    // yet, or any more); never shown in the app (`emailOnlyValues`).
    handlers.on(Mart_User_V1_EmailVerificationRequested.self) { received, connection in
      let event = received.event
      try await notifyEmailedLink(
        notifier, received, userID: event.userID, email: event.email, token: event.token,
        expires: event.expireTime.date, kind: event.atRegistration ? .welcome : .verifyEmail,
        page: notifier.settings.verifyEmailURL, linkValue: "verify_link", on: connection)
    }
    handlers.on(Mart_User_V1_RegistrationAttempted.self) { received, connection in
      let event = received.event
      let userID = try uuid(event.userID, "user_id", received)
      try await notifier.notify(
        userID, of: .registrationAttempted,
        values: [
          "email": .text(event.email), "time": .text(format(event.attemptTime.date)),
          "email_verified": .flag(event.emailVerified),
        ],
        sourceEventID: received.envelope.id, eventTime: received.envelope.time, on: connection)
    }
    // To the account's email as the user service knows it (the projection may lag behind a change).
    handlers.on(Mart_User_V1_PasswordResetRequested.self) { received, connection in
      let event = received.event
      try await notifyEmailedLink(
        notifier, received, userID: event.userID, email: event.email, token: event.token,
        expires: event.expireTime.date, kind: .passwordReset, page: notifier.settings.resetPasswordURL,
        linkValue: "reset_link", on: connection)
    }
    handlers.on(Mart_User_V1_PasswordChanged.self) { received, connection in
      let event = received.event
      let userID = try uuid(event.userID, "user_id", received)
      try await notifier.notify(
        userID, of: .passwordChanged,
        values: [
          "email": .text(event.email), "time": .text(format(event.changeTime.date)),
          "by_reset": .flag(event.method == .reset), "by_operator": .flag(event.method == .operator),
        ],
        sourceEventID: received.envelope.id, eventTime: received.envelope.time,
        destination: event.email.isEmpty ? nil : event.email, on: connection)
    }
    return EventConsumerDefinition(name: "users", topics: [.users], handlers: handlers)
  }

  /// What happens to customers' orders and money, and admins' low-stock alerts.
  static func activity(store: NotificationStore, notifier: Notifier, logger: Logger) -> EventConsumerDefinition {
    var handlers = EventHandlers()
    handlers.on(Mart_Order_V1_OrderPlaced.self) { received, connection in
      let event = received.event
      let lines: [[String: TemplateValue]] = event.lines.map { line in
        [
          "name": .text(line.name), "quantity": .text("\(line.quantity)"),
          "unit_price": .text(line.unitPrice.displayText), "line_total": .text(line.lineTotal.displayText),
        ]
      }
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .orderPlaced,
        values: [
          "order_number": .text(event.orderNumber), "lines": .list(lines),
          "subtotal": .text(event.subtotal.displayText),
          "shipping_fee": .text(event.shippingFee.displayText), "total": .text(event.total.displayText),
          "payment_deadline": .text(event.hasPaymentDeadline ? format(event.paymentDeadline.date) : ""),
        ], received, connection)
    }
    handlers.on(Mart_Order_V1_OrderPaid.self) { received, connection in
      let event = received.event
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .orderPaid,
        values: ["order_number": .text(event.orderNumber), "amount": .text(event.amount.displayText)], received,
        connection)
    }
    handlers.on(Mart_Order_V1_OrderCancelled.self) { received, connection in
      let event = received.event
      let reasons: [(String, Mart_Order_V1_Order.CancelReason)] = [
        ("customer_request", .customerRequest), ("admin_request", .adminRequest), ("out_of_stock", .outOfStock),
        ("payment_timeout", .paymentTimeout), ("payment_failed", .paymentFailed),
      ]
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .orderCancelled,
        values: [
          "order_number": .text(event.orderNumber),
          "reason": .object(Dictionary(uniqueKeysWithValues: reasons.map { ($0.0, .flag(event.reason == $0.1)) })),
          "note": .text(event.note), "was_paid": .flag(event.wasPaid),
        ], received, connection)
    }
    handlers.on(Mart_Order_V1_OrderShipped.self) { received, connection in
      let event = received.event
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .orderShipped,
        values: [
          "order_number": .text(event.orderNumber), "carrier": .text(event.shipment.carrier),
          "tracking_number": .text(event.shipment.trackingNumber),
        ], received, connection)
    }
    handlers.on(Mart_Order_V1_OrderDelivered.self) { received, connection in
      let event = received.event
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .orderDelivered,
        values: ["order_number": .text(event.orderNumber)],
        received, connection)
    }
    handlers.on(Mart_Payment_V1_PaymentFailed.self) { received, connection in
      let event = received.event
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .paymentFailed,
        values: [
          "order_number": .text(""), "order_id": .text(event.orderID), "failure_message": .text(event.failureMessage),
        ], received, connection)
    }
    handlers.on(Mart_Payment_V1_PaymentRefunded.self) { received, connection in
      let event = received.event
      try await notifyCustomer(
        notifier, event.userID, orderID: event.orderID, .paymentRefunded,
        values: [
          "order_number": .text(""), "order_id": .text(event.orderID), "amount": .text(event.amount.displayText),
          "refunded_total": .text(event.refundedTotal.displayText), "fully_refunded": .flag(event.fullyRefunded),
          "reason": .text(event.reason),
        ], received, connection)
    }
    // One alert per admin, each keyed by the event and the admin.
    handlers.on(Mart_Inventory_V1_LowStock.self) { received, connection in
      let event = received.event
      let values: TemplateValues = [
        "product_id": .text(event.productID), "available": .text("\(event.available)"),
        "threshold": .text("\(event.lowStockThreshold)"),
      ]
      for admin in try await store.admins(on: connection) {
        try await notifier.notify(
          admin.userID, of: .lowStock, values: values, sourceEventID: received.envelope.id,
          eventTime: received.envelope.time, on: connection)
      }
    }
    return EventConsumerDefinition(name: "activity", topics: [.orders, .payments, .inventory], handlers: handlers)

  }

  /// Notifies the customer an order or payment event names.
  static func notifyCustomer<Event>(
    _ notifier: Notifier, _ rawUserID: String, orderID rawOrderID: String, _ kind: NotificationKind,
    values: TemplateValues, _ received: ReceivedEvent<Event>, _ connection: PostgresConnection
  ) async throws {
    let userID = try uuid(rawUserID, "user_id", received)
    try await notifier.notify(
      userID, of: kind, values: values, orderID: UUID(uuidString: rawOrderID), sourceEventID: received.envelope.id,
      eventTime: received.envelope.time,
      on: connection)
  }

  /// An id the event must carry; an event without it can never be applied, so it is dead-lettered.
  static func uuid<Event>(_ raw: String, _ field: String, _ received: ReceivedEvent<Event>) throws -> UUID {
    guard let id = UUID(uuidString: raw) else {
      throw InvalidEvent("\(Event.protoMessageName) \(received.envelope.id.lowercasedString) lacks a valid \(field)")
    }
    return id
  }

  static func contact(
    _ userID: UUID, email: String, phone: String, name: String, locale: String, roles: [Mart_User_V1_User.Role]
  ) -> UserContact {
    UserContact(
      userID: userID, email: email.isEmpty ? nil : email, phone: PhoneNumber.isE164(phone) ? phone : nil,
      fullName: name.isEmpty ? nil : name, locale: locale.isEmpty ? NotificationTemplates.fallbackLocale : locale,
      isAdmin: roles.contains(.admin))
  }

  static func roleName(_ role: Mart_User_V1_User.Role) -> String? {
    switch role {
    case .customer: "customer"
    case .admin: "admin"
    case .unspecified, .UNRECOGNIZED: nil
    }
  }

  /// A time in messages: UTC, unambiguous in every language ("2026-12-06 14:30 UTC").
  /// An email carrying a single-use token (a verification or password-reset link) to the address
  /// the event names, which the projection may not hold yet, or any more. The token and the link
  /// are email-only values (`NotificationKind.emailOnlyValues`): never shown in the app.
  static func notifyEmailedLink<Event>(
    _ notifier: Notifier, _ received: ReceivedEvent<Event>, userID rawUserID: String, email: String, token: String,
    expires: Date, kind: NotificationKind, page: String?, linkValue: String, on connection: PostgresConnection
  ) async throws {
    let userID = try uuid(rawUserID, "user_id", received)
    guard !token.isEmpty, !email.isEmpty else {
      throw InvalidEvent("\(Event.self) \(received.envelope.id) has no token or email")
    }
    var values: TemplateValues = ["email": .text(email), "token": .text(token), "expires": .text(format(expires))]
    if let link = link(page, token: token) { values[linkValue] = .text(link) }
    try await notifier.notify(
      userID, of: kind, values: values, sourceEventID: received.envelope.id, eventTime: received.envelope.time,
      destination: email, on: connection)
  }

  /// A shop page's URL with `token` added to its query; nil without a page (the email then gives
  /// the token as a code).
  static func link(_ page: String?, token: String) -> String? {
    guard let page, var link = URLComponents(string: page) else { return nil }
    link.queryItems = (link.queryItems ?? []) + [URLQueryItem(name: "token", value: token)]
    return link.string ?? page
  }

  static func format(_ date: Date) -> String {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
    let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute], from: date)
    func two(_ value: Int?) -> String { String(format: "%02d", value ?? 0) }
    return "\(parts.year ?? 0)-\(two(parts.month))-\(two(parts.day)) \(two(parts.hour)):\(two(parts.minute)) UTC"
  }
}
