import SwiftProtobuf
import SwiftProtobufPluginLibrary

/// The option extensions the plugin reads (generated into Generated/ from the vendored protos).
let optionExtensions = SimpleExtensionMap(
  Google_Api_Annotations_Extensions, Google_Api_FieldBehavior_Extensions, Mart_Api_V1_Access_Extensions,
  Mart_Api_V1_EventTopic_Extensions)

/// The Mart services the gateway routes to, by the second component of their package
/// (`mart.<name>.v1`): the cases of `MartService` in MartRuntime, which this plugin cannot import.
let martServiceNames: Set<String> = ["user", "product", "inventory", "order", "payment", "notification"]

/// A variable of a path template, e.g. `{user_id}` or `{product.id}`.
struct PathVariable {
  /// As written in the template: `user_id`, `product.id`.
  var fieldPath: String
  /// The fields from the request message down to the scalar it binds.
  var fields: [FieldDescriptor]
}

/// One HTTP binding of an RPC: its `google.api.http` rule or one of the `additional_bindings`.
struct HTTPBinding {
  var httpMethod: String
  /// As written in the annotation, e.g. `/v1/users/{user_id}:setRoles`.
  var pathTemplate: String
  /// The OpenAPI path: every `{var=pattern}` becomes `{var}`; a `:verb` stays literal.
  var openAPIPath: String
  var pathVariables: [PathVariable]
  /// `""`, `"*"` or a top-level field of the request (then `bodyField`).
  var body: String
  var bodyField: FieldDescriptor?
  /// `""` or a top-level field of the response (then `responseBodyField`).
  var responseBody: String
  var responseBodyField: FieldDescriptor?
  /// `Service_Method` (`Service_Method_2`, `_3`… for additional bindings).
  var operationID: String
}

/// An RPC of a Mart service, routed or not.
struct RPC {
  var method: MethodDescriptor
  var access: Mart_Api_V1_Access
  /// The services whose service tokens it accepts (its `mart.api.v1.callers`), as `MartService`
  /// raw values, e.g. `order`; empty unless its access admits services.
  var callers: [String]
  /// The `MartService` case that serves it, e.g. `user`.
  var upstream: String
  var bindings: [HTTPBinding]

  /// `<package>.<Service>/<Method>`, as GRPCCore's `MethodDescriptor.fullyQualifiedMethod`.
  var fullyQualifiedMethod: String { "\(method.service.fullName)/\(method.name)" }
}

/// One HTTP binding with its RPC.
struct Route {
  var rpc: RPC
  var binding: HTTPBinding
}

/// Everything the emitters need, read and checked from the descriptors.
struct APIModel {
  /// The services of every `mart.*` package, in file order (by file name) then declaration order.
  var services: [ServiceDescriptor]
  /// Every RPC of those services, in the same order.
  var rpcs: [RPC]
  /// `mart.api.v1.Access`, for the value names.
  var accessEnum: EnumDescriptor
  /// `google.rpc.Status`, the error body of every operation.
  var status: Descriptor
  /// Messages and enums reachable from the routed request messages (the gateway's schemas),
  /// well-known types excluded, sorted by full name.
  var gatewayMessages: [Descriptor]
  var gatewayEnums: [EnumDescriptor]
  /// Messages and enums reachable from routed requests, responses and `google.rpc.Status` (the
  /// OpenAPI components), well-known types excluded, sorted by full name.
  var schemaMessages: [Descriptor]
  var schemaEnums: [EnumDescriptor]

  /// Every HTTP binding, in RPC order then binding order.
  var routes: [Route] {
    rpcs.flatMap { rpc in rpc.bindings.map { Route(rpc: rpc, binding: $0) } }
  }

