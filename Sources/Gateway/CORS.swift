import Hummingbird

// Cross-origin access for browser clients, from the `cors` settings: an allowed origin gets the
// CORS headers on every answer (errors included, or the browser hides them from the page), and a
// preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered 204 at the edge without
// reaching a service. An origin not on the list gets no CORS headers at all.

struct CORSPolicy: Sendable {
  let settings: CORSSettings
  private let anyOrigin: Bool
  private let origins: Set<String>

  init(_ settings: CORSSettings) {
    self.settings = settings
    self.anyOrigin = settings.allowedOrigins.contains("*")
    self.origins = Set(settings.allowedOrigins.map { $0.lowercased() })
  }

  func allows(origin: String) -> Bool {
    anyOrigin || origins.contains(origin.lowercased())
  }

  /// Whether the request is a CORS preflight.
  static func isPreflight(_ request: Request) -> Bool {
    request.method == .options && request.headers[.origin] != nil
      && request.headers[.accessControlRequestMethod] != nil
  }

  /// Headers for an answer to a request from `origin` (nil: not a cross-origin request).
  func responseHeaders(origin: String?) -> HTTPFields {
    var headers = HTTPFields()
    guard !settings.allowedOrigins.isEmpty else { return headers }
    // The answer depends on the Origin header whenever CORS is configured.
    headers[.vary] = "Origin"
    guard let origin, allows(origin: origin) else { return headers }
    if anyOrigin && !settings.allowCredentials {
      headers[.accessControlAllowOrigin] = "*"
    } else {
      headers[.accessControlAllowOrigin] = origin
    }
    if settings.allowCredentials { headers[.accessControlAllowCredentials] = "true" }
    if !settings.exposedHeaders.isEmpty {
      headers[.accessControlExposeHeaders] = settings.exposedHeaders.joined(separator: ", ")
    }
    return headers
  }

  /// The answer to a preflight: 204, with the CORS grants only for an allowed origin.
  func preflight(_ request: Request) -> Response {
    let origin = request.headers[.origin]
    var headers = responseHeaders(origin: origin)
    if let origin, allows(origin: origin) {
      headers[.accessControlAllowMethods] = settings.allowedMethods.joined(separator: ", ")
      headers[.accessControlAllowHeaders] = settings.allowedHeaders.joined(separator: ", ")
      headers[.accessControlMaxAge] = String(Int(settings.maxAge.secondsValue))
    }
    return Response(status: .noContent, headers: headers)
  }
}
