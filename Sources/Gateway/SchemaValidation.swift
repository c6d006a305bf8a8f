import Foundation

// Checks a JSON body against the request message's schema (generated from proto/) before
// SwiftProtobuf decodes it. SwiftProtobuf refuses the same things, but its errors do not say which
// field; the client needs `field: "address.postalCode"` in a BadRequest violation. The rules are
// proto3 JSON's: a field by its JSON or proto name, null for the default, 64-bit integers as
// numbers or strings, enums by name or number, well-known types in their JSON forms.

/// The generated message and enum schemas, indexed for lookups by either name.
struct SchemaIndex: Sendable {
  struct Message: Sendable {
    var schema: MessageSchema
    /// Each field under its JSON name and its proto name.
    var fieldsByName: [String: FieldSchema]
  }

  var messages: [String: Message]
  var enums: [String: EnumSchema]

  init(messages: [String: MessageSchema], enums: [String: EnumSchema]) {
    self.messages = messages.mapValues { schema in
      var byName: [String: FieldSchema] = [:]
      for field in schema.fields {
        byName[field.protoName] = field
        byName[field.jsonName] = field
      }
      return Message(schema: schema, fieldsByName: byName)
    }
    self.enums = enums
  }

  /// The tables generated from proto/.
  static let generated = SchemaIndex(messages: GatewayRouteTable.messages, enums: GatewayRouteTable.enums)

  func field(_ name: String, in message: String) -> FieldSchema? {
    messages[message]?.fieldsByName[name]
  }
}

/// The well-known types whose JSON form is not an object of fields.
enum WellKnownType {
  static let timestamp = "google.protobuf.Timestamp"
  static let duration = "google.protobuf.Duration"
  static let fieldMask = "google.protobuf.FieldMask"
  static let structType = "google.protobuf.Struct"
  static let value = "google.protobuf.Value"
  static let listValue = "google.protobuf.ListValue"
  static let empty = "google.protobuf.Empty"
  static let any = "google.protobuf.Any"
  static let nullValue = "google.protobuf.NullValue"
  static let httpBody = "google.api.HttpBody"

  /// `google.protobuf.Int64Value` and friends: JSON is the wrapped scalar.
  static let wrappers: [String: FieldSchema.Kind] = [
    "google.protobuf.DoubleValue": .double, "google.protobuf.FloatValue": .float,
    "google.protobuf.Int64Value": .int64, "google.protobuf.UInt64Value": .uint64,
    "google.protobuf.Int32Value": .int32, "google.protobuf.UInt32Value": .uint32,
    "google.protobuf.BoolValue": .bool, "google.protobuf.StringValue": .string,
    "google.protobuf.BytesValue": .bytes,
  ]

  /// Types written as one JSON string or scalar, so that a query parameter or a path variable can
  /// carry them.
  static func isScalarLike(_ name: String) -> Bool {
    name == timestamp || name == duration || name == fieldMask || wrappers[name] != nil
  }
}

/// Walks parsed JSON against a message schema; throws the first violation, naming its field.
struct SchemaValidator: Sendable {
  typealias Violation = GatewayError.FieldViolation

  var schemas: SchemaIndex

  /// Checks `value` as the JSON of message `type`. `path` is where it sits in the request (empty
  /// for the request itself).
  func validateMessage(_ value: JSONValue, type: String, path: String) throws(Violation) {
    try validateSingular(value, kind: .message(type), path: path)
  }

  /// Checks the value of one field (repeated, map or singular); null means the default.
  func validateField(_ value: JSONValue, field: FieldSchema, path: String) throws(Violation) {
    if value == .null { return }
    if field.isMap {
      guard case .object(let members) = value else {
        throw Violation(field: path, description: "expected an object (a map), got \(value.typeName)")
      }
      var seen: Set<String> = []
      for member in members {
        let entryPath = "\(path)[\(member.key)]"
        guard seen.insert(member.key).inserted else {
          throw Violation(field: entryPath, description: "map key given more than once")
        }
        try validateMapKey(member.key, kind: field.mapKeyKind ?? .string, path: entryPath)
        try validateElement(member.value, kind: field.kind, path: entryPath)
      }
    } else if field.isRepeated {
      guard case .array(let elements) = value else {
        throw Violation(field: path, description: "expected an array, got \(value.typeName)")
      }
      for (index, element) in elements.enumerated() {
        try validateElement(element, kind: field.kind, path: "\(path)[\(index)]")
      }
    } else {
      try validateSingular(value, kind: field.kind, path: path)
    }
  }

