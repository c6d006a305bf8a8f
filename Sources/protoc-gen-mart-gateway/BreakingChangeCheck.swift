import Foundation
import SwiftProtobuf

/// `protoc-gen-mart-gateway --check-breaking BASELINE CURRENT`: compares two descriptor sets
/// (`protoc --include_imports --descriptor_set_out`) of Mart's protos and lists every change that
/// breaks a reader of the wire format or of the JSON mapping built from BASELINE. Events on Kafka
/// are read by services deployed at other times than their writers, so such a change breaks a
/// consumer at run time, long after it merged. Adding is allowed; a deliberate break goes through
/// a new package version. (`buf breaking` is the usual tool; it cannot be installed here.)
///
/// Only `mart.*` packages are compared: the well-known and google.api files are not ours.
struct BreakingChangeCheck {
  let baseline: Google_Protobuf_FileDescriptorSet
  let current: Google_Protobuf_FileDescriptorSet

  /// Every breaking change, one sentence each; empty when CURRENT can replace BASELINE.
  func problems() -> [String] {
    var problems: [String] = []
    let old = Index(baseline)
    let new = Index(current)

    for (name, oldPackage) in old.packageOfFile {
      if let newPackage = new.packageOfFile[name], newPackage != oldPackage {
        problems.append("file \(name): package changed from \(oldPackage) to \(newPackage)")
      }
    }
    for (name, message) in old.messages.sorted(by: { $0.key < $1.key }) {
      guard let changed = new.messages[name] else {
        problems.append("message \(name) removed or renamed")
        continue
      }
      problems += fieldProblems(name, message, changed)
    }
    for (name, enumeration) in old.enums.sorted(by: { $0.key < $1.key }) {
      guard let changed = new.enums[name] else {
        problems.append("enum \(name) removed or renamed")
        continue
      }
      let reservedNames = Set(changed.reservedName)
      let now = Dictionary(changed.value.map { ($0.name, $0.number) }, uniquingKeysWith: { first, _ in first })
      for value in enumeration.value {
        guard let number = now[value.name] else {
          let reserved =
            reservedNames.contains(value.name)
            && changed.reservedRange.contains { $0.start <= value.number && value.number <= $0.end }
          if !reserved { problems.append("enum value \(name).\(value.name) (\(value.number)) removed") }
          continue
        }
        if number != value.number {
          problems.append("enum value \(name).\(value.name) renumbered from \(value.number) to \(number)")
        }
      }
    }
    for (name, service) in old.services.sorted(by: { $0.key < $1.key }) {
      guard let changed = new.services[name] else {
        problems.append("service \(name) removed or renamed")
        continue
      }
      let methods = Dictionary(changed.method.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
      for method in service.method {
        let rpc = "rpc \(name).\(method.name)"
        guard let now = methods[method.name] else {
          problems.append("\(rpc) removed or renamed")
          continue
        }
        if now.inputType != method.inputType || now.outputType != method.outputType {
          problems.append(
            "\(rpc): request or response type changed from (\(method.inputType)) returns (\(method.outputType)) to (\(now.inputType)) returns (\(now.outputType))"
          )
        }
        if now.clientStreaming != method.clientStreaming || now.serverStreaming != method.serverStreaming {
          problems.append("\(rpc): streaming changed")
        }
        let before = Self.http(method)
        let after = Self.http(now)
        if before != after {
          problems.append(
            "\(rpc): google.api.http changed from \(before.map(\.description) ?? "none") to \(after.map(\.description) ?? "none")"
          )
        }
      }
    }
    return problems
  }

  private func fieldProblems(
    _ message: String, _ old: Google_Protobuf_DescriptorProto, _ new: Google_Protobuf_DescriptorProto
  ) -> [String] {
    var problems: [String] = []
    let fields = Dictionary(new.field.map { ($0.number, $0) }, uniquingKeysWith: { first, _ in first })
    let reservedNames = Set(new.reservedName)
    func isReserved(_ number: Int32) -> Bool {
      // Reserved ranges of a message are [start, end): end is exclusive, unlike an enum's.
      new.reservedRange.contains { $0.start <= number && number < $0.end }
    }
    for field in old.field {
      let where_ = "field \(message).\(field.name) (\(field.number))"
      guard let now = fields[field.number] else {
        if !(isReserved(field.number) && reservedNames.contains(field.name)) {
          problems.append("\(where_) removed without reserving its number and name")
        }
        continue
      }
      if now.type != field.type || now.typeName != field.typeName {
        problems.append("\(where_): type changed")
      }
      if now.label != field.label || now.proto3Optional != field.proto3Optional {
        problems.append("\(where_): cardinality changed")
      }
      if now.jsonName != field.jsonName || now.name != field.name {
        problems.append("\(where_): name or JSON name changed (to \(now.name), JSON \(now.jsonName))")
      }
    }
    // A number the baseline had reserved (a field removed before) must not come back.
    for field in new.field
    where old.reservedRange.contains(where: { $0.start <= field.number && field.number < $0.end }) {
      problems.append("field \(message).\(field.name) reuses the reserved number \(field.number)")
    }
    return problems
  }

  /// A method's `google.api.http` rule: verb and path; nil when it has none.
  static func http(_ method: Google_Protobuf_MethodDescriptorProto) -> HTTPRule? {
    guard method.hasOptions,
      let options = try? Google_Protobuf_MethodOptions(
        serializedBytes: method.options.serializedBytes() as [UInt8], extensions: Google_Api_Annotations_Extensions),
      options.hasGoogle_Api_http
    else { return nil }
    let rule = options.Google_Api_http
    let (verb, path): (String, String) =
      switch rule.pattern {
      case .get(let path): ("GET", path)
      case .put(let path): ("PUT", path)
      case .post(let path): ("POST", path)
      case .delete(let path): ("DELETE", path)
      case .patch(let path): ("PATCH", path)
      case .custom(let custom): (custom.kind, custom.path)
      case nil: ("", "")
      }
    return HTTPRule(verb: verb, path: path, body: rule.body)
  }

  struct HTTPRule: Equatable, CustomStringConvertible {
    var verb: String
    var path: String
    var body: String
    var description: String { "\(verb) \(path)" + (body.isEmpty ? "" : " body \(body)") }
  }

  /// Messages, enums and services of the `mart.*` files by fully qualified name (nested ones too).
  struct Index {
    var packageOfFile: [String: String] = [:]
    var messages: [String: Google_Protobuf_DescriptorProto] = [:]
    var enums: [String: Google_Protobuf_EnumDescriptorProto] = [:]
    var services: [String: Google_Protobuf_ServiceDescriptorProto] = [:]

    init(_ set: Google_Protobuf_FileDescriptorSet) {
      for file in set.file where file.package.hasPrefix("mart.") {
        packageOfFile[file.name] = file.package
        for message in file.messageType { add(message, prefix: file.package) }
        for enumeration in file.enumType { enums["\(file.package).\(enumeration.name)"] = enumeration }
        for service in file.service { services["\(file.package).\(service.name)"] = service }
      }
    }

    private mutating func add(_ message: Google_Protobuf_DescriptorProto, prefix: String) {
      let name = "\(prefix).\(message.name)"
      messages[name] = message
      for nested in message.nestedType { add(nested, prefix: name) }
      for enumeration in message.enumType { enums["\(name).\(enumeration.name)"] = enumeration }
    }
  }

  /// Runs the check on two files; the process's exit status.
  static func run(baselinePath: String, currentPath: String) -> Int32 {
    do {
      let check = BreakingChangeCheck(
        baseline: try Google_Protobuf_FileDescriptorSet(
          serializedBytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: baselinePath)))),
        current: try Google_Protobuf_FileDescriptorSet(
          serializedBytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: currentPath)))))
      let problems = check.problems()
      guard !problems.isEmpty else { return 0 }
      var message = "breaking changes to proto/ against \(baselinePath):\n"
      message += problems.map { "  - \($0)\n" }.joined()
      message +=
        "Readers built from the old contract (a consumer of the events, a deployed client) would break. "
        + "Add instead of changing, or put a deliberate break in a new package version (e.g. mart.order.v2), "
        + "then refresh the baseline with `make proto-baseline`.\n"
      FileHandle.standardError.write(Data(message.utf8))
      return 1
    } catch {
      FileHandle.standardError.write(Data("cannot read the descriptor sets: \(error)\n".utf8))
      return 2
    }
  }
}
