import GRPCCore
import GRPCProtobuf
import MartCore
import MartProto
import SwiftProtobuf
import Synchronization

// The contract between the generated route table (Generated/GatewayRoutes.swift, written by
// protoc-gen-mart-gateway from the google.api.http annotations in proto/) and the gateway's
// hand-written runtime. Nothing here knows any particular RPC.

/// One HTTP binding of an RPC: a `google.api.http` rule or one of its `additional_bindings`.
public struct GatewayRoute: Sendable {
  /// The HTTP method, upper case: GET, POST, PUT, PATCH, DELETE, or a custom verb's method.
  public var httpMethod: String
  /// The path template exactly as written in the annotation, e.g. `/v1/users/{user_id}:setRoles`.
  public var pathTemplate: String
  /// `""` (no body: every field not in the path comes from the query), `"*"` (the whole request
  /// message is the body), or a top-level field name of the request (that field is the body).
  public var body: String
  /// `""` (the whole response message is the body) or a top-level field name of the response.
  public var responseBody: String
  /// Who may call it (from the `mart.api.v1.access` method option).
  public var access: Mart_Api_V1_Access
  /// The upstream service that serves it.
  public var upstream: MartService
  /// The full proto name of the request message, a key of `GatewayRouteTable.messages`.
  public var requestMessage: String
  /// The full proto name of the response message.
  public var responseMessage: String
  /// `Service_Method`, unique; also the OpenAPI operationId and the metrics label.
  public var operationID: String
  /// How to call the RPC, with its request and response types.
  public var rpc: any GatewayRPC

  public init(
    httpMethod: String, pathTemplate: String, body: String, responseBody: String, access: Mart_Api_V1_Access,
    upstream: MartService, requestMessage: String, responseMessage: String, operationID: String,
    rpc: any GatewayRPC
  ) {
    self.httpMethod = httpMethod
    self.pathTemplate = pathTemplate
    self.body = body
    self.responseBody = responseBody
    self.access = access
    self.upstream = upstream
    self.requestMessage = requestMessage
    self.responseMessage = responseMessage
    self.operationID = operationID
    self.rpc = rpc
  }
}

/// An RPC whose request and response types are known statically, called through a type-erased
/// route. The gateway builds the request from proto3 JSON and reads the responses back as proto3
/// JSON, so that the runtime needs no dynamic messages.
public protocol GatewayRPC: Sendable {
  /// The RPC's gRPC method descriptor (`mart.user.v1.UserService/Register`).
  var descriptor: MethodDescriptor { get }

  /// Whether the RPC answers with a stream of messages (served as Server-Sent Events or NDJSON).
  var isServerStreaming: Bool { get }

  /// Builds the request from two parts of proto3 JSON, the body's (nil: none) and that of the path
  /// and query parameters, calls the method on `client`, and hands each response to `each` as
  /// proto3 JSON (lowerCamelCase names): once for a unary RPC, once per message for a stream.
  /// Each part is decoded on its own and the two messages are merged (protobuf merge: the
  /// parameters win), so that the body is decoded exactly as the client wrote it. A request that
  /// cannot be decoded throws `GatewayRequestDecodingError`.
  func call(
    bodyJSON: [UInt8]?, parametersJSON: [UInt8], client: GRPCClient<some ClientTransport>, metadata: Metadata,
    options: CallOptions, each: @escaping @Sendable ([UInt8]) async throws -> Void
  ) async throws
}

extension GatewayRPC {
  /// The one response of a unary RPC, as proto3 JSON.
  public func call(
    bodyJSON: [UInt8]?, parametersJSON: [UInt8], client: GRPCClient<some ClientTransport>, metadata: Metadata,
    options: CallOptions
  ) async throws -> [UInt8] {
    let response = Mutex<[UInt8]>([])
    try await call(
      bodyJSON: bodyJSON, parametersJSON: parametersJSON, client: client, metadata: metadata, options: options
    ) { json in response.withLock { $0 = json } }
    return response.withLock { $0 }
  }

  /// The request message from the body's JSON and the parameters' JSON (see `call`).
  static func request<Request: SwiftProtobuf.Message>(
    _: Request.Type, bodyJSON: [UInt8]?, parametersJSON: [UInt8]
  ) throws(GatewayRequestDecodingError) -> Request {
    var decoding = JSONDecodingOptions()
    decoding.ignoreUnknownFields = false
    do {
      var request = try bodyJSON.map { try Request(jsonUTF8Bytes: $0, options: decoding) } ?? Request()
      let parameters = try Request(jsonUTF8Bytes: parametersJSON, options: decoding)
      try request.merge(serializedBytes: parameters.serializedBytes() as [UInt8])
      return request
    } catch {
      throw GatewayRequestDecodingError(description: String(describing: error))
    }
  }
}

