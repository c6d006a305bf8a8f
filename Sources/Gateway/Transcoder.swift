import Foundation
import MartCore

// HTTP → proto3 JSON of the request message, by google.api.http's rules: the body (the whole
// message for `body: "*"`, one field for `body: "field"`, nothing for `body: ""`), the path
// variables at their (nested) field paths, and, for fields bound by neither, the query
// parameters. The body and the parameters are kept apart as two JSON documents: the body is
// passed on byte for byte (no number is re-serialised), and `GatewayRPC.call` merges the two
// decoded messages, parameters last.

/// The request message's JSON in two parts: the body's and the parameters'.
struct TranscodedRequest: Sendable, Equatable {
  /// The body as JSON of the request message, or nil when there is none.
  var bodyJSON: [UInt8]?
  /// Path variables, query parameters and gateway-filled fields, as JSON of the request message.
  var parameters: JSONValue

  var parametersJSON: [UInt8] { Array(parameters.serialized.utf8) }
}

/// How one route builds its request message.
struct RequestTranscoder: Sendable {
  typealias Violation = GatewayError.FieldViolation

  /// How the body maps onto the request.
  enum BodyRule: Sendable {
    /// `body: ""`: no body; every field not in the path may come from the query.
    case none
    /// `body: "*"`: the body is the request; no query parameters.
    case wholeMessage
    /// `body: "field"`: the body is this field.
    case field(FieldSchema)
    /// `body: "field"` of type google.api.HttpBody: the raw bytes and their content type.
    case httpBody(FieldSchema)
  }

  let requestMessage: String
  let body: BodyRule
  let schemas: SchemaIndex
  /// Fields filled from request headers (e.g. a webhook's signature), not settable by the client
  /// through the query.
  let headerFields: [(header: String, field: FieldSchema)]
  /// A field filled with the client's address, if any.
  let clientAddressField: FieldSchema?
  /// Top-level fields bound by the path, the body or the gateway: not query parameters.
  private let boundTopLevel: Set<String>
  let validator: SchemaValidator

  struct ConfigurationProblem: Error, CustomStringConvertible {
    var description: String
  }

  init(
    route: GatewayRoute, template: PathTemplate, schemas: SchemaIndex, headerFields: [String: String] = [:],
    clientAddressField: String? = nil
  ) throws(ConfigurationProblem) {
    self.requestMessage = route.requestMessage
    self.schemas = schemas
    self.validator = SchemaValidator(schemas: schemas)
    guard schemas.messages[route.requestMessage] != nil else {
      throw ConfigurationProblem(description: "no schema for \(route.requestMessage)")
    }
    switch route.body {
    case "": body = .none
    case "*": body = .wholeMessage
    default:
      guard let field = schemas.field(route.body, in: route.requestMessage) else {
        throw ConfigurationProblem(description: "body field \(route.body) is not in \(route.requestMessage)")
      }
      body = field.kind == .message(WellKnownType.httpBody) && !field.isRepeated ? .httpBody(field) : .field(field)
    }
    var bound: Set<String> = []
    if case .field(let field) = body { bound.insert(field.protoName) }
    if case .httpBody(let field) = body { bound.insert(field.protoName) }
    for variable in template.variables {
      // Every variable must name a field that a string can set.
      _ = try Self.resolve(variable.fieldPath, in: route.requestMessage, schemas: schemas, forQuery: false)
        .mapError { ConfigurationProblem(description: "path variable \($0.field): \($0.description)") }.get()
    }
    func topLevelString(_ name: String) throws(ConfigurationProblem) -> FieldSchema {
      guard let field = schemas.field(name, in: route.requestMessage), field.kind == .string, !field.isRepeated,
        !field.isMap
      else {
        throw ConfigurationProblem(description: "\(name) is not a string field of \(route.requestMessage)")
      }
      return field
    }
    var headers: [(String, FieldSchema)] = []
    for (field, header) in headerFields.sorted(by: { $0.key < $1.key }) {
      let schema = try topLevelString(field)
      headers.append((header, schema))
      bound.insert(schema.protoName)
    }
    self.headerFields = headers
    if let clientAddressField {
      let schema = try topLevelString(clientAddressField)
      self.clientAddressField = schema
      bound.insert(schema.protoName)
    } else {
      self.clientAddressField = nil
    }
    self.boundTopLevel = bound
  }

