import Foundation
import MartProto
import MartRuntime
import MartTestSupport
import Testing

/// `DomainEvents` and `EventTopic` are generated from proto/ by `make proto`. These tests read the
/// .proto text directly, not through protoc, so that an event the plugin skipped, or generated code
/// not regenerated after an events.proto changed, fails here: an unregistered event type is
/// dead-lettered as unknown by every consumer.
@Suite struct DomainEventRegistryTests {
  /// What one events.proto declares, read line by line (the files are protoc-formatted: top-level
  /// declarations start at column 0, nested ones are indented).
  struct EventsFile {
    var path: String
    var package: String
    var topic: String?
    var messages: [String]

    init(path: String, text: String) {
      self.path = path
      var package = ""
      var messages: [String] = []
      for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("package ") {
          package = line.dropFirst("package ".count).trimmingCharacters(in: CharacterSet(charactersIn: "; "))
        } else if line.hasPrefix("option (mart.api.v1.event_topic)") {
          let quoted = line.split(separator: "\"", omittingEmptySubsequences: false)
          topic = quoted.count == 3 ? String(quoted[1]) : nil
        } else if line.hasPrefix("message ") {
          let name = line.dropFirst("message ".count).prefix { $0.isLetter || $0.isNumber || $0 == "_" }
          messages.append(String(name))
        }
      }
      self.package = package
      self.messages = messages
    }

    /// Full protobuf names, e.g. `mart.order.v1.OrderPlaced`.
    var eventNames: [String] { messages.map { "\(package).\($0)" } }
  }

  /// Every `events.proto` under proto/, sorted by path.
  static func eventsFiles() throws -> [EventsFile] {
    let protoRoot = TestBed.repositoryRoot.appendingPathComponent("proto")
    guard let walker = FileManager.default.enumerator(at: protoRoot, includingPropertiesForKeys: nil) else {
      throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: protoRoot.path])
    }
    var files: [EventsFile] = []
    for case let url as URL in walker where url.lastPathComponent == "events.proto" {
      let path = String(url.path.dropFirst(protoRoot.path.count + 1))
      files.append(EventsFile(path: path, text: try String(contentsOf: url, encoding: .utf8)))
    }
    return files.sorted { $0.path < $1.path }
  }

  @Test func everyEventMessageInProtoIsRegistered() throws {
    let files = try Self.eventsFiles()
    // The mart has an events.proto per domain; finding none means the walk is broken, and the
    // comparison below would pass against an empty registry.
    #expect(files.count >= 6, "events.proto files found: \(files.map(\.path))")
    let declared = files.flatMap(\.eventNames)
    #expect(Set(declared).count == declared.count, "an event is declared twice: \(declared)")

    let registered = DomainEvents.all.map { $0.protoMessageName }
    #expect(Set(registered).count == registered.count, "an event is registered twice: \(registered)")
    let missing = Set(declared).subtracting(registered).sorted()
    let unexpected = Set(registered).subtracting(declared).sorted()
    #expect(missing.isEmpty, "declared in an events.proto but not in DomainEvents.all (run make proto): \(missing)")
    #expect(unexpected.isEmpty, "in DomainEvents.all but in no events.proto: \(unexpected)")
    #expect(DomainEvents.byName.count == declared.count)
  }

  @Test func everyEventGoesToItsFilesTopic() throws {
    let files = try Self.eventsFiles()
    #expect(!files.isEmpty)
    for file in files {
      let topic = try #require(file.topic, "\(file.path) has no (mart.api.v1.event_topic) option")
      #expect(!file.messages.isEmpty, "\(file.path) declares no event")
      for name in file.eventNames {
        #expect(DomainEvents.byName[name]?.topic.name == topic, "\(name) (\(file.path))")
        #expect(EventTopic.of(eventType: name)?.name == topic, "\(name) (\(file.path))")
      }
    }
    let declaredTopics = Set(files.compactMap(\.topic))
    #expect(Set(EventTopic.allCases.map(\.name)) == declaredTopics)
    #expect(
      Set(EventTopic.allNames) == declaredTopics.union(declaredTopics.map { $0 + ".dlq" }),
      "every topic and its dead-letter twin are created at start-up")
  }

  @Test func aMessageThatIsNotAnEventHasNoTopic() {
    // Same package as the order events, declared in order.proto: the topic comes from the event
    // registry, not from the package name.
    #expect(EventTopic.of(eventType: Mart_Order_V1_Order.protoMessageName) == nil)
    #expect(EventTopic.of(eventType: "mart.order.v1.NoSuchEvent") == nil)
    #expect(EventTopic.of(eventType: Mart_Order_V1_OrderPlaced.protoMessageName) == .orders)
    #expect(Mart_Order_V1_OrderPlaced.topic.deadLetterName == "mart.orders.v1.dlq")
  }
}
