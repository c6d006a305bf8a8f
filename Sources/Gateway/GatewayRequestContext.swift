import HTTPTypes
import Hummingbird
import Logging
import MartCore
import MartProto
import NIOCore
import Synchronization

// What the gateway's middleware steps know about one request. Hummingbird hands each step a copy
// of the context and the step passes its own copy on, so what a step learns (the request id, the
// client's address, the route, the caller) flows inward only. What the access log reports flows
// outward, after the inner steps are done, through the one reference in it: `exchange`.

/// Hummingbird's request context plus what the gateway's steps learn about the request.
public struct GatewayRequestContext: Hummingbird.RequestContext, RemoteAddressRequestContext {
  public var coreContext: CoreRequestContextStorage
  public let remoteAddress: NIOCore.SocketAddress?
  /// Filled in by inner steps for the access log and the metrics.
  let exchange = ExchangeRecord()
  /// Set by `RequestIDMiddleware`: the client's id if acceptable, else a new UUID.
  var requestID = ""
  /// Set by `RequestIDMiddleware`: the `traceparent` of the request's span (the client's valid
  /// one when tracing is off).
  var traceparent: String?
  /// Set by `ClientAddressMiddleware`; nil when the peer is not a socket (router tests).
  var clientAddress: IPAddress?
  /// Set by `RouteMatchMiddleware`.
  var route: MatchedRoute?
  /// Set by `EdgeAuthMiddleware`: the verified caller; nil on a public route.
  var caller: Caller?
  /// Set by `EdgeAuthMiddleware` when the check failed: the refusal (401, 403 or 503), which
  /// `RateLimitMiddleware` answers with only after charging the attempt to the client's address,
  /// so that a flood of bad tokens meets the quota like any other traffic.
  var authenticationFailure: GatewayError?

  public init(source: ApplicationRequestContextSource) {
    self.coreContext = .init(source: source)
    self.remoteAddress = source.channel.remoteAddress
  }

  /// A context without a connection, for exercising one step alone.
  init(logger: Logger, remoteAddress: NIOCore.SocketAddress? = nil) {
    self.coreContext = .init(source: LoggerSource(logger: logger))
    self.remoteAddress = remoteAddress
  }

  private struct LoggerSource: RequestContextSource {
    let logger: Logger
  }

  /// The route `RouteMatchMiddleware` found. A step behind it that finds none was wired in front
  /// of it: a bug of ours, so an internal error rather than a guess.
  func matchedRoute() throws(GatewayError) -> MatchedRoute {
    guard let route else { throw .internalError(requestID: requestID) }
    return route
  }
}

/// The route a request matched, with the values of its path variables.
struct MatchedRoute: Sendable {
  var compiled: CompiledRoute
  var bindings: [PathBinding]
}

/// What one request came to, as the access log and the metrics name it: written by the step
/// that decides it, read by `AccessLogMiddleware` after the inner steps have answered.
final class ExchangeRecord: Sendable {
  struct Labels: Sendable, Equatable {
    /// The route's operationID, a built-in endpoint's name, or `preflight`, `options`, `unmatched`.
    var operation = "unmatched"
    /// The route's path template, the path of a built-in endpoint or preflight, or `-`.
    var route = "-"
    /// The google.rpc code of an error answer.
    var code: Google_Rpc_Code?
  }

  private let labels = Mutex(Labels())

  var current: Labels { labels.withLock { $0 } }

  func name(operation: String, route: String) {
    labels.withLock {
      $0.operation = operation
      $0.route = route
    }
  }

  func failed(_ code: Google_Rpc_Code) {
    labels.withLock { $0.code = code }
  }
}

extension HTTPField.Name {
  static let requestID = gatewayField("X-Request-Id")
  static let forwardedFor = gatewayField("X-Forwarded-For")
  static let rateLimit = gatewayField("RateLimit")
  static let rateLimitPolicy = gatewayField("RateLimit-Policy")

  /// A header name from a literal (the initialiser fails only for characters outside a token).
  private static func gatewayField(_ literal: String) -> HTTPField.Name {
    guard let name = HTTPField.Name(literal) else { preconditionFailure("not a header name: \(literal)") }
    return name
  }
}