  /// The field schemas along a dotted path of proto or JSON names; the last may be a scalar, an
  /// enum, a scalar-like well-known type, or (for queries) a repeated one of those.
  static func resolve(
    _ path: [String], in message: String, schemas: SchemaIndex, forQuery: Bool
  ) -> Result<[FieldSchema], Violation> {
    let name = path.joined(separator: ".")
    var fields: [FieldSchema] = []
    var current = message
    for (index, segment) in path.enumerated() {
      guard let field = schemas.field(segment, in: current) else {
        return .failure(Violation(field: name, description: "no such field"))
      }
      fields.append(field)
      let isLast = index == path.count - 1
      if isLast {
        if field.isMap || (field.isRepeated && !forQuery) {
          return .failure(Violation(field: name, description: "cannot be set from the URL"))
        }
        if case .message(let type) = field.kind, !WellKnownType.isScalarLike(type) {
          return .failure(Violation(field: name, description: "a message; send it in the body"))
        }
      } else {
        guard case .message(let type) = field.kind, !field.isRepeated, !field.isMap, schemas.messages[type] != nil
        else {
          return .failure(Violation(field: name, description: "\(segment) has no fields to set from the URL"))
        }
        current = type
      }
    }
    return .success(fields)
  }

  // MARK: Building the request

  /// The request's JSON from the path's bindings, the raw query string, the body and headers.
  func transcode(
    bindings: [PathBinding], query: String?, body: [UInt8], contentType: String?, headers: (String) -> String?,
    clientAddress: String?
  ) throws(GatewayError) -> TranscodedRequest {
    var parameters = ParameterObject()
    var pathBound: Set<[String]> = []
    for binding in bindings {
      let fields = try Self.resolve(binding.fieldPath, in: requestMessage, schemas: schemas, forQuery: false)
        .mapError(GatewayError.badRequest).get()
      let value = try Self.jsonValue(
        binding.value, kind: Self.leafKind(fields), name: binding.fieldPath.joined(separator: "."), schemas: schemas
      ).mapError(GatewayError.badRequest).get()
      parameters.set(value, at: fields, appending: false)
      pathBound.insert(fields.map(\.protoName))
    }
    for (name, value) in try Self.queryItems(query) {
      try bindQuery(name: name, value: value, into: &parameters, pathBound: pathBound)
    }
    for (header, field) in headerFields {
      if let value = headers(header) { parameters.set(.string(value), at: [field], appending: false) }
    }
    if let clientAddressField, let clientAddress {
      parameters.set(.string(clientAddress), at: [clientAddressField], appending: false)
    }
    let bodyJSON = try transcodeBody(body, contentType: contentType)
    return TranscodedRequest(bodyJSON: bodyJSON, parameters: parameters.json)
  }

  private func bindQuery(
    name: String, value: String, into parameters: inout ParameterObject, pathBound: Set<[String]>
  ) throws(GatewayError) {
    func unknown(_ why: String) -> GatewayError {
      .badRequest(Violation(field: name, description: "unknown query parameter: \(why)"))
    }
    if case .wholeMessage = body { throw unknown("the request body carries every field") }
    let path = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    let fields: [FieldSchema]
    switch Self.resolve(path, in: requestMessage, schemas: schemas, forQuery: true) {
    case .success(let resolved): fields = resolved
    case .failure(let violation): throw unknown(violation.description)
    }
    guard let first = fields.first, !boundTopLevel.contains(first.protoName) else {
      throw unknown("set by the body or by the gateway")
    }
    guard !pathBound.contains(fields.map(\.protoName)) else { throw unknown("set by the path") }
    let leaf = Self.leafKind(fields)
    let json = try Self.jsonValue(value, kind: leaf, name: name, schemas: schemas).mapError(GatewayError.badRequest)
      .get()
    let repeated = fields.last?.isRepeated ?? false
    if !repeated && parameters.contains(fields) {
      throw .badRequest(Violation(field: name, description: "given more than once"))
    }
    parameters.set(json, at: fields, appending: repeated)
  }