  init(files: [FileDescriptor]) throws {
    var problems: [String] = []
    let allFiles = Self.transitiveClosure(files)

    guard let accessEnum = allFiles.lazy.flatMap(\.enums).first(where: { $0.fullName == "mart.api.v1.Access" }) else {
      throw GenerationError(["enum mart.api.v1.Access not found: mart/api/v1/access.proto must be an input"])
    }
    guard let status = allFiles.lazy.flatMap(\.messages).first(where: { $0.fullName == "google.rpc.Status" }) else {
      throw GenerationError(["message google.rpc.Status not found: google/rpc/status.proto must be an input"])
    }
    self.accessEnum = accessEnum
    self.status = status

    let martFiles = files.filter { $0.package.hasPrefix("mart.") && !$0.services.isEmpty }.sorted { $0.name < $1.name }
    services = martFiles.flatMap(\.services)
    var rpcs: [RPC] = []
    for service in services {
      let components = service.file.package.split(separator: ".").map(String.init)
      guard components.count == 3, martServiceNames.contains(components[1]) else {
        problems.append(
          "service \(service.fullName): package \(service.file.package) is not a Mart service package "
            + "(mart.<\(martServiceNames.sorted().joined(separator: "|"))>.v<N>)")
        continue
      }
      for method in service.methods {
        do {
          rpcs.append(try Self.rpc(method, upstream: components[1]))
        } catch let error as GenerationError {
          problems += error.problems
        }
      }
    }
    self.rpcs = rpcs

    // Operation ids and (method, path) pairs must be unique across the whole API.
    var operationIDs: [String: String] = [:]
    var paths: [String: String] = [:]
    for route in rpcs.flatMap({ rpc in rpc.bindings.map { Route(rpc: rpc, binding: $0) } }) {
      let name = route.rpc.method.fullName
      if let other = operationIDs.updateValue(name, forKey: route.binding.operationID) {
        problems.append("\(name) and \(other) have the same operation id \(route.binding.operationID)")
      }
      let key = "\(route.binding.httpMethod) \(route.binding.openAPIPath)"
      if let other = paths.updateValue(name, forKey: key) {
        problems.append("\(name) and \(other) are both bound to \(key)")
      }
    }
    if !problems.isEmpty {
      throw GenerationError(problems)
    }

    let routed = rpcs.filter { !$0.bindings.isEmpty }.map(\.method)
    (gatewayMessages, gatewayEnums) = Self.reachable(from: routed.map(\.inputType))
    (schemaMessages, schemaEnums) = Self.reachable(
      from: routed.map(\.inputType) + routed.map(\.outputType) + [status])
  }

  /// The name of an access level as written in the .proto, e.g. `ACCESS_PUBLIC`.
  func accessName(_ access: Mart_Api_V1_Access) -> String {
    accessValue(access)?.name ?? "ACCESS_\(access.rawValue)"
  }

  func accessValue(_ access: Mart_Api_V1_Access) -> EnumValueDescriptor? {
    accessEnum.values.first { $0.number == Int32(access.rawValue) }
  }

  // MARK: - Reading one RPC

  private static func rpc(_ method: MethodDescriptor, upstream: String) throws -> RPC {
    let name = method.fullName
    var problems: [String] = []
    let options = try decodedOptions(method.options)

    let access = options.Mart_Api_V1_access
    if !options.hasMart_Api_V1_access {
      problems.append("rpc \(name) has no (mart.api.v1.access) option")
    } else {
      switch access {
      case .unspecified: problems.append("rpc \(name) has access ACCESS_UNSPECIFIED")
      case .UNRECOGNIZED(let value): problems.append("rpc \(name) has an unknown access level \(value)")
      default: break
      }
    }

    // Least privilege between services: an RPC open to services names the ones that may call it,
    // and only those.
    let callers = options.Mart_Api_V1_callers
    let admitsServices = [.internal, .adminOrInternal, .userOrInternal].contains(access)
    if admitsServices && callers.isEmpty {
      problems.append("rpc \(name) is open to services but has no (mart.api.v1.callers) option naming them")
    }
    if !admitsServices && !callers.isEmpty {
      problems.append("rpc \(name) names (mart.api.v1.callers) but its access does not admit services")
    }
    var callerNames: [String] = []
    for caller in callers {
      switch caller {
      case .user: callerNames.append("user")
      case .product: callerNames.append("product")
      case .inventory: callerNames.append("inventory")
      case .order: callerNames.append("order")
      case .payment: callerNames.append("payment")
      case .notification: callerNames.append("notification")
      case .unspecified, .UNRECOGNIZED: problems.append("rpc \(name) names an unknown caller \(caller)")
      }
    }
    if callerNames.contains(upstream) {
      problems.append("rpc \(name) names its own service as a caller")
    }

    var bindings: [HTTPBinding] = []
    if options.hasGoogle_Api_http {
      // Server streaming is served as Server-Sent Events or NDJSON; a client stream has no
      // HTTP/1.1 form the gateway offers.
      if method.clientStreaming {
        problems.append(
          "rpc \(name) is client streaming and has a google.api.http rule (only unary and server-streaming RPCs can be routed)"
        )
      }
      let rule = options.Google_Api_http
      let rules = [rule] + rule.additionalBindings
      for (index, rule) in rules.enumerated() {
        if index > 0, !rule.additionalBindings.isEmpty {
          problems.append("rpc \(name): an additional binding has additional_bindings of its own")
        }
        let operationID = "\(method.service.name)_\(method.name)" + (index == 0 ? "" : "_\(index + 1)")
        do {
          bindings.append(try binding(rule, of: method, operationID: operationID))
        } catch let error as GenerationError {
          problems += error.problems
        }
      }
    }

    if !problems.isEmpty {
      throw GenerationError(problems)
    }
    return RPC(
      method: method, access: access, callers: Array(Set(callerNames)).sorted(), upstream: upstream,
      bindings: bindings)
  }

