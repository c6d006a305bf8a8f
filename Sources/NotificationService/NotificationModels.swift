import Foundation
import MartProto
import MartRuntime

/// What a notification is about: one per `Notification.Kind`, as the database stores it.
enum NotificationKind: String, Sendable, CaseIterable, Codable {
  case welcome, orderPlaced = "order_placed", orderPaid = "order_paid", orderCancelled = "order_cancelled"
  case orderShipped = "order_shipped", orderDelivered = "order_delivered", paymentFailed = "payment_failed"
  case paymentRefunded = "payment_refunded", lowStock = "low_stock", test, rolesChanged = "roles_changed"
  case verifyEmail = "verify_email", registrationAttempted = "registration_attempted"
  case passwordReset = "password_reset", passwordChanged = "password_changed"

  /// The preference category that can turn its email and SMS off; nil: always sent (security
  /// notices, admins' alerts, tests an admin asked for).
  var category: PreferenceCategory? {
    switch self {
    case .orderPlaced, .orderPaid, .orderCancelled, .orderShipped, .orderDelivered, .paymentFailed, .paymentRefunded:
      .orders
    case .welcome: .account
    case .lowStock, .test, .rolesChanged, .verifyEmail, .registrationAttempted, .passwordReset, .passwordChanged: nil
    }
  }

  /// The outbound channels it can go out by (in-app is always kept besides). SMS only where a
  /// customer may want a text: the steps of an order they wait for.
  var channels: [DeliveryChannel] {
    switch self {
    case .orderPlaced, .orderPaid, .orderCancelled, .orderShipped, .orderDelivered, .paymentRefunded: [.email, .sms]
    case .welcome, .paymentFailed, .lowStock, .rolesChanged, .verifyEmail, .registrationAttempted, .passwordReset,
      .passwordChanged:
      [.email]
    case .test: [.email, .sms]
    }
  }

  var proto: Mart_Notification_V1_Notification.Kind {
    switch self {
    case .welcome: .welcome
    case .orderPlaced: .orderPlaced
    case .orderPaid: .orderPaid
    case .orderCancelled: .orderCancelled
    case .orderShipped: .orderShipped
    case .orderDelivered: .orderDelivered
    case .paymentFailed: .paymentFailed
    case .paymentRefunded: .paymentRefunded
    case .lowStock: .lowStock
    case .test: .test
    case .rolesChanged: .rolesChanged
    case .verifyEmail: .verifyEmail
    case .registrationAttempted: .registrationAttempted
    case .passwordReset: .passwordReset
    case .passwordChanged: .passwordChanged
    }
  }

  /// Template values only the email may show: the in-app item is rendered without them, so that
  /// being signed in is not enough to read a link that proves access to the mailbox.
  var emailOnlyValues: Set<String> {
    switch self {
    case .welcome, .verifyEmail: ["token", "verify_link"]
    case .passwordReset: ["token", "reset_link"]
    default: []
    }
  }
}

/// The groups of kinds a user turns channels off for (`NotificationPreferences`).
enum PreferenceCategory: String, Sendable, CaseIterable {
  case orders, account, marketing

  /// Email on and SMS off, but marketing, which is opt-in on both.
  var defaults: ChannelSwitches {
    self == .marketing ? ChannelSwitches(email: false, sms: false) : ChannelSwitches(email: true, sms: false)
  }
}

/// Whether a category goes out by email and by SMS.
struct ChannelSwitches: Sendable, Equatable {
  var email: Bool
  var sms: Bool

  func allows(_ channel: DeliveryChannel) -> Bool { channel == .email ? email : sms }
}

/// An outbound channel (in-app notifications are the inbox itself).
enum DeliveryChannel: String, Sendable, CaseIterable {
  case email, sms

  init?(_ proto: Mart_Notification_V1_Channel) {
    switch proto {
    case .email: self = .email
    case .sms: self = .sms
    case .inApp, .unspecified, .UNRECOGNIZED: return nil
    }
  }

  var proto: Mart_Notification_V1_Channel { self == .email ? .email : .sms }
}

/// Where a delivery stands: queued → sending → sent | failed | retrying (→ sending again), or
/// skipped when there is nowhere to send it.
enum DeliveryStatus: String, Sendable, CaseIterable {
  case queued, sending, sent, failed, retrying, skipped

  init?(_ proto: Mart_Notification_V1_Delivery.Status) {
    switch proto {
    case .pending: self = .queued
    case .sending: self = .sending
    case .sent: self = .sent
    case .failed: self = .failed
    case .retrying: self = .retrying
    case .skipped: self = .skipped
    case .unspecified, .UNRECOGNIZED: return nil
    }
  }

  var proto: Mart_Notification_V1_Delivery.Status {
    switch self {
    case .queued: .pending
    case .sending: .sending
    case .sent: .sent
    case .failed: .failed
    case .retrying: .retrying
    case .skipped: .skipped
    }
  }
}

// MARK: - Transports

/// Why a message was not handed over, and whether trying again later may help (a provider's 4xx
/// SMTP reply, a timeout, Twilio's 429) or not (a 5xx reply, an invalid number).
struct DeliveryFailure: Error, Sendable, CustomStringConvertible {
  var retryable: Bool
  var message: String

  static func retryable(_ message: String) -> DeliveryFailure { DeliveryFailure(retryable: true, message: message) }
  static func permanent(_ message: String) -> DeliveryFailure { DeliveryFailure(retryable: false, message: message) }

  var description: String { message }
}

/// An email as the sender hands it to a transport. `messageID` is derived from the delivery, so a
/// retry of the same delivery carries the same Message-ID (a duplicate is detectable).
struct OutgoingEmail: Sendable {
  var deliveryID: UUID
  var to: String
  var toName: String?
  var subject: String
  var text: String
  var html: String
  var messageID: String
}

/// A text message as the sender hands it to a transport: `to` is E.164.
struct OutgoingSMS: Sendable {
  var deliveryID: UUID
  var to: String
  var body: String
}

/// Told each email's outcome (its index in the batch, the provider's id or why it failed) as soon
/// as it is known.
typealias EmailResultHandler = (Int, Result<String, DeliveryFailure>) async -> Void

/// Sends emails. One call may carry several, over one connection; `onResult` hears of each email
/// once, as soon as the provider has answered it (so the sender records it at once, not after the
/// batch).
protocol EmailTransport: Sendable {
  /// For logs and the start-up line ("smtp sandbox.smtp.mailtrap.io:2525", "mailbox .mart/mail").
  var summary: String { get }
  func send(_ emails: [OutgoingEmail], onResult: EmailResultHandler) async
}

/// Sends text messages. Returns the provider's id (Twilio's SID) or throws a `DeliveryFailure`.
protocol SMSTransport: Sendable {
  var summary: String { get }
  func send(_ sms: OutgoingSMS) async throws -> String
}