  /// An element of a repeated field or a map value: null is not allowed (but for `Value`).
  private func validateElement(_ value: JSONValue, kind: FieldSchema.Kind, path: String) throws(Violation) {
    if value == .null && kind != .message(WellKnownType.value) && kind != .enumeration(WellKnownType.nullValue) {
      throw Violation(field: path, description: "null is not allowed here")
    }
    try validateSingular(value, kind: kind, path: path)
  }

  private func validateMapKey(_ key: String, kind: FieldSchema.Kind, path: String) throws(Violation) {
    switch kind {
    case .bool:
      guard key == "true" || key == "false" else {
        throw Violation(field: path, description: "a map key must be true or false")
      }
    case .int32, .int64, .uint32, .uint64:
      guard ScalarSyntax.integer(key, kind: kind) != nil else {
        throw Violation(field: path, description: "a map key must be an integer (\(ScalarSyntax.range(kind)))")
      }
    default:
      break
    }
  }

  func validateSingular(_ value: JSONValue, kind: FieldSchema.Kind, path: String) throws(Violation) {
    if value == .null { return }
    func wrongType(_ expected: String) -> Violation {
      Violation(field: path, description: "expected \(expected), got \(value.typeName)")
    }
    switch kind {
    case .string:
      guard case .string = value else { throw wrongType("a string") }
    case .bytes:
      guard case .string(let text) = value else { throw wrongType("a base64 string") }
      guard ScalarSyntax.isBase64(text) else { throw Violation(field: path, description: "not valid base64") }
    case .bool:
      guard case .bool = value else { throw wrongType("true or false") }
    case .int32, .int64, .uint32, .uint64:
      let text: String
      switch value {
      case .number(let number): text = number
      case .string(let string): text = string
      default: throw wrongType("an integer")
      }
      guard ScalarSyntax.integer(text, kind: kind) != nil else {
        throw Violation(field: path, description: "expected an integer (\(ScalarSyntax.range(kind))), got \(text)")
      }
    case .float, .double:
      switch value {
      case .number(let text):
        guard ScalarSyntax.floatingPoint(text, isFloat: kind == .float) != nil else {
          throw Violation(field: path, description: "number out of range: \(text)")
        }
      case .string(let text):
        guard ScalarSyntax.floatingPoint(text, isFloat: kind == .float) != nil else {
          throw Violation(field: path, description: "expected a number, got \(text.debugDescription)")
        }
      default: throw wrongType("a number")
      }
    case .enumeration(let type):
      try validateEnum(value, type: type, path: path)
    case .message(let type):
      try validateMessageValue(value, type: type, path: path)
    }
  }

  private func validateEnum(_ value: JSONValue, type: String, path: String) throws(Violation) {
    switch value {
    case .string(let name):
      guard let schema = schemas.enums[type] else { return }
      guard schema.values.contains(name) else {
        throw Violation(
          field: path,
          description: "unknown value \(name.debugDescription); one of \(schema.values.joined(separator: ", "))")
      }
    case .number(let text):
      guard ScalarSyntax.integer(text, kind: .int32) != nil else {
        throw Violation(field: path, description: "expected an enum value name or number, got \(text)")
      }
    default:
      throw Violation(field: path, description: "expected an enum value name, got \(value.typeName)")
    }
  }

