import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import SwiftProtobuf

/// The gRPC handlers of mart.notification.v1.NotificationService. Who may call what is enforced
/// by the server's auth interceptor from the proto's access options; the inbox and preferences
/// are always the caller's own (another user's notification reads as NOT_FOUND).
struct NotificationRPCService: Mart_Notification_V1_NotificationService.SimpleServiceProtocol {
  let store: NotificationStore
  let notifier: Notifier
  let sender: NotificationSender
  let twilio: TwilioSettings?
  let logger: Logger

  static let inboxPageSize = (default: 20, maximum: 100)
  static let deliveriesPageSize = (default: 50, maximum: 200)
  static let maximumTestMessageLength = 500

  // MARK: The inbox

  func listMyNotifications(
    request: Mart_Notification_V1_ListMyNotificationsRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_ListMyNotificationsResponse {
    let userID = try Caller.requiredUserID()
    var validation = RequestValidation()
    let limit = validation.pageSize(
      request.pageSize, default: Self.inboxPageSize.default, maximum: Self.inboxPageSize.maximum)
    try validation.check()
    let fingerprint = PageTokenCodec.fingerprint(["notifications", request.unreadOnly ? "unread" : "all"])
    let after = try PageTokenCodec.decode(request.pageToken, as: NotificationCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.notifications(of: userID, unreadOnly: request.unreadOnly, after: after, limit: limit + 1),
      limit: limit, fingerprint: fingerprint
    ) { NotificationCursor(micros: $0.createdMicros, id: $0.id) }
    let unread = try await store.unreadCount(of: userID)
    return .with {
      $0.notifications = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
      $0.unreadCount = Int32(clamping: unread)
    }
  }

  func markNotificationRead(
    request: Mart_Notification_V1_MarkNotificationReadRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_Notification {
    let userID = try Caller.requiredUserID()
    let id = try RequestValidation.requiredUUID(request.notificationID, field: "notification_id")
    guard let notification = try await store.markRead(id, of: userID) else {
      throw APIStatus.notFound("notification \(id.lowercasedString) not found")
    }
    return notification.proto
  }

  // MARK: Preferences

  func getMyPreferences(
    request: Mart_Notification_V1_GetMyPreferencesRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_NotificationPreferences {
    let userID = try Caller.requiredUserID()
    return try await preferences(of: userID)
  }

  func updateMyPreferences(
    request: Mart_Notification_V1_UpdateMyPreferencesRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_NotificationPreferences {
    let userID = try Caller.requiredUserID()
    let paths = request.updateMask.paths
    guard request.hasUpdateMask, !paths.isEmpty else {
      throw APIStatus.invalid(
        "update_mask", "is required: list the categories or channels to change, e.g. orders.sms or marketing")
    }
    var changes: [NotificationStore.PreferenceChange] = []
    var validation = RequestValidation()
    for path in paths {
      let parts = path.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
      guard (1...2).contains(parts.count), let category = PreferenceCategory(rawValue: parts[0]),
        parts.count == 1 || DeliveryChannel(rawValue: parts[1]) != nil
      else {
        validation.add(
          "update_mask",
          "cannot update \(path): paths are orders, account or marketing, each optionally with .email or .sms")
        continue
      }
      let given = Self.settings(request.preferences, category)
      for channel in parts.count == 2 ? [DeliveryChannel(rawValue: parts[1]) ?? .email] : DeliveryChannel.allCases {
        let field = "preferences.\(category.rawValue).\(channel.rawValue)"
        let value = channel == .email ? (given.hasEmail ? given.email : nil) : (given.hasSms ? given.sms : nil)
        // A path names a value to set: leaving it out would silently reset it.
        guard let value else {
          validation.add(field, "is required: update_mask names it")
          continue
        }
        changes.append(.init(category: category, channel: channel, enabled: value))
      }
    }
    try validation.check()
    try await store.setPreferences(of: userID, changes)
    return try await preferences(of: userID)
  }

  private func preferences(of userID: UUID) async throws -> Mart_Notification_V1_NotificationPreferences {
    let stored = try await store.preferences(of: userID)
    func settings(_ category: PreferenceCategory) -> Mart_Notification_V1_ChannelSettings {
      let switches = stored.switches[category] ?? category.defaults
      return .with {
        $0.email = switches.email
        $0.sms = switches.sms
      }
    }
    return .with {
      $0.userID = userID.lowercasedString
      $0.orders = settings(.orders)
      $0.account = settings(.account)
      $0.marketing = settings(.marketing)
      if let updatedAt = stored.updatedAt { $0.updateTime = Google_Protobuf_Timestamp(date: updatedAt) }
    }
  }

  private static func settings(
    _ preferences: Mart_Notification_V1_NotificationPreferences, _ category: PreferenceCategory
  ) -> Mart_Notification_V1_ChannelSettings {
    switch category {
    case .orders: preferences.orders
    case .account: preferences.account
    case .marketing: preferences.marketing
    }
  }

  // MARK: Administration

  func listDeliveries(
    request: Mart_Notification_V1_ListDeliveriesRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_ListDeliveriesResponse {
    var validation = RequestValidation()
    let limit = validation.pageSize(
      request.pageSize, default: Self.deliveriesPageSize.default, maximum: Self.deliveriesPageSize.maximum)
    var filter = NotificationStore.DeliveryFilter(
      userID: validation.optionalUUID(request.userID, field: "user_id"),
      notificationID: validation.optionalUUID(request.notificationID, field: "notification_id"))
    if request.channel != .unspecified {
      filter.channel = DeliveryChannel(request.channel)
      if filter.channel == nil { validation.add("channel", "must be EMAIL or SMS: in-app items are not deliveries") }
    }
    if request.status != .unspecified {
      filter.status = DeliveryStatus(request.status)
      if filter.status == nil { validation.add("status", "is not a known delivery status") }
    }
    try validation.check()
    let fingerprint = PageTokenCodec.fingerprint([
      "deliveries", filter.userID?.lowercasedString ?? "", filter.notificationID?.lowercasedString ?? "",
      filter.channel?.rawValue ?? "", filter.status?.rawValue ?? "",
    ])
    let after = try PageTokenCodec.decode(request.pageToken, as: NotificationCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.deliveries(matching: filter, after: after, limit: limit + 1), limit: limit,
      fingerprint: fingerprint
    ) { NotificationCursor(micros: $0.createdMicros, id: $0.id) }
    return .with {
      $0.deliveries = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  /// Records a TEST message like any other and sends it before answering, so the admin sees at
  /// once whether the channel works (a failure that may pass stays RETRYING for the sender).
  func sendTestNotification(
    request: Mart_Notification_V1_SendTestNotificationRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_SendTestNotificationResponse {
    let adminID = try Caller.requiredUserID()
    var validation = RequestValidation()
    let channel = DeliveryChannel(request.channel)
    if channel == nil {
      validation.add("channel", request.channel == .unspecified ? "is required: EMAIL or SMS" : "must be EMAIL or SMS")
    }
    let userID = validation.optionalUUID(request.userID, field: "user_id") ?? adminID
    let destination = request.destination.trimmingCharacters(in: .whitespaces)
    if !destination.isEmpty, let channel {
      switch channel {
      case .email:
        if NotificationSettings.parseAddress(destination) == nil || destination.contains("<") {
          validation.add("destination", "must be an email address")
        }
      case .sms:
        if !PhoneNumber.isE164(destination) {
          validation.add("destination", "must be a phone number in E.164 form, e.g. +27821234567")
        }
      }
    }
    let message = validation.text(
      request.message, field: "message", maximum: Self.maximumTestMessageLength, allowingNewlines: true)
    try validation.check()
    guard let channel else { throw APIStatus.invalid("channel", "must be EMAIL or SMS") }

    let outcome = try await store.database.transaction(logger: logger) { connection in
      if destination.isEmpty {
        guard let contact = try await store.user(userID, on: connection) else {
          throw APIStatus.notFound("user \(userID.lowercasedString) is not known to the notification service")
        }
        guard contact.address(for: channel) != nil else {
          throw APIStatus.invalid(
            "destination",
            "is required: the user has no \(channel == .email ? "email address" : "phone number") on their account")
        }
      }
      return try await notifier.notify(
        userID, of: .test, values: ["message": .text(message), "channel": .text(channel.rawValue)],
        sourceEventID: nil, channels: [channel], destination: destination.isEmpty ? nil : destination,
        claimedFor: notifier.settings.sendLease, on: connection)
    }
    guard let outcome, let deliveryID = outcome.deliveries.first else {
      throw RPCError(code: .internalError, message: "the test notification was not queued")
    }
    // The delivery was born held by this call, so no background sender takes it; it is sent in a
    // task of its own, so that a client that hangs up cannot cut the send off between the
    // provider's answer and its record.
    let send = Task { [sender, store] in
      if let claimed = try await store.claimed(deliveryID) { await sender.send([claimed]) }
    }
    try await send.value
    guard let delivery = try await store.delivery(deliveryID),
      let notification = try await store.notification(outcome.notificationID)
    else {
      throw RPCError(code: .internalError, message: "the test notification is gone")
    }
    logger.notice(
      "test notification sent",
      metadata: [
        "delivery_id": "\(deliveryID.lowercasedString)", "channel": "\(channel.rawValue)",
        "status": "\(delivery.status.rawValue)", "by": "\(adminID.lowercasedString)",
      ])
    return .with {
      $0.notification = notification.proto
      $0.delivery = delivery.proto
    }
  }
}
