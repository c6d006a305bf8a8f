import Foundation
import GRPCCore
import HTTPTypes
import Hummingbird
import Logging
import MartProto
import MartRuntime
import NIOCore
import SwiftProtobuf

// The gateway's one HTTP responder: every request comes here (no Hummingbird routes), is matched
// against the generated route table, and goes through the edge's steps in order — CORS preflight,
// route (404/405), token (401/403), quota (429), body (413/415/400), transcoding (400), the gRPC
// call with its deadline, and the answer as JSON — with a request id, the RateLimit headers, an
// access-log line and metrics around every call.

/// Hummingbird's request context plus the connection's peer address.
public struct GatewayRequestContext: Hummingbird.RequestContext, RemoteAddressRequestContext {
  public var coreContext: CoreRequestContextStorage
  public let remoteAddress: SocketAddress?

  public init(source: ApplicationRequestContextSource) {
    self.coreContext = .init(source: source)
    self.remoteAddress = source.channel.remoteAddress
  }
}

/// A route ready to serve: its binding, how to build its request, its quota and deadline.
struct CompiledRoute: Sendable {
  var route: GatewayRoute
  var transcoder: RequestTranscoder
  var rateLimit: RateLimitPolicy
  var deadline: Duration
  /// The response field that is the HTTP body (`response_body`), as its JSON name and schema.
  var responseField: (jsonName: String, schema: FieldSchema?)?
}

struct GatewayResponder: HTTPResponder {
  typealias Context = GatewayRequestContext

  let matcher: RouteMatcher<CompiledRoute>
  let upstreams: Upstreams
  let authenticator: EdgeAuthenticator
  let limiter: RateLimiter
  let cors: CORSPolicy
  let addresses: ClientAddressResolver
  let maxBodyBytes: Int
  let instruments: GatewayInstruments
  let logger: Logger

  init(
    routes: [GatewayRoute] = GatewayRouteTable.routes, schemas: SchemaIndex = .generated, settings: GatewaySettings,
    upstreams: Upstreams, verifier: TokenVerifier, instruments: GatewayInstruments,
    clock: @escaping @Sendable () -> Double = RateLimiter.monotonicSeconds(), logger: Logger
  ) throws {
    var matcher = RouteMatcher<CompiledRoute>()
    for route in routes {
      func problem(_ reason: String) -> ConfigurationError {
        ConfigurationError(variable: "route \(route.operationID)", value: route.pathTemplate, reason: reason)
      }
      let template: PathTemplate
      do {
        template = try PathTemplate(route.pathTemplate)
      } catch {
        throw problem(error.description)
      }
      let transcoder: RequestTranscoder
      do {
        transcoder = try RequestTranscoder(
          route: route, template: template, schemas: schemas,
          headerFields: settings.requestHeaderFields[route.operationID] ?? [:],
          clientAddressField: settings.clientIPFields[route.operationID])
      } catch {
        throw problem(error.description)
      }
      var responseField: (String, FieldSchema?)?
      if !route.responseBody.isEmpty {
        let schema = schemas.field(route.responseBody, in: route.responseMessage)
        responseField = (schema?.jsonName ?? Self.jsonName(route.responseBody), schema)
      }
      matcher.add(
        method: route.httpMethod, template: template,
        value: CompiledRoute(
          route: route, transcoder: transcoder, rateLimit: settings.rateLimit(for: route.operationID),
          deadline: settings.deadline(for: route.operationID), responseField: responseField))
    }
    self.matcher = matcher
    self.upstreams = upstreams
    self.authenticator = EdgeAuthenticator(verifier: verifier)
    self.limiter = RateLimiter(maximumBuckets: settings.maxRateLimitBuckets, now: clock)
    self.cors = CORSPolicy(settings.cors)
    self.addresses = ClientAddressResolver(trustedProxies: settings.trustedProxies)
    self.maxBodyBytes = settings.maxBodyBytes
    self.instruments = instruments
    self.logger = logger
  }