  private func validateMessageValue(_ value: JSONValue, type: String, path: String) throws(Violation) {
    func expectString(_ what: String, _ check: (String) -> Bool) throws(Violation) {
      guard case .string(let text) = value else {
        throw Violation(field: path, description: "expected \(what) as a string, got \(value.typeName)")
      }
      guard check(text) else { throw Violation(field: path, description: "not \(what): \(text.debugDescription)") }
    }
    switch type {
    case WellKnownType.timestamp:
      try expectString("an RFC 3339 timestamp (2024-01-31T12:00:00Z)", ScalarSyntax.isTimestamp)
      return
    case WellKnownType.duration:
      try expectString("a duration in seconds (\"1.5s\")", ScalarSyntax.isDuration)
      return
    case WellKnownType.fieldMask:
      try expectString("a field mask: comma-separated lowerCamelCase paths (fullName,phone)") {
        ScalarSyntax.isFieldMask($0, allowingProtoNames: false)
      }
      return
    case WellKnownType.value:
      return
    case WellKnownType.structType:
      guard case .object = value else { throw Violation(field: path, description: "expected an object") }
      return
    case WellKnownType.listValue:
      guard case .array = value else { throw Violation(field: path, description: "expected an array") }
      return
    case WellKnownType.empty:
      guard case .object(let members) = value, members.isEmpty else {
        throw Violation(field: path, description: "expected an empty object")
      }
      return
    default:
      break
    }
    if let wrapped = WellKnownType.wrappers[type] {
      try validateSingular(value, kind: wrapped, path: path)
      return
    }
    guard case .object(let members) = value else {
      throw Violation(field: path, description: "expected an object, got \(value.typeName)")
    }
    // A message the tables do not describe (Any, another well-known type): SwiftProtobuf decides.
    guard let message = schemas.messages[type] else { return }
    var seen: Set<String> = []
    for member in members {
      let memberPath = path.isEmpty ? member.key : "\(path).\(member.key)"
      guard let field = message.fieldsByName[member.key] else {
        throw Violation(field: memberPath, description: "unknown field")
      }
      guard seen.insert(field.protoName).inserted else {
        throw Violation(field: memberPath, description: "field given more than once")
      }
      try validateField(member.value, field: field, path: memberPath)
    }
  }
}

/// The textual forms of proto3 JSON scalars, shared by bodies, query parameters and path
/// variables.
enum ScalarSyntax {
  static func range(_ kind: FieldSchema.Kind) -> String {
    switch kind {
    case .int32: "32-bit signed"
    case .uint32: "32-bit unsigned"
    case .int64: "64-bit signed"
    case .uint64: "64-bit unsigned"
    default: "integer"
    }
  }

  /// The integer in `text` if it is one within the kind's range: plain digits with an optional
  /// '-', or an exponent/fraction form whose value is a whole number (proto3 JSON allows `1e3`).
  static func integer(_ text: String, kind: FieldSchema.Kind) -> String? {
    let bounds: (min: Int64, max: UInt64)
    switch kind {
    case .int32: bounds = (Int64(Int32.min), UInt64(Int32.max))
    case .uint32: bounds = (0, UInt64(UInt32.max))
    case .int64: bounds = (Int64.min, UInt64(Int64.max))
    case .uint64: bounds = (0, UInt64.max)
    default: return nil
    }
    let isPlain =
      !text.isEmpty
      && text.utf8.enumerated().allSatisfy { index, byte in
        (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (index == 0 && byte == UInt8(ascii: "-"))
      } && text != "-"
    if isPlain {
      if text.hasPrefix("-") {
        guard let value = Int64(text), value >= bounds.min else { return nil }
        return String(value)
      }
      guard let value = UInt64(text), value <= bounds.max else { return nil }
      return String(value)
    }
    // 1e3, 5.0: only when the value is whole and exactly representable.
    guard isJSONNumber(text), let double = Double(text), double.isFinite, double == double.rounded(),
      abs(double) <= 9_007_199_254_740_992
    else { return nil }
    let whole = Int64(double)
    guard whole >= bounds.min, whole < 0 || UInt64(whole) <= bounds.max else { return nil }
    return String(whole)
  }

  /// The value of a float or double's text: a JSON number, or "NaN", "Infinity", "-Infinity";
  /// nil when it is neither, or out of range for the type.
  static func floatingPoint(_ text: String, isFloat: Bool) -> Double? {
    switch text {
    case "NaN": return .nan
    case "Infinity": return .infinity
    case "-Infinity": return -.infinity
    default: break
    }
    guard isJSONNumber(text), let value = Double(text), value.isFinite else { return nil }
    if isFloat && abs(value) > Double(Float.greatestFiniteMagnitude) { return nil }
    return value
  }

  /// JSON's number grammar.
  static func isJSONNumber(_ text: String) -> Bool {
    guard case .number = try? JSONParser.parse(Array(text.utf8)) else { return false }
    return true
  }

  /// Standard or URL-safe base64, padding optional.
  static func isBase64(_ text: String) -> Bool {
    var body = Substring(text)
    while body.hasSuffix("=") { body = body.dropLast() }
    guard text.utf8.count - body.utf8.count <= 2, body.utf8.count % 4 != 1 else { return false }
    return body.utf8.allSatisfy { byte in
      switch byte {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "-"),
        UInt8(ascii: "_"):
        true
      default: false
      }
    }
  }

