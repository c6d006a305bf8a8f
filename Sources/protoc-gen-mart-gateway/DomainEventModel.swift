import SwiftProtobufPluginLibrary

/// The mart's domain events, read and checked from the descriptors: every top-level message of
/// every `events.proto` in a `mart.*` package, with the topic its file declares.
///
/// Membership is by file, not by shape, so that an event cannot be forgotten: a message added to
/// an events.proto is registered by the next `make proto`, and one that does not carry the event
/// metadata fails generation instead of being published without it.
struct DomainEventModel {
  /// The field every event has as field 1 (the outbox fills it; consumers read it).
  static let metadataType = "mart.common.v1.EventMetadata"
  static let metadataName = "metadata"

  /// A broker topic, e.g. `mart.orders.v1`, and its `EventTopic` case, e.g. `orders`.
  struct Topic: Hashable {
    var name: String
    var caseName: String
  }

  struct Event {
    var message: Descriptor
    var topic: Topic
  }

  /// Every declared topic, sorted by name.
  var topics: [Topic]
  /// Every event, in file order (by file name) then declaration order.
  var events: [Event]

  init(files: [FileDescriptor]) throws {
    var problems: [String] = []
    var topicsByCase: [String: Topic] = [:]
    var events: [Event] = []
    for file in files.filter(Self.isEventsFile).sorted(by: { $0.name < $1.name }) {
      let topic: Topic
      do {
        topic = try Self.topic(of: file)
      } catch let error as GenerationError {
        problems += error.problems
        continue
      }
      if let other = topicsByCase[topic.caseName], other != topic {
        problems.append(
          "\(file.name): topics \(other.name) and \(topic.name) would both be EventTopic.\(topic.caseName)")
        continue
      }
      topicsByCase[topic.caseName] = topic
      for message in file.messages {
        if let problem = Self.metadataProblem(message) {
          problems.append(problem)
        } else {
          events.append(Event(message: message, topic: topic))
        }
      }
    }
    if !problems.isEmpty {
      throw GenerationError(problems)
    }
    self.topics = topicsByCase.values.sorted { $0.name < $1.name }
    self.events = events
  }

  /// `mart/<domain>/v1/events.proto` (any `events.proto` of a `mart.*` package).
  static func isEventsFile(_ file: FileDescriptor) -> Bool {
    file.package.hasPrefix("mart.") && (file.name == "events.proto" || file.name.hasSuffix("/events.proto"))
  }

  /// The file's `(mart.api.v1.event_topic)`, which must be `mart.<name>.v<N>` with a lower-case
  /// `<name>`: it becomes a Swift enum case.
  private static func topic(of file: FileDescriptor) throws -> Topic {
    let options = try APIModel.decodedOptions(file.options)
    guard options.hasMart_Api_V1_eventTopic else {
      throw GenerationError([
        "\(file.name) has no (mart.api.v1.event_topic) option: every events.proto names the topic of its events"
      ])
    }
    let name = options.Mart_Api_V1_eventTopic
    let parts = name.split(separator: ".", omittingEmptySubsequences: false)
    let isLowerIdentifier = { (part: Substring) in
      guard let head = part.first, head.isASCII, head.isLowercase else { return false }
      return part.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber) }
    }
    let isVersion = { (part: Substring) in
      part.count > 1 && part.first == "v" && part.dropFirst().allSatisfy { $0.isASCII && $0.isNumber }
    }
    guard parts.count == 3, parts[0] == "mart", isLowerIdentifier(parts[1]), isVersion(parts[2]) else {
      throw GenerationError([
        "\(file.name): event topic '\(name)' is not of the form mart.<name>.v<N> (<name> lower-case letters and digits)"
      ])
    }
    return Topic(name: name, caseName: String(parts[1]))
  }

  /// Why `message` cannot be an event, or nil when its field 1 is `EventMetadata metadata`.
  private static func metadataProblem(_ message: Descriptor) -> String? {
    let required =
      "field 1 must be `\(metadataType) \(metadataName)` (every message in an events.proto is a domain event)"
    guard let field = message.fields.first(where: { $0.number == 1 }) else {
      return "message \(message.fullName) in \(message.file.name) has no field 1: \(required)"
    }
    let isMetadata =
      field.name == metadataName && field.type == .message && !field.isRepeated
      && field.messageType.fullName == metadataType
    if isMetadata {
      return nil
    }
    return "message \(message.fullName) in \(message.file.name): field 1 is `\(field.name)`: \(required)"
  }
}