  /// protoc's JSON name: `response_body` → `responseBody`.
  static func jsonName(_ protoName: String) -> String {
    var out = ""
    var upper = false
    for character in protoName {
      if character == "_" {
        upper = true
      } else {
        out += upper ? character.uppercased() : String(character)
        upper = false
      }
    }
    return out
  }

  // MARK: Every request

  /// What one request came to, for the access log and the metrics.
  private struct Outcome {
    var response: Response
    var operation: String
    var route: String
    var code: Google_Rpc_Code?
  }

  /// Everything known about the request before routing.
  struct Call: Sendable {
    var request: Request
    var requestID: String
    var traceparent: String?
    var clientAddress: IPAddress?
  }

  func respond(to request: Request, context: Context) async throws -> Response {
    let start = ContinuousClock.now
    let requestID = Self.acceptedRequestID(request.headers[Self.requestIDField]) ?? UUID().uuidString.lowercased()
    let traceparent = request.headers[Self.traceparentField].flatMap {
      MartRuntime.RequestContext.traceID(fromTraceparent: $0) == nil ? nil : $0
    }
    let peer = ClientAddressResolver.address(of: context.remoteAddress)
    let call = Call(
      request: request, requestID: requestID, traceparent: traceparent,
      clientAddress: addresses.clientAddress(peer: peer, forwardedFor: request.headers[values: Self.forwardedForField]))
    return await MartRuntime.RequestContext.$requestID.withValue(requestID) {
      await MartRuntime.RequestContext.$traceparent.withValue(traceparent) {
        let outcome = await handle(call)
        var response = outcome.response
        response.headers[Self.requestIDField] = requestID
        for field in cors.responseHeaders(origin: request.headers[.origin]) {
          response.headers[field.name] = field.value
        }
        if request.method == .head { response.body = ResponseBody() }
        let elapsed = ContinuousClock.now - start
        instruments.record(
          operation: outcome.operation, method: request.method.rawValue, status: response.status.code,
          code: outcome.code.map(Self.codeName), duration: elapsed)
        logger.info(
          "request",
          metadata: [
            "http_method": .string(request.method.rawValue), "route": .string(outcome.route),
            "operation": .string(outcome.operation), "status": .stringConvertible(response.status.code),
            "duration_ms": .string(String(format: "%.1f", elapsed.secondsValue * 1000)),
            "request_id": .string(requestID), "client_ip": .string(call.clientAddress?.description ?? "-"),
          ])
        return response
      }
    }
  }

  private func handle(_ call: Call) async -> Outcome {
    let request = call.request
    let path = request.uri.path
    if CORSPolicy.isPreflight(request) {
      return Outcome(response: cors.preflight(request), operation: "preflight", route: path)
    }
    if let builtIn = Self.builtInEndpoints[path] {
      guard request.method == .get || request.method == .head else {
        if request.method == .options {
          return Outcome(response: Self.allow(["GET", "HEAD", "OPTIONS"]), operation: builtIn, route: path)
        }
        return failure(
          .methodNotAllowed(request.method.rawValue, allowed: ["GET", "HEAD", "OPTIONS"]), operation: builtIn,
          route: path)
      }
      return Outcome(response: await builtInResponse(path), operation: builtIn, route: path)
    }
    switch matcher.match(method: request.method.rawValue, path: path) {
    case .malformedPath:
      return failure(.badRequest("the path is not valid percent-encoded UTF-8"), operation: "unmatched", route: "-")
    case .notFound:
      return failure(.notFound(path: path), operation: "unmatched", route: "-")
    case .methodNotAllowed(let allowed):
      if request.method == .options { return Outcome(response: Self.allow(allowed), operation: "options", route: path) }
      return failure(.methodNotAllowed(request.method.rawValue, allowed: allowed), operation: "unmatched", route: path)
    case .found(let route, let bindings):
      var rateLimitHeaders = HTTPFields()
      do {
        let response = try await serve(route, bindings: bindings, call: call, rateLimitHeaders: &rateLimitHeaders)
        return Outcome(response: response, operation: route.route.operationID, route: route.route.pathTemplate)
      } catch {
        return failure(
          error, operation: route.route.operationID, route: route.route.pathTemplate, extraHeaders: rateLimitHeaders)
      }
    }
  }