  /// RFC 3339 with an upper-case 'T' and 'Z' (as SwiftProtobuf requires), seconds, up to nine fraction digits and `Z` or an offset; years 1–9999.
  static func isTimestamp(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    func digits(_ start: Int, _ count: Int) -> Int? {
      guard start + count <= bytes.count else { return nil }
      var value = 0
      for byte in bytes[start..<start + count] {
        guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
        value = value * 10 + Int(byte - UInt8(ascii: "0"))
      }
      return value
    }
    func byte(_ index: Int, is character: Character) -> Bool {
      index < bytes.count && character.asciiValue == bytes[index]
    }
    guard let year = digits(0, 4), year >= 1, byte(4, is: "-"), let month = digits(5, 2), (1...12).contains(month),
      byte(7, is: "-"), let day = digits(8, 2), (1...31).contains(day), byte(10, is: "T"),
      let hour = digits(11, 2), hour < 24, byte(13, is: ":"), let minute = digits(14, 2), minute < 60,
      byte(16, is: ":"), let second = digits(17, 2), second < 60
    else { return false }
    var index = 19
    if byte(index, is: ".") {
      index += 1
      let start = index
      while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
      guard (1...9).contains(index - start) else { return false }
    }
    if byte(index, is: "Z") { return index + 1 == bytes.count }
    guard byte(index, is: "+") || byte(index, is: "-"), let offsetHours = digits(index + 1, 2), offsetHours < 24,
      byte(index + 3, is: ":"), let offsetMinutes = digits(index + 4, 2), offsetMinutes < 60
    else { return false }
    return index + 6 == bytes.count
  }

  /// `-?seconds(.fraction)?s`, within ±10,000 years.
  static func isDuration(_ text: String) -> Bool {
    guard text.hasSuffix("s") else { return false }
    var body = text.dropLast()
    if body.hasPrefix("-") { body = body.dropFirst() }
    let parts = body.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
    guard let whole = parts.first, !whole.isEmpty, whole.allSatisfy(\.isASCIIDigit), let seconds = Int64(whole),
      seconds <= 315_576_000_000
    else { return false }
    if parts.count == 2 {
      guard (1...9).contains(parts[1].count), parts[1].allSatisfy(\.isASCIIDigit) else { return false }
    }
    return true
  }

  /// Comma-separated paths of field names joined by '.': lowerCamelCase as proto3 JSON writes
  /// them, or (`allowingProtoNames`, for query parameters) also the proto names (`full_name`).
  static func isFieldMask(_ text: String, allowingProtoNames: Bool) -> Bool {
    if text.isEmpty { return true }
    return text.split(separator: ",", omittingEmptySubsequences: false).allSatisfy { path in
      !path.isEmpty
        && path.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { name in
          guard let first = name.first, first.isASCII, first.isLowercase || (allowingProtoNames && first.isLetter)
          else { return false }
          return name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || (allowingProtoNames && $0 == "_")) }
        }
    }
  }

  /// A field mask's paths in their JSON form: `full_name,address.postal_code` →
  /// `fullName,address.postalCode`.
  static func jsonFieldMask(_ text: String) -> String {
    text.split(separator: ",", omittingEmptySubsequences: false).map { path in
      path.split(separator: ".", omittingEmptySubsequences: false).map { CompiledRoute.jsonName(String($0)) }
        .joined(separator: ".")
    }.joined(separator: ",")
  }
}

extension Character {
  fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
