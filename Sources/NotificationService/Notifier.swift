import Foundation
import Logging
import MartRuntime
import PostgresNIO

/// A value a template reads: text, a flag for a `{{#section}}`, a list to repeat, or an object.
/// Stored with each delivery as JSON, so the sender renders the message when it sends it, in the
/// recipient's language as it is then.
enum TemplateValue: Sendable, Equatable, Codable {
  case text(String)
  case flag(Bool)
  case list([[String: TemplateValue]])
  case object([String: TemplateValue])

  /// What swift-mustache reads: plain Swift strings, booleans, arrays and dictionaries. Empty
  /// text is left out (nil), because Mustache renders a `{{#value}}` section for "" too, and the
  /// templates guard their optional parts with such sections.
  var renderable: Any? {
    switch self {
    case .text(let text): text.isEmpty ? nil : text
    case .flag(let flag): flag
    case .list(let items): items.map { $0.compactMapValues(\.renderable) }
    case .object(let fields): fields.compactMapValues(\.renderable)
    }
  }

  init(from decoder: any Decoder) throws {
    let container = try decoder.singleValueContainer()
    if let flag = try? container.decode(Bool.self) {
      self = .flag(flag)
    } else if let text = try? container.decode(String.self) {
      self = .text(text)
    } else if let items = try? container.decode([[String: TemplateValue]].self) {
      self = .list(items)
    } else {
      self = .object(try container.decode([String: TemplateValue].self))
    }
  }

  func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    switch self {
    case .text(let text): try container.encode(text)
    case .flag(let flag): try container.encode(flag)
    case .list(let items): try container.encode(items)
    case .object(let fields): try container.encode(fields)
    }
  }
}

typealias TemplateValues = [String: TemplateValue]

extension TemplateValues {
  func json() -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    // Strings, booleans, arrays and objects always encode.
    return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
  }

  static func fromJSON(_ json: String) -> TemplateValues {
    (try? JSONDecoder().decode(TemplateValues.self, from: Data(json.utf8))) ?? [:]
  }
}

/// Turns something that happened into notifications: the in-app item, rendered now, and an email
/// and SMS delivery for each channel the kind uses and the user's preferences allow, queued for the
/// sender. All in the caller's transaction (an event's inbox transaction), keyed by the event, so
/// the same event never notifies the same user twice.
struct Notifier: Sendable {
  let store: NotificationStore
  let templates: NotificationTemplates
  let settings: NotificationSettings

  struct Outcome: Sendable {
    var notificationID: UUID
    var deliveries: [UUID]
  }

  /// Nil when this event already notified this user. An event that happened more than
  /// `maximumEventAge` ago is kept in the inbox but sends nothing: a new deployment that reads a
  /// topic from its start must not mail every customer about every old order.
  @discardableResult
  func notify(
    _ userID: UUID, of kind: NotificationKind, values: TemplateValues, orderID: UUID? = nil, sourceEventID: UUID?,
    eventTime: Date? = nil, channels requested: [DeliveryChannel]? = nil, destination: String? = nil,
    claimedFor lease: Duration? = nil, on connection: PostgresConnection
  ) async throws -> Outcome? {
    let contact = try await store.user(userID, on: connection)
    let message = render(kind, values: values.filter { !kind.emailOnlyValues.contains($0.key) }, for: contact)
    guard
      let notificationID = try await store.insertNotification(
        userID: userID, kind: kind, title: String(String.UnicodeScalarView(message.subject.unicodeScalars.prefix(200))),
        body: message.text, orderID: orderID,
        sourceEventID: sourceEventID, on: connection)
    else { return nil }
    var channels = requested ?? kind.channels
    if let eventTime, Date().timeIntervalSince(eventTime) > settings.maximumEventAge.timeInterval {
      channels = []
    }
    if let category = kind.category {
      let switches = try await store.preferences(of: userID, on: connection).switches[category] ?? category.defaults
      channels = channels.filter { switches.allows($0) }
    }
    var deliveries: [UUID] = []
    for channel in channels {
      if let id = try await store.queueDelivery(
        notificationID: notificationID, sourceEventID: sourceEventID, userID: userID, kind: kind, channel: channel,
        recipient: destination ?? contact?.address(for: channel), templateData: values.json(),
        messageDomain: settings.messageDomain, claimedFor: lease, on: connection)
      {
        deliveries.append(id)
      }
    }
    return Outcome(notificationID: notificationID, deliveries: deliveries)
  }

  /// The message for this user: their name and language where known.
  func render(_ kind: NotificationKind, values: TemplateValues, for contact: UserContact?) -> RenderedMessage {
    var values = values.compactMapValues(\.renderable)
    values["name"] = contact?.fullName
    values["shop_name"] = settings.shopName
    return templates.render(kind, locale: contact?.locale ?? NotificationTemplates.fallbackLocale, values: values)
  }
}