  private func failure(
    _ error: GatewayError, operation: String, route: String, extraHeaders: HTTPFields = [:]
  ) -> Outcome {
    Outcome(response: error.response(extraHeaders: extraHeaders), operation: operation, route: route, code: error.code)
  }

  /// One routed call: token, quota, body, transcoding, upstream call, answer.
  private func serve(
    _ compiled: CompiledRoute, bindings: [PathBinding], call: Call, rateLimitHeaders: inout HTTPFields
  ) async throws(GatewayError) -> Response {
    let route = compiled.route
    let request = call.request
    let authorization = request.headers[.authorization]
    let caller = try await authenticator.authenticate(access: route.access, authorization: authorization)

    let bucket = caller.map { "sub:\($0.subject)" } ?? "ip:\(call.clientAddress?.description ?? "unknown")"
    let decision = limiter.acquire(compiled.rateLimit, key: bucket)
    rateLimitHeaders[Self.rateLimitPolicyField] = decision.policy.policyHeader
    rateLimitHeaders[Self.rateLimitField] = decision.rateLimitHeader
    if let retryAfter = decision.retryAfterSeconds {
      var headers = HTTPFields()
      headers[.retryAfter] = String(retryAfter)
      var retryInfo = Google_Rpc_RetryInfo()
      retryInfo.retryDelay = .init(seconds: Int64(retryAfter))
      let details = [
        try? Google_Protobuf_Any(message: retryInfo),
        GatewayError.errorInfo(
          reason: "RATE_LIMITED",
          metadata: ["policy": decision.policy.name, "limit": String(decision.policy.limit)]),
      ].compactMap { $0 }
      throw GatewayError(
        .tooManyRequests, code: .resourceExhausted,
        message: "rate limit exceeded for \(route.operationID); retry in \(retryAfter)s", details: details,
        headers: headers)
    }

    let body = try await Self.readBody(request, limit: maxBodyBytes)
    let transcoded = try compiled.transcoder.transcode(
      bindings: bindings, query: request.uri.query, body: body, contentType: request.headers[.contentType],
      headers: { name in HTTPField.Name(name).flatMap { request.headers[$0] } },
      clientAddress: call.clientAddress?.description)

    var metadata = Metadata()
    if let authorization { metadata.addString(authorization, forKey: "authorization") }
    metadata.addString(call.requestID, forKey: "x-request-id")
    if let traceparent = call.traceparent { metadata.addString(traceparent, forKey: "traceparent") }
    if let address = call.clientAddress { metadata.addString(address.description, forKey: "x-mart-client-ip") }
    var options = CallOptions.defaults
    options.timeout = compiled.deadline
    // Fail fast when the service cannot be reached (503), rather than waiting out the deadline.
    options.waitForReady = false

    guard let client = upstreams.clients[route.upstream] else {
      throw GatewayError(
        .serviceUnavailable, code: .unavailable, message: "the \(route.upstream.rawValue) service is not configured")
    }
    let json: [UInt8]
    do {
      json = try await route.rpc.call(
        bodyJSON: transcoded.bodyJSON, parametersJSON: transcoded.parametersJSON, client: client, metadata: metadata,
        options: options)
    } catch let error as GatewayRequestDecodingError {
      throw .badRequest("the request does not match \(route.requestMessage): \(error.description)")
    } catch let error as RPCError {
      let mapped = GatewayError.upstream(error, service: route.upstream.rawValue, requestID: call.requestID)
      if mapped.code == .internal {
        logger.warning(
          "upstream call failed",
          metadata: [
            "operation": .string(route.operationID), "code": .string("\(error.code)"), "error": .string(error.message),
          ])
      }
      throw mapped
    } catch {
      logger.error(
        "gateway call failed", metadata: ["operation": .string(route.operationID), "error": .string("\(error)")])
      throw .internalError(requestID: call.requestID)
    }

    var headers = rateLimitHeaders
    headers[.contentType] = "application/json"
    let payload = compiled.responseField.map { Self.extract(field: $0, from: json) } ?? json
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: payload)))
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

  // MARK: The gateway's own endpoints

  static let builtInEndpoints = [
    "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics", APIDocumentation.openAPIPath: "openapi",
    APIDocumentation.docsPath: "docs",
  ]

  private func builtInResponse(_ path: String) async -> Response {
    switch path {
    case "/healthz":
      return Self.json(#"{"status":"ok"}"#, status: .ok)
    case "/readyz":
      return await readiness()
    case "/metrics":
      var headers = HTTPFields()
      headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
      return Response(
        status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: instruments.exposition())))
    case APIDocumentation.openAPIPath:
      return APIDocumentation.openAPIDocument()
    default:
      return APIDocumentation.docsPage()
    }
  }

  /// Ready when every upstream service reports SERVING on grpc.health.v1.
  private func readiness() async -> Response {
    let upstreams = self.upstreams
    let statuses = await withTaskGroup(of: (MartService, HealthStatus).self) { group in
      for service in upstreams.clients.keys {
        group.addTask { (service, await upstreams.health(of: service)) }
      }
      return await group.reduce(into: [MartService: HealthStatus]()) { $0[$1.0] = $1.1 }
    }
    let ready = statuses.values.allSatisfy { $0 == .serving }
    let services = statuses.sorted { $0.key.rawValue < $1.key.rawValue }.map {
      JSONMember(key: $0.key.rawValue, value: .string($0.value == .serving ? "SERVING" : "NOT_SERVING"))
    }
    let body = JSONValue.object([
      JSONMember(key: "services", value: .object(services)),
      JSONMember(key: "status", value: .string(ready ? "ready" : "not ready")),
    ])
    return Self.json(body.serialized, status: ready ? .ok : .serviceUnavailable)
  }

  static func json(_ text: String, status: HTTPResponse.Status) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
  }

  static func allow(_ methods: [String]) -> Response {
    var headers = HTTPFields()
    headers[.allow] = methods.joined(separator: ", ")
    return Response(status: .noContent, headers: headers)
  }

  // MARK: Headers

  static let requestIDField = fieldName("X-Request-Id")
  static let traceparentField = fieldName("traceparent")
  static let forwardedForField = fieldName("X-Forwarded-For")
  static let rateLimitField = fieldName("RateLimit")
  static let rateLimitPolicyField = fieldName("RateLimit-Policy")

  /// A header name from a literal (the initialiser fails only for characters outside a token).
  private static func fieldName(_ literal: String) -> HTTPField.Name {
    guard let name = HTTPField.Name(literal) else { preconditionFailure("not a header name: \(literal)") }
    return name
  }

  /// A client's request id if it is one we can pass on: 1–128 visible ASCII characters.
  static func acceptedRequestID(_ value: String?) -> String? {
    guard let value, (1...128).contains(value.utf8.count),
      value.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E })
    else { return nil }
    return value
  }

  /// `INVALID_ARGUMENT` for `.invalidArgument`: the label value of the error counter.
  static func codeName(_ code: Google_Rpc_Code) -> String {
    switch code {
    case .ok: "OK"
    case .cancelled: "CANCELLED"
    case .unknown: "UNKNOWN"
    case .invalidArgument: "INVALID_ARGUMENT"
    case .deadlineExceeded: "DEADLINE_EXCEEDED"
    case .notFound: "NOT_FOUND"
    case .alreadyExists: "ALREADY_EXISTS"
    case .permissionDenied: "PERMISSION_DENIED"
    case .unauthenticated: "UNAUTHENTICATED"
    case .resourceExhausted: "RESOURCE_EXHAUSTED"
    case .failedPrecondition: "FAILED_PRECONDITION"
    case .aborted: "ABORTED"
    case .outOfRange: "OUT_OF_RANGE"
    case .unimplemented: "UNIMPLEMENTED"
    case .internal: "INTERNAL"
    case .unavailable: "UNAVAILABLE"
    case .dataLoss: "DATA_LOSS"
    case .UNRECOGNIZED(let value): "CODE_\(value)"
    }
  }
}