  private static func leafKind(_ fields: [FieldSchema]) -> FieldSchema.Kind {
    fields.last?.kind ?? .string
  }

  private func transcodeBody(_ body: [UInt8], contentType: String?) throws(GatewayError) -> [UInt8]? {
    switch self.body {
    case .none:
      guard body.isEmpty else { throw .badRequest("this method takes no request body") }
      return nil
    case .httpBody(let field):
      var object: [JSONMember] = []
      if let contentType { object.append(JSONMember(key: "contentType", value: .string(contentType))) }
      object.append(JSONMember(key: "data", value: .string(Data(body).base64EncodedString())))
      return Array(JSONValue.object([JSONMember(key: field.jsonName, value: .object(object))]).serialized.utf8)
    case .wholeMessage, .field:
      guard !body.isEmpty else { return nil }
      guard Self.isJSON(contentType) else { throw .unsupportedMediaType(contentType) }
      let parsed: JSONValue
      do {
        parsed = try JSONParser.parse(body)
      } catch {
        throw .badRequest("the request body is not valid JSON: \(error)")
      }
      switch self.body {
      case .field(let field):
        do {
          try validator.validateField(parsed, field: field, path: field.jsonName)
        } catch {
          throw .badRequest(error)
        }
        // Exactly one JSON value (the parser saw to it): wrap it as the field, bytes unchanged.
        return Array("{\(JSONString.quoted(field.jsonName)):".utf8) + body + Array("}".utf8)
      default:
        guard case .object = parsed else {
          throw .badRequest("the request body must be a JSON object, not \(parsed.typeName)")
        }
        do {
          try validator.validateMessage(parsed, type: requestMessage, path: "")
        } catch {
          throw .badRequest(error)
        }
        return body
      }
    }
  }

  /// `application/json`, with parameters (a charset, if any, must be UTF-8).
  static func isJSON(_ contentType: String?) -> Bool {
    guard let contentType else { return false }
    let parts = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
    guard let mediaType = parts.first, mediaType.lowercased() == "application/json" else { return false }
    for parameter in parts.dropFirst() {
      let pair = parameter.split(separator: "=", maxSplits: 1).map {
        $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
      }
      if pair.count == 2, pair[0].lowercased() == "charset", pair[1].lowercased() != "utf-8" { return false }
    }
    return true
  }

  // MARK: Text → JSON values

