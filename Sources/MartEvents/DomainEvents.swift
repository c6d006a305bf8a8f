import MartProto
import SwiftProtobuf

/// A domain event of the mart: a protobuf message whose field 1 is `mart.common.v1.EventMetadata`.
///
/// The conformances are generated (`Generated/MartDomainEvents.swift`, by `make proto`): every
/// message of every `proto/mart/<domain>/v1/events.proto` is one, with the topic its file declares
/// in the `(mart.api.v1.event_topic)` option. Nothing here lists events by hand, so a new event
/// cannot be left out and dead-lettered as unknown.
public protocol DomainEvent: SwiftProtobuf.Message, Sendable {
  /// The topic every event of this type is published to.
  static var topic: EventTopic { get }

  var metadata: Mart_Common_V1_EventMetadata { get set }
}

/// `EventTopic` itself (one case per events.proto topic) is generated next to the events.
extension EventTopic {
  public var name: String { rawValue }
  public var deadLetterName: String { rawValue + ".dlq" }

  /// Every topic and its dead-letter topic, for creating them at start-up.
  public static var allNames: [String] { allCases.flatMap { [$0.name, $0.deadLetterName] } }

  /// The topic of a known event type, by its full protobuf name
  /// (`mart.order.v1.OrderPlaced` → `mart.orders.v1`); nil for a type that is not a domain event.
  public static func of(eventType: String) -> EventTopic? {
    DomainEvents.byName[eventType]?.topic
  }
}

/// Every domain event type the mart knows (`all` is generated), by its full protobuf name (the
/// CloudEvents `ce_type`). A type not listed is unknown: a consumer sends such an event to the
/// dead-letter topic.
public enum DomainEvents {
  public static let byName: [String: any DomainEvent.Type] = Dictionary(
    uniqueKeysWithValues: all.map { ($0.protoMessageName, $0) })
}