  private static func binding(
    _ rule: Google_Api_HttpRule, of method: MethodDescriptor, operationID: String
  ) throws -> HTTPBinding {
    let name = method.fullName
    let httpMethod: String
    let template: String
    switch rule.pattern {
    case .get(let path): (httpMethod, template) = ("GET", path)
    case .put(let path): (httpMethod, template) = ("PUT", path)
    case .post(let path): (httpMethod, template) = ("POST", path)
    case .delete(let path): (httpMethod, template) = ("DELETE", path)
    case .patch(let path): (httpMethod, template) = ("PATCH", path)
    case .custom(let custom): (httpMethod, template) = (custom.kind.uppercased(), custom.path)
    case nil: throw GenerationError(["rpc \(name): a google.api.http rule has no method and path"])
    }
    var problems: [String] = []
    if !["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"].contains(httpMethod) {
      problems.append("rpc \(name): HTTP method '\(httpMethod)' has no OpenAPI operation")
    }

    var openAPIPath = template
    var variables: [PathVariable] = []
    do {
      let parsed = try parsePathTemplate(template)
      openAPIPath = parsed.openAPIPath
      for fieldPath in parsed.variables {
        do {
          variables.append(PathVariable(fieldPath: fieldPath, fields: try pathField(fieldPath, in: method.inputType)))
        } catch let error as GenerationError {
          problems += error.problems.map { "rpc \(name): path \(template): \($0)" }
        }
      }
    } catch let error as GenerationError {
      problems += error.problems.map { "rpc \(name): path \(template): \($0)" }
    }

    var bodyField: FieldDescriptor?
    if rule.body != "" && rule.body != "*" {
      bodyField = method.inputType.fields.first { $0.name == rule.body }
      if bodyField == nil {
        problems.append("rpc \(name): body '\(rule.body)' is not a field of \(method.inputType.fullName)")
      }
    }
    var responseBodyField: FieldDescriptor?
    if rule.responseBody != "" {
      responseBodyField = method.outputType.fields.first { $0.name == rule.responseBody }
      if responseBodyField == nil {
        problems.append(
          "rpc \(name): response_body '\(rule.responseBody)' is not a field of \(method.outputType.fullName)")
      }
    }
    if !problems.isEmpty {
      throw GenerationError(problems)
    }
    return HTTPBinding(
      httpMethod: httpMethod, pathTemplate: template, openAPIPath: openAPIPath, pathVariables: variables,
      body: rule.body, bodyField: bodyField, responseBody: rule.responseBody, responseBodyField: responseBodyField,
      operationID: operationID)
  }