  /// The JSON for one path or query value of a field of this kind, checked.
  static func jsonValue(
    _ text: String, kind: FieldSchema.Kind, name: String, schemas: SchemaIndex
  ) -> Result<JSONValue, Violation> {
    func invalid(_ expected: String) -> Result<JSONValue, Violation> {
      .failure(Violation(field: name, description: "expected \(expected), got \(text.debugDescription)"))
    }
    switch kind {
    case .string:
      return .success(.string(text))
    case .bytes:
      return ScalarSyntax.isBase64(text) ? .success(.string(text)) : invalid("base64")
    case .bool:
      switch text.lowercased() {
      case "true", "1": return .success(.bool(true))
      case "false", "0": return .success(.bool(false))
      default: return invalid("true or false")
      }
    case .int32, .uint32:
      guard let value = ScalarSyntax.integer(text, kind: kind) else {
        return invalid("an integer (\(ScalarSyntax.range(kind)))")
      }
      return .success(.number(value))
    case .int64, .uint64:
      guard let value = ScalarSyntax.integer(text, kind: kind) else {
        return invalid("an integer (\(ScalarSyntax.range(kind)))")
      }
      return .success(.string(value))
    case .float, .double:
      guard ScalarSyntax.floatingPoint(text, isFloat: kind == .float) != nil else { return invalid("a number") }
      return .success(.string(text))
    case .enumeration(let type):
      if let schema = schemas.enums[type] {
        if schema.values.contains(text) { return .success(.string(text)) }
        if let number = Int32(text) { return .success(.number(String(number))) }
        return invalid("one of \(schema.values.joined(separator: ", "))")
      }
      if let number = Int32(text) { return .success(.number(String(number))) }
      return .success(.string(text))
    case .message(let type):
      switch type {
      case WellKnownType.timestamp:
        return ScalarSyntax.isTimestamp(text) ? .success(.string(text)) : invalid("an RFC 3339 timestamp")
      case WellKnownType.duration:
        return ScalarSyntax.isDuration(text) ? .success(.string(text)) : invalid("a duration such as 1.5s")
      case WellKnownType.fieldMask:
        guard ScalarSyntax.isFieldMask(text, allowingProtoNames: true) else {
          return invalid("comma-separated field paths")
        }
        return .success(.string(ScalarSyntax.jsonFieldMask(text)))
      default:
        if let wrapped = WellKnownType.wrappers[type] {
          return jsonValue(text, kind: wrapped, name: name, schemas: schemas)
        }
        return .failure(Violation(field: name, description: "a message; send it in the body"))
      }
    }
  }

  /// `a=1&b=x%20y&b=z` → [("a", "1"), ("b", "x y"), ("b", "z")]; '+' is a space.
  static func queryItems(_ query: String?) throws(GatewayError) -> [(String, String)] {
    guard let query, !query.isEmpty else { return [] }
    var items: [(String, String)] = []
    for piece in query.split(separator: "&") where !piece.isEmpty {
      let pair = piece.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      guard let name = formDecode(pair[0]), let value = formDecode(pair.count == 2 ? pair[1] : "") else {
        throw .badRequest("the query string is not valid percent-encoded UTF-8")
      }
      guard !name.isEmpty else { throw .badRequest("a query parameter has no name") }
      items.append((name, value))
    }
    return items
  }

  private static func formDecode(_ text: Substring) -> String? {
    let spaced = text.replacingOccurrences(of: "+", with: " ")
    return try? PathTemplate.decode(Substring(spaced), keepingSlashes: false)
  }
}

/// The parameters' JSON object under construction, in insertion order, keyed by JSON name.
struct ParameterObject: Sendable {
  private enum Node: Sendable {
    case value(JSONValue)
    case list([JSONValue])
    case object(ParameterObject)
  }

  private var keys: [String] = []
  private var nodes: [String: Node] = [:]

  func contains(_ path: [FieldSchema]) -> Bool {
    guard let first = path.first, let node = nodes[first.jsonName] else { return false }
    if path.count == 1 { return true }
    guard case .object(let child) = node else { return true }
    return child.contains(Array(path.dropFirst()))
  }

  mutating func set(_ value: JSONValue, at path: [FieldSchema], appending: Bool) {
    guard let first = path.first else { return }
    let key = first.jsonName
    if nodes[key] == nil { keys.append(key) }
    if path.count == 1 {
      if appending {
        if case .list(let existing) = nodes[key] {
          nodes[key] = .list(existing + [value])
        } else {
          nodes[key] = .list([value])
        }
      } else {
        nodes[key] = .value(value)
      }
      return
    }
    var child = ParameterObject()
    if case .object(let existing) = nodes[key] { child = existing }
    child.set(value, at: Array(path.dropFirst()), appending: appending)
    nodes[key] = .object(child)
  }

  var json: JSONValue {
    .object(
      keys.compactMap { key in
        guard let node = nodes[key] else { return nil }
        switch node {
        case .value(let value): return JSONMember(key: key, value: value)
        case .list(let values): return JSONMember(key: key, value: .array(values))
        case .object(let object): return JSONMember(key: key, value: object.json)
        }
      })
  }
}
