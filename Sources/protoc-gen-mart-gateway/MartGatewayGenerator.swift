import Foundation
import SwiftProtobuf
import SwiftProtobufPluginLibrary

/// `protoc-gen-mart-gateway`: the protoc plugin that turns the `google.api.http` and
/// `mart.api.v1.access` method options of the Mart services, and the events.proto files with their
/// `mart.api.v1.event_topic` file options, into
///
/// - `Sources/Gateway/Generated/GatewayRoutes.swift`: the gateway's route table and the JSON
///   schemas of the messages it accepts;
/// - `Sources/MartProto/MartAccessPolicies.swift`: the access level of every Mart RPC;
/// - `Sources/Gateway/Generated/openapi.json`: the OpenAPI 3.1 document of the HTTP API;
/// - `Sources/MartEvents/Generated/MartDomainEvents.swift`: the event topics, every domain
///   event with its `DomainEvent` conformance and topic, and `DomainEvents.all`.
///
/// All four come from one invocation over every proto file (paths are relative to the output
/// directory, which `scripts/gen-proto.sh` points at a staging copy of the repository layout).
/// Files with services or events in a `mart.*` package are read; the others are only looked up
/// (message types, `google.rpc.Status`, the `mart.api.v1.Access` enum). Any inconsistency (an RPC
/// without an access level, a streaming RPC with an HTTP rule, a rule naming a missing field, an
/// events.proto without a topic, a message in one without `EventMetadata metadata = 1`) fails
/// generation with every problem listed.
@main
struct MartGatewayGenerator: CodeGenerator {
  static let routesFile = "Sources/Gateway/Generated/GatewayRoutes.swift"
  static let accessPoliciesFile = "Sources/MartProto/MartAccessPolicies.swift"
  static let openAPIFile = "Sources/Gateway/Generated/openapi.json"
  static let domainEventsFile = "Sources/MartEvents/Generated/MartDomainEvents.swift"

  var supportedFeatures: [Google_Protobuf_Compiler_CodeGeneratorResponse.Feature] { [.proto3Optional] }

  /// As protoc runs it, a plugin; with `--check-breaking BASELINE CURRENT`, the breaking-change
  /// check over two descriptor sets (`BreakingChangeCheck`), which reads the same options.
  static func main() {
    let arguments = CommandLine.arguments
    if arguments.count == 4, arguments[1] == "--check-breaking" {
      exit(BreakingChangeCheck.run(baselinePath: arguments[2], currentPath: arguments[3]))
    }
    Self().main(nil)
  }

  var version: String? { "1.0.0" }

  func generate(
    files: [FileDescriptor], parameter: any CodeGeneratorParameter, protoCompilerContext: any ProtoCompilerContext,
    generatorOutputs: any GeneratorOutputs
  ) throws {
    if let (key, _) = parameter.parsedPairs.first {
      throw GenerationError(["unknown option '\(key)' (protoc-gen-mart-gateway takes none)"])
    }
    // Both models are read before failing, so that one run lists every problem in proto/.
    var problems: [String] = []
    let api = try Self.reading(&problems) { try APIModel(files: files) }
    let events = try Self.reading(&problems) { try DomainEventModel(files: files) }
    guard let api, let events else {
      throw GenerationError(problems)
    }
    try generatorOutputs.add(fileName: Self.routesFile, contents: SwiftEmitter.gatewayRoutes(api))
    try generatorOutputs.add(fileName: Self.accessPoliciesFile, contents: SwiftEmitter.accessPolicies(api))
    try generatorOutputs.add(fileName: Self.openAPIFile, contents: OpenAPIEmitter.document(api))
    try generatorOutputs.add(fileName: Self.domainEventsFile, contents: SwiftEmitter.domainEvents(events))
  }

  /// The model `read` returns, or nil with its problems appended to `problems`.
  private static func reading<Model>(_ problems: inout [String], _ read: () throws -> Model) throws -> Model? {
    do {
      return try read()
    } catch let error as GenerationError {
      problems += error.problems
      return nil
    }
  }
}

/// Every problem found in the protos, reported together in the CodeGeneratorResponse.
struct GenerationError: Error, CustomStringConvertible {
  var problems: [String]

  init(_ problems: [String]) {
    self.problems = problems
  }

  var description: String {
    if problems.count == 1 { return problems[0] }
    return "\(problems.count) problems:" + problems.map { "\n  - \($0)" }.joined()
  }
}
