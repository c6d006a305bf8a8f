import SwiftProtobufPluginLibrary

/// Writes `Sources/Gateway/Generated/openapi.json`: the OpenAPI 3.1 document of every HTTP binding,
/// with the proto3 JSON form of every message it uses.
enum OpenAPIEmitter {
  static func document(_ api: APIModel) -> String {
    var paths: [String: JSON] = [:]
    var taggedServices: [ServiceDescriptor] = []
    for route in api.routes {
      let path = route.binding.openAPIPath
      var item = paths[path] ?? [:]
      item[route.binding.httpMethod.lowercased()] = operation(route, api: api)
      paths[path] = item
      if !taggedServices.contains(where: { $0 === route.rpc.method.service }) {
        taggedServices.append(route.rpc.method.service)
      }
    }

    var schemas: [String: JSON] = [:]
    for message in api.schemaMessages {
      schemas[message.fullName] = messageSchema(message)
    }
    for e in api.schemaEnums {
      schemas[e.fullName] = described(["type": "string", "enum": .array(e.values.map { .string($0.name) })], e)
    }

    let document: JSON = [
      "openapi": "3.1.0",
      "info": [
        "title": "Mart API",
        "version": "1.0.0",
        "description": """
        The HTTP/JSON API of Mart, served by the gateway. Request and response bodies are the \
        proto3 JSON form of the messages. Generated from proto/ by protoc-gen-mart-gateway \
        (make proto); do not edit.
        """,
      ],
      "tags": .array(taggedServices.map { described(["name": .string($0.name)], $0) }),
      "paths": .object(paths),
      "components": [
        "schemas": .object(schemas),
        "securitySchemes": [
          "bearerAuth": [
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from Register, Login or Refresh.",
          ]
        ],
      ],
    ]
    return document.text
  }

  // MARK: - Operations

  private static func operation(_ route: Route, api: APIModel) -> JSON {
    let method = route.rpc.method
    let binding = route.binding
    var operation: JSON = [
      "operationId": .string(binding.operationID),
      "tags": [.string(method.service.name)],
      "security": route.rpc.access == .public ? [] : [["bearerAuth": []]],
      "x-mart-access": .string(api.accessName(route.rpc.access)),
    ]
    let comment = method.leadingComment
    if !comment.isEmpty {
      operation["summary"] = .string(summary(comment))
      operation["description"] = .string(comment)
    }

    var parameters: [JSON] = []
    for variable in binding.pathVariables {
      guard let leaf = variable.fields.last else { continue }
      parameters.append(
        described(
          ["name": .string(variable.fieldPath), "in": "path", "required": true, "schema": valueSchema(leaf)], leaf)
      )
    }
    parameters += queryParameters(route)
    if !parameters.isEmpty {
      operation["parameters"] = .array(parameters)
    }

    if binding.body == "*" {
      operation["requestBody"] = ["required": true, "content": ["application/json": ["schema": ref(method.inputType)]]]
    } else if let field = binding.bodyField {
      let content: JSON =
        isHttpBody(field)
        ? ["*/*": [:]] : ["application/json": ["schema": fieldSchema(field, annotated: false)]]
      operation["requestBody"] = described(["required": true, "content": content], field)
    }

    var success: JSON = ["description": "OK"]
    if method.serverStreaming {
      // One message per event: Server-Sent Events when the client accepts them (the `id:` is the
      // message's event_id, and Last-Event-ID resumes), else one JSON object per line.
      let description =
        "A stream of \(method.outputType.name) messages: Server-Sent Events (`Accept: text/event-stream`; "
        + "`data:` is the message as JSON, `id:` its `eventId`; a comment line every 15 s while idle; a "
        + "reconnect with `Last-Event-ID` resumes) or newline-delimited JSON."
      success["description"] = .string(description)
      success["content"] = [
        "text/event-stream": ["schema": ["type": "string"]],
        "application/x-ndjson": ["schema": ref(method.outputType)],
      ]
    } else if let field = binding.responseBodyField {
      success["content"] =
        isHttpBody(field) ? ["*/*": [:]] : ["application/json": ["schema": fieldSchema(field, annotated: false)]]
    } else {
      success["content"] =
        method.outputType.fullName == "google.api.HttpBody"
        ? ["*/*": [:]] : ["application/json": ["schema": ref(method.outputType)]]
    }
    operation["responses"] = [
      "200": success,
      "default": [
        "description": "An error: the gRPC status code, message and details.",
        "content": ["application/json": ["schema": ref(api.status)]],
      ],
    ]
    return operation
  }

  /// The query parameters of a binding: with no body or a field body, every field not bound by the
  /// path or the body that has a scalar JSON form, nested messages flattened (`price_range.min`),
  /// named by proto name. A raw (`google.api.HttpBody`) body takes none: the gateway fills the
  /// other fields.
  private static func queryParameters(_ route: Route) -> [JSON] {
    let binding = route.binding
    if binding.body == "*" {
      return []
    }
    if let field = binding.bodyField, isHttpBody(field) {
      return []
    }
    let bound = Set(binding.pathVariables.map(\.fieldPath))
    var parameters: [JSON] = []

    func collect(_ message: Descriptor, prefix: String, visiting: Set<String>) {
      for field in message.fields {
        let name = prefix + field.name
        if (prefix.isEmpty && field.name == binding.body) || bound.contains(name) || field.isMap || isOutputOnly(field)
        {
          continue
        }
        if field.type == .message || field.type == .group {
          let type: Descriptor = field.messageType
          if let schema = scalarWellKnownSchema(type) {
            if !field.isRepeated {
              parameters.append(described(["name": .string(name), "in": "query", "schema": schema], field))
            }
          } else if !field.isRepeated, !isWellKnownType(type), !visiting.contains(type.fullName) {
            collect(type, prefix: name + ".", visiting: visiting.union([type.fullName]))
          }
        } else {
          parameters.append(
            described(["name": .string(name), "in": "query", "schema": fieldSchema(field, annotated: false)], field))
        }
      }
    }
    collect(route.rpc.method.inputType, prefix: "", visiting: [route.rpc.method.inputType.fullName])
    return parameters
  }