/// The request JSON did not decode as the request message: the client's mistake, not the gateway's.
public struct GatewayRequestDecodingError: Error, CustomStringConvertible {
  public var description: String
}

/// `GatewayRPC` for a generated request/response pair: a unary RPC, or a server-streaming one.
public struct ProtobufGatewayRPC<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>:
  GatewayRPC
{
  public let descriptor: MethodDescriptor
  public let isServerStreaming: Bool

  public init(service: String, method: String, serverStreaming: Bool = false) {
    self.descriptor = MethodDescriptor(fullyQualifiedService: service, method: method)
    self.isServerStreaming = serverStreaming
  }

  public func call(
    bodyJSON: [UInt8]?, parametersJSON: [UInt8], client: GRPCClient<some ClientTransport>, metadata: Metadata,
    options: CallOptions, each: @escaping @Sendable ([UInt8]) async throws -> Void
  ) async throws {
    let request = ClientRequest(
      message: try Self.request(Request.self, bodyJSON: bodyJSON, parametersJSON: parametersJSON), metadata: metadata)
    let serializer = ProtobufSerializer<Request>()
    let deserializer = ProtobufDeserializer<Response>()
    if isServerStreaming {
      try await client.serverStreaming(
        request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer, options: options
      ) { response in
        for try await message in response.messages {
          try await each(try message.jsonUTF8Bytes())
        }
      }
    } else {
      let response = try await client.unary(
        request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer, options: options
      ) { response in
        try response.message
      }
      try await each(try response.jsonUTF8Bytes())
    }
  }
}

/// The shape of a message's proto3 JSON form, enough to validate a body and to place path and
/// query parameters, and to name the offending field in an error.
public struct MessageSchema: Sendable {
  /// Full proto name, e.g. `mart.user.v1.RegisterRequest`.
  public var fullName: String
  public var fields: [FieldSchema]

  public init(fullName: String, fields: [FieldSchema]) {
    self.fullName = fullName
    self.fields = fields
  }
}

public struct FieldSchema: Sendable {
  public enum Kind: Sendable, Equatable {
    case string, bytes, bool
    case int32, int64, uint32, uint64
    case float, double
    /// Full proto name of the enum, a key of `GatewayRouteTable.enums`.
    case enumeration(String)
    /// Full proto name of the message: a key of `GatewayRouteTable.messages`, or a well-known
    /// type (`google.protobuf.Timestamp`, `.Duration`, `.FieldMask`, wrappers, `.Struct`, `.Value`…).
    case message(String)
  }

  /// As written in the .proto, e.g. `page_size`.
  public var protoName: String
  /// The proto3 JSON name, e.g. `pageSize`.
  public var jsonName: String
  public var kind: Kind
  public var isRepeated: Bool
  /// A map field; its values have `kind` and its keys `mapKeyKind` (JSON object keys).
  public var isMap: Bool
  public var mapKeyKind: Kind?
  /// Marked `(google.api.field_behavior) = REQUIRED` in the .proto.
  public var isRequired: Bool

  public init(
    protoName: String, jsonName: String, kind: Kind, isRepeated: Bool = false, isMap: Bool = false,
    mapKeyKind: Kind? = nil, isRequired: Bool = false
  ) {
    self.protoName = protoName
    self.jsonName = jsonName
    self.kind = kind
    self.isRepeated = isRepeated
    self.isMap = isMap
    self.mapKeyKind = mapKeyKind
    self.isRequired = isRequired
  }
}

public struct EnumSchema: Sendable {
  public var fullName: String
  /// Value names in declaration order, e.g. `ROLE_UNSPECIFIED`, `CUSTOMER`, `ADMIN`.
  public var values: [String]
  /// The numbers of `values`, in the same order.
  public var numbers: [Int32]

  public init(fullName: String, values: [String], numbers: [Int32]) {
    self.fullName = fullName
    self.values = values
    self.numbers = numbers
  }
}

/// The generated tables live in an extension of this namespace (Generated/GatewayRoutes.swift).
public enum GatewayRouteTable {}