  /// Parses a `google.api.http` path template (`/v1/{name=shelves/*}/books/{book_id}:verb`) into the
  /// OpenAPI path (`/v1/{name}/books/{book_id}:verb`) and its variables' field paths.
  static func parsePathTemplate(_ template: String) throws -> (openAPIPath: String, variables: [String]) {
    guard template.hasPrefix("/") else {
      throw GenerationError(["a path template must start with '/'"])
    }
    var path = ""
    var variables: [String] = []
    var rest = Substring(template)
    while let first = rest.first {
      switch first {
      case "{":
        guard let close = rest.firstIndex(of: "}") else {
          throw GenerationError(["unclosed '{'"])
        }
        let inner = rest[rest.index(after: rest.startIndex)..<close]
        if inner.contains("{") {
          throw GenerationError(["nested '{'"])
        }
        let fieldPath = String(inner.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0])
        let isIdentifier: (Substring) -> Bool = { segment in
          guard let head = segment.first, head.isASCII, head.isLetter || head == "_" else { return false }
          return segment.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
        }
        guard fieldPath.split(separator: ".", omittingEmptySubsequences: false).allSatisfy(isIdentifier) else {
          throw GenerationError(["invalid variable '{\(inner)}'"])
        }
        if variables.contains(fieldPath) {
          throw GenerationError(["variable '\(fieldPath)' appears twice"])
        }
        variables.append(fieldPath)
        path += "{\(fieldPath)}"
        rest = rest[rest.index(after: close)...]
      case "}":
        throw GenerationError(["unmatched '}'"])
      default:
        path.append(first)
        rest = rest.dropFirst()
      }
    }
    let literal = path.split(separator: "/").map { $0.split(separator: ":").first ?? $0 }
    if literal.contains(where: { $0 == "*" || $0 == "**" }) {
      throw GenerationError(["a wildcard outside a variable is not supported"])
    }
    return (path, variables)
  }

  /// The fields a path variable's field path walks: singular message fields down to a singular
  /// scalar or enum field.
  static func pathField(_ fieldPath: String, in message: Descriptor) throws -> [FieldDescriptor] {
    var current = message
    var fields: [FieldDescriptor] = []
    let names = fieldPath.split(separator: ".").map(String.init)
    for (index, name) in names.enumerated() {
      guard let field = current.fields.first(where: { $0.name == name }) else {
        throw GenerationError(["variable '\(fieldPath)': \(current.fullName) has no field '\(name)'"])
      }
      fields.append(field)
      let isMessage = field.type == .message || field.type == .group
      if index < names.count - 1 {
        guard isMessage, !field.isRepeated, !isWellKnownType(field.messageType) else {
          throw GenerationError(["variable '\(fieldPath)': '\(name)' is not a singular message field"])
        }
        current = field.messageType
      } else if isMessage || field.isRepeated {
        throw GenerationError(["variable '\(fieldPath)' does not name a singular scalar field"])
      }
    }
    return fields
  }

  // MARK: - Options

  /// Re-decodes descriptor options with the extensions the plugin knows, so that
  /// `google.api.http`, `mart.api.v1.access`, `google.api.field_behavior` and
  /// `mart.api.v1.event_topic` can be read. The
  /// plugin library decodes the request without them: the extensions are kept as unknown fields,
  /// which survive re-serialization.
  static func decodedOptions<Options: SwiftProtobuf.Message & ExtensibleMessage>(_ options: Options) throws -> Options {
    try Options(serializedBytes: options.serializedBytes() as [UInt8], extensions: optionExtensions)
  }

  /// The `(google.api.field_behavior)` values of a field.
  static func fieldBehavior(_ field: FieldDescriptor) -> [Google_Api_FieldBehavior] {
    (try? decodedOptions(field.options))?.Google_Api_fieldBehavior ?? []
  }

  // MARK: - Descriptor graph

  static func transitiveClosure(_ files: [FileDescriptor]) -> [FileDescriptor] {
    var seen: Set<String> = []
    var result: [FileDescriptor] = []
    var stack = files
    while let file = stack.popLast() {
      guard seen.insert(file.name).inserted else { continue }
      result.append(file)
      stack += file.dependencies
    }
    return result.sorted { $0.name < $1.name }
  }

  /// The messages and enums reachable from `roots` through fields (map values included), without
  /// well-known types, sorted by full name.
  static func reachable(from roots: [Descriptor]) -> ([Descriptor], [EnumDescriptor]) {
    var messages: [String: Descriptor] = [:]
    var enums: [String: EnumDescriptor] = [:]
    var queue = roots
    while let message = queue.popLast() {
      guard !isWellKnownType(message), messages[message.fullName] == nil else { continue }
      messages[message.fullName] = message
      for field in message.fields {
        let value = field.isMap ? (field.messageType.mapKeyAndValue?.value ?? field) : field
        switch value.type {
        case .message, .group: queue.append(value.messageType)
        case .enum: enums[value.enumType.fullName] = value.enumType
        default: break
        }
      }
    }
    return (
      messages.sorted { $0.key < $1.key }.map(\.value),
      enums.sorted { $0.key < $1.key }.map(\.value)
    )
  }
}

/// `google.protobuf.*`: never expanded, they have their own JSON forms.
func isWellKnownType(_ message: Descriptor) -> Bool {
  message.fullName.hasPrefix("google.protobuf.")
}

extension ProvidesSourceCodeLocation {
  /// The leading comment, without the `//` markers' following space, blank lines around it removed.
  var leadingComment: String {
    guard let comments = sourceCodeInfoLocation?.leadingComments else { return "" }
    var lines = comments.split(separator: "\n", omittingEmptySubsequences: false).map { line in
      var line = line.hasPrefix(" ") ? line.dropFirst() : line[...]
      while line.last?.isWhitespace == true { line = line.dropLast() }
      return String(line)
    }
    while lines.first?.isEmpty == true { lines.removeFirst() }
    while lines.last?.isEmpty == true { lines.removeLast() }
    return lines.joined(separator: "\n")
  }
}
