import Foundation
import MartCore

// The generated route table, compiled once at start-up: each route's path template parsed, its
// transcoder built from the schemas, and its quota and deadline looked up in the settings, so that
// a mistake in any of them stops start-up instead of failing a request.

/// A route ready to serve: its binding, how to build its request, its quota and deadline.
struct CompiledRoute: Sendable {
  var route: GatewayRoute
  var transcoder: RequestTranscoder
  var rateLimit: RateLimitPolicy
  var deadline: Duration
  /// The response field that is the HTTP body (`response_body`), as its JSON name and schema.
  var responseField: (jsonName: String, schema: FieldSchema?)?

  /// Every route, compiled, in a matcher by method and path.
  static func matcher(
    routes: [GatewayRoute], schemas: SchemaIndex, settings: GatewaySettings
  ) throws -> RouteMatcher<CompiledRoute> {
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
        responseField = (schema?.jsonName ?? jsonName(route.responseBody), schema)
      }
      matcher.add(
        method: route.httpMethod, template: template,
        value: CompiledRoute(
          route: route, transcoder: transcoder, rateLimit: settings.rateLimit(for: route.operationID),
          deadline: settings.deadline(for: route.operationID), responseField: responseField))
    }
    return matcher
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
}
