import GRPCCore
import HTTPTypes
import Hummingbird
import Logging
import MartCore
import MartProto

/// The last step: the body (at most `maxBodyBytes`, JSON), transcoded with the path and query
/// into the route's request message, the gRPC call with the route's deadline and the call's
/// metadata (token, request id, client address; the trace is added by the clients'
/// `RequestContextClientInterceptor`), and the answer as proto3 JSON. It answers every request
/// that reaches it and never calls `next`.
struct TranscodingMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let upstreams: Upstreams
  /// Signs the gateway's word for the client address (`ForwardedClient`); without a gateway key
  /// the services see the gateway's own address as the client's.
  let gatewayTokens: ServiceTokenIssuer?
  let maxBodyBytes: Int
  let streamHeartbeat: Duration
  let logger: Logger

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let matched = try context.matchedRoute()
    let compiled = matched.compiled
    let route = compiled.route
    let body = try await Self.readBody(request, limit: maxBodyBytes)
    let transcoded = try compiled.transcoder.transcode(
      bindings: matched.bindings, query: request.uri.query, body: body, contentType: request.headers[.contentType],
      headers: { name in HTTPField.Name(name).flatMap { request.headers[$0] } },
      clientAddress: context.clientAddress?.description)

    var metadata = Metadata()
    if let authorization = request.headers[.authorization] {
      metadata.addString(authorization, forKey: "authorization")
    }
    metadata.addString(context.requestID, forKey: "x-request-id")
    if let address = context.clientAddress, let gatewayTokens {
      do {
        metadata.addString(try await gatewayTokens.token(for: route.upstream), forKey: ForwardedClient.tokenKey)
      } catch {
        throw GatewayError(.internalServerError, code: .internal, message: "cannot sign the gateway token")
      }
      metadata.addString(address.description, forKey: ForwardedClient.addressKey)
    }
    var options = CallOptions.defaults
    // A stream lasts as long as what it watches; a unary call has its route's deadline.
    options.timeout = route.rpc.isServerStreaming ? nil : compiled.deadline
    // Fail fast when the service cannot be reached (503), rather than waiting out the deadline.
    options.waitForReady = false

    guard upstreams.services.contains(route.upstream) else {
      throw GatewayError(
        .serviceUnavailable, code: .unavailable, message: "the \(route.upstream.rawValue) service is not configured")
    }
    let upstreams = self.upstreams
    let callMetadata = metadata
    let callOptions = options
    let call: StreamingResponse.Call = { each in
      _ = try await upstreams.withConnection(to: route.upstream) { client in
        try await route.rpc.call(
          bodyJSON: transcoded.bodyJSON, parametersJSON: transcoded.parametersJSON, client: client,
          metadata: callMetadata, options: callOptions, each: each)
      }
    }
    let mapError = { @Sendable (error: any Error) in mapped(error, route: route, requestID: context.requestID) }
    if route.rpc.isServerStreaming {
      return try await StreamingResponse.make(
        call, format: .negotiated(accept: request.headers[.accept]), heartbeat: streamHeartbeat,
        mapError: mapError)
    }
    let json: [UInt8]
    do {
      json =
        try await upstreams.withConnection(to: route.upstream) { client in
          try await route.rpc.call(
            bodyJSON: transcoded.bodyJSON, parametersJSON: transcoded.parametersJSON, client: client,
            metadata: callMetadata, options: callOptions)
        } ?? []
    } catch {
      throw mapError(error)
    }

    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    let payload = compiled.responseField.map { Self.extract(field: $0, from: json) } ?? json
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: payload)))
  }

  /// What a failed call answers: the client's undecodable request is 400, an upstream status is
  /// mapped (and logged when it is a failure on our side), anything else is INTERNAL.
  private func mapped(_ error: any Error, route: GatewayRoute, requestID: String) -> GatewayError {
    switch error {
    case let error as GatewayError:
      return error
    case let error as GatewayRequestDecodingError:
      return GatewayError.badRequest("the request does not match \(route.requestMessage): \(error.description)")
    case let error as RPCError:
      let mapped = GatewayError.upstream(error, service: route.upstream.rawValue, requestID: requestID)
      // An UNAVAILABLE without google.rpc details is not a service's answer (a shed call, a
      // database outage: those say why) but the connection's: worth a line, with its cause.
      let fromTheConnection =
        error.code == .unavailable
        && error.metadata[binaryValues: "grpc-status-details-bin"].first(where: { _ in true }) == nil
      if mapped.code == .internal || fromTheConnection {
        logger.warning(
          "upstream call failed",
          metadata: [
            "operation": .string(route.operationID), "code": .string("\(error.code)"), "error": .string(error.message),
            "cause": .string(error.cause.map { "\($0)" } ?? "none"),
          ])
      }
      return mapped
    case is CancellationError:
      // The client went away (a watcher that stopped watching, a closed connection): its
      // request was cancelled, which is nothing to alert on; nobody reads the answer.
      // Counted as 499 (grpc-gateway's CANCELLED), not as a 5xx that the error-ratio alert sees.
      logger.debug("request cancelled: the client went away", metadata: ["operation": .string(route.operationID)])
      return GatewayError(
        GatewayError.httpStatus(for: .cancelled), code: .cancelled, message: "the request was cancelled")
    default:
      logger.error(
        "gateway call failed", metadata: ["operation": .string(route.operationID), "error": .string("\(error)")])
      return GatewayError.internalError(requestID: requestID)
    }
  }

  /// The body, up to `limit` bytes (413 beyond, without reading further).
  static func readBody(_ request: Request, limit: Int) async throws(GatewayError) -> [UInt8] {
    if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
      throw .contentTooLarge(limit: limit)
    }
    var bytes: [UInt8] = []
    do {
      for try await buffer in request.body {
        guard bytes.count + buffer.readableBytes <= limit else { throw GatewayError.contentTooLarge(limit: limit) }
        bytes.append(contentsOf: buffer.readableBytesView)
      }
    } catch let error as GatewayError {
      throw error
    } catch {
      throw .badRequest("the request body could not be read")
    }
    return bytes
  }

  /// The value of the `response_body` field in the response JSON; its default when absent.
  static func extract(field: (jsonName: String, schema: FieldSchema?), from json: [UInt8]) -> [UInt8] {
    if case .object(let members) = try? JSONParser.parse(json, maximumDepth: 200),
      let member = members.first(where: { $0.key == field.jsonName })
    {
      return Array(member.value.serialized.utf8)
    }
    guard let schema = field.schema else { return Array("null".utf8) }
    if schema.isRepeated && !schema.isMap { return Array("[]".utf8) }
    switch schema.kind {
    case _ where schema.isMap: return Array("{}".utf8)
    case .string, .bytes: return Array("\"\"".utf8)
    case .bool: return Array("false".utf8)
    case .int32, .uint32, .float, .double: return Array("0".utf8)
    case .int64, .uint64: return Array("\"0\"".utf8)
    case .enumeration, .message: return Array("null".utf8)
    }
  }
}