  /// The first sentence of a comment, on one line.
  private static func summary(_ comment: String) -> String {
    let text = comment.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    guard let end = text.firstRange(of: ". ") else { return text }
    return String(text[..<end.lowerBound]) + "."
  }

  // MARK: - Schemas

  private static func messageSchema(_ message: Descriptor) -> JSON {
    var properties: [String: JSON] = [:]
    var required: [JSON] = []
    for field in message.fields {
      let name = field.jsonName ?? field.name
      properties[name] = fieldSchema(field, annotated: true)
      if APIModel.fieldBehavior(field).contains(.required) {
        required.append(.string(name))
      }
    }
    var schema: JSON = ["type": "object", "properties": .object(properties)]
    if !required.isEmpty {
      schema["required"] = .array(required)
    }
    return described(schema, message)
  }

  /// The schema of a field's JSON value: repeated fields are arrays, maps objects. `annotated`
  /// adds the description and the read-only / write-only marks.
  private static func fieldSchema(_ field: FieldDescriptor, annotated: Bool) -> JSON {
    var schema: JSON
    if field.isMap, let entry = field.messageType.mapKeyAndValue {
      schema = ["type": "object", "additionalProperties": valueSchema(entry.value)]
    } else if field.isRepeated {
      schema = ["type": "array", "items": valueSchema(field)]
    } else {
      schema = valueSchema(field)
    }
    guard annotated else { return schema }
    if isOutputOnly(field) {
      schema["readOnly"] = true
    }
    if APIModel.fieldBehavior(field).contains(.inputOnly) {
      schema["writeOnly"] = true
    }
    return described(schema, field)
  }

  /// The schema of one value of a field (an element of a repeated field, a map value).
  private static func valueSchema(_ field: FieldDescriptor) -> JSON {
    switch field.type {
    case .double: ["type": "number", "format": "double"]
    case .float: ["type": "number", "format": "float"]
    case .int64, .sint64, .sfixed64: ["type": "string", "format": "int64"]
    case .uint64, .fixed64: ["type": "string", "format": "uint64"]
    case .int32, .sint32, .sfixed32: ["type": "integer", "format": "int32"]
    case .uint32, .fixed32: ["type": "integer", "format": "uint32"]
    case .bool: ["type": "boolean"]
    case .string: ["type": "string"]
    case .bytes: ["type": "string", "format": "byte"]
    case .enum: ["$ref": .string("#/components/schemas/\(field.enumType.fullName)")]
    case .message, .group: wellKnownSchema(field.messageType) ?? ref(field.messageType)
    }
  }

  private static func ref(_ message: Descriptor) -> JSON {
    ["$ref": .string("#/components/schemas/\(message.fullName)")]
  }

  /// The proto3 JSON form of a well-known type whose JSON form is a scalar (so it can also be a
  /// query parameter).
  private static func scalarWellKnownSchema(_ message: Descriptor) -> JSON? {
    switch message.fullName {
    case "google.protobuf.Timestamp": ["type": "string", "format": "date-time"]
    case "google.protobuf.Duration": ["type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"]
    case "google.protobuf.FieldMask":
      ["type": "string", "description": "Comma-separated field paths in lowerCamelCase."]
    case "google.protobuf.DoubleValue": ["type": "number", "format": "double"]
    case "google.protobuf.FloatValue": ["type": "number", "format": "float"]
    case "google.protobuf.Int64Value": ["type": "string", "format": "int64"]
    case "google.protobuf.UInt64Value": ["type": "string", "format": "uint64"]
    case "google.protobuf.Int32Value": ["type": "integer", "format": "int32"]
    case "google.protobuf.UInt32Value": ["type": "integer", "format": "uint32"]
    case "google.protobuf.BoolValue": ["type": "boolean"]
    case "google.protobuf.StringValue": ["type": "string"]
    case "google.protobuf.BytesValue": ["type": "string", "format": "byte"]
    default: nil
    }
  }

  /// The proto3 JSON form of a well-known type, or nil for any other message.
  private static func wellKnownSchema(_ message: Descriptor) -> JSON? {
    if let schema = scalarWellKnownSchema(message) {
      return schema
    }
    switch message.fullName {
    case "google.protobuf.Struct", "google.protobuf.Empty": return ["type": "object"]
    case "google.protobuf.Value": return [:]
    case "google.protobuf.ListValue": return ["type": "array"]
    case "google.protobuf.Any":
      return ["type": "object", "properties": ["@type": ["type": "string"]], "required": ["@type"]]
    default: return isWellKnownType(message) ? ["type": "object"] : nil
    }
  }

  // MARK: - Helpers

  private static func isHttpBody(_ field: FieldDescriptor) -> Bool {
    field.type == .message && field.messageType.fullName == "google.api.HttpBody"
  }

  /// `(google.api.field_behavior) = OUTPUT_ONLY`, or "Output only" in the field's comment.
  private static func isOutputOnly(_ field: FieldDescriptor) -> Bool {
    APIModel.fieldBehavior(field).contains(.outputOnly) || field.leadingComment.contains("Output only")
  }

  /// `json` with the element's leading comment as its description, if it has one.
  private static func described(_ json: JSON, _ element: some ProvidesSourceCodeLocation) -> JSON {
    let comment = element.leadingComment
    guard !comment.isEmpty else { return json }
    var json = json
    json["description"] = .string(comment)
    return json
  }
}
