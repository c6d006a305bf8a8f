import Testing

@testable import Gateway

/// google.api.http path templates: parsing and matching, and choosing among routes.
@Suite struct PathTemplateTests {
  func bindings(_ template: String, _ path: String) throws -> [String: String]? {
    let parsed = try PathTemplate(template)
    guard let path = RequestPath(path) else { return nil }
    return try parsed.match(path).map { bindings in
      Dictionary(uniqueKeysWithValues: bindings.map { ($0.fieldPath.joined(separator: "."), $0.value) })
    }
  }

  @Test func literalsAndSimpleVariables() throws {
    #expect(try bindings("/v1/users", "/v1/users") == [:])
    #expect(try bindings("/v1/users", "/v1/users/") == nil)
    #expect(try bindings("/v1/users", "/v1/user") == nil)
    #expect(try bindings("/v1/users/{user_id}", "/v1/users/42") == ["user_id": "42"])
    #expect(try bindings("/v1/users/{user_id}", "/v1/users/") == nil, "a variable needs a non-empty segment")
    #expect(try bindings("/v1/users/{user_id}", "/v1/users/4/2") == nil)
    #expect(try bindings("/.well-known/jwks.json", "/.well-known/jwks.json") == [:])
  }

  @Test func nestedFieldPathsAndPercentDecoding() throws {
    #expect(try bindings("/v1/products/{product.id}", "/v1/products/p%201") == ["product.id": "p 1"])
    #expect(try bindings("/v1/a/{x}", "/v1/a/caf%C3%A9") == ["x": "café"])
    #expect(throws: MalformedPathError.self) { try bindings("/v1/a/{x}", "/v1/a/%zz") }
    #expect(throws: MalformedPathError.self) { try bindings("/v1/a/{x}", "/v1/a/%FF") }
  }

  @Test func subPatternsAndDeepWildcards() throws {
    let book = "/v1/{name=shelves/*/books/*}"
    #expect(try bindings(book, "/v1/shelves/s1/books/b2") == ["name": "shelves/s1/books/b2"])
    #expect(try bindings(book, "/v1/shelves/s1/books") == nil)
    #expect(try bindings(book, "/v1/shelves/s1/novels/b2") == nil)
    // '%2F' inside a multi-segment capture stays encoded, so that '/' stays unambiguous.
    #expect(try bindings(book, "/v1/shelves/a%2Fb/books/c") == ["name": "shelves/a%2Fb/books/c"])
    #expect(try bindings("/v1/files/{path=**}", "/v1/files/a/b/c.txt") == ["path": "a/b/c.txt"])
    #expect(try bindings("/v1/files/{path=**}", "/v1/files") == ["path": ""])
    #expect(try bindings("/v1/*/items", "/v1/anything/items") == [:])
    #expect(try bindings("/static/**", "/static/css/site.css") == [:])
  }

  @Test func customVerbs() throws {
    let template = try PathTemplate("/v1/users/{user_id}:setRoles")
    #expect(template.verb == "setRoles")
    #expect(try bindings("/v1/users/{user_id}:setRoles", "/v1/users/u1:setRoles") == ["user_id": "u1"])
    #expect(try bindings("/v1/users/{user_id}:setRoles", "/v1/users/u1:other") == nil)
    #expect(try bindings("/v1/users/{user_id}:setRoles", "/v1/users/u1") == nil)
    #expect(try bindings("/v1/notifications:sendTest", "/v1/notifications:sendTest") == [:])
    #expect(try bindings("/v1/{name=orders/*}:cancel", "/v1/orders/o1:cancel") == ["name": "orders/o1"])
    // Without a verb in the template, a colon is part of the value.
    #expect(try bindings("/v1/orders/{order_id}", "/v1/orders/o1:cancel") == ["order_id": "o1:cancel"])
  }

  @Test func malformedTemplatesAreRefused() {
    for bad in [
      "v1/users", "/v1/{", "/v1/{a.}", "/v1/{a}/{a}", "/v1/**/x", "/v1//x", "/v1/{a=}", "/v1/x:", "/v1/{a={b}}",
      "/v1/a{b}",
    ] {
      #expect(throws: PathTemplate.SyntaxError.self, "\(bad)") { try PathTemplate(bad) }
    }
  }

  @Test func literalBeatsVariableAndOtherMethodsGive405() throws {
    var matcher = RouteMatcher<String>()
    matcher.add(method: "GET", template: try PathTemplate("/v1/users/{user_id}"), value: "GetUser")
    matcher.add(method: "GET", template: try PathTemplate("/v1/users/me"), value: "GetMe")
    matcher.add(method: "PATCH", template: try PathTemplate("/v1/users/me"), value: "UpdateMe")
    matcher.add(method: "POST", template: try PathTemplate("/v1/users/{user_id}:setRoles"), value: "SetRoles")
    matcher.add(method: "GET", template: try PathTemplate("/v1/files/{path=**}"), value: "Deep")
    matcher.add(method: "GET", template: try PathTemplate("/v1/files/{dir}/index"), value: "Index")

    func found(_ method: String, _ path: String) -> String? {
      if case .found(let value, _) = matcher.match(method: method, path: path) { return value }
      return nil
    }
    #expect(found("GET", "/v1/users/me") == "GetMe")
    #expect(found("GET", "/v1/users/u1") == "GetUser")
    #expect(found("HEAD", "/v1/users/me") == "GetMe")
    #expect(found("PATCH", "/v1/users/me") == "UpdateMe")
    #expect(found("POST", "/v1/users/u1:setRoles") == "SetRoles")
    #expect(found("GET", "/v1/files/docs/index") == "Index", "'*' beats '**'")
    #expect(found("GET", "/v1/files/docs/other") == "Deep")

    guard case .methodNotAllowed(let allowed) = matcher.match(method: "DELETE", path: "/v1/users/me") else {
      Issue.record("expected 405")
      return
    }
    #expect(allowed == ["GET", "HEAD", "OPTIONS", "PATCH"])
    // A custom verb's path is that verb's resource: GET /v1/users/{user_id} does not take
    // "u1:setRoles" as an id (grpc-gateway falls back to that, for ids with colons; Mart's ids are
    // UUIDs), so the answer is 405 with only what the document lists there.
    guard case .methodNotAllowed(let verbAllowed) = matcher.match(method: "GET", path: "/v1/users/u1:setRoles")
    else {
      Issue.record("expected 405 for GET on a custom verb's path")
      return
    }
    #expect(verbAllowed == ["OPTIONS", "POST"])
    #expect(matcher.methods(at: "/v1/users/u1:setRoles") == ["OPTIONS", "POST"])
    // A colon in a segment that no verb names is still an ordinary id.
    #expect(found("GET", "/v1/users/u1:other") == "GetUser")
  }

  @Test func unknownPathsAreNotFound() throws {
    var matcher = RouteMatcher<String>()
    matcher.add(method: "GET", template: try PathTemplate("/v1/users"), value: "ListUsers")
    guard case .notFound = matcher.match(method: "GET", path: "/v1/nothing") else {
      Issue.record("expected 404")
      return
    }
    #expect(matcher.methods(at: "/v1/users") == ["GET", "HEAD", "OPTIONS"])
    #expect(matcher.methods(at: "/v1/nothing").isEmpty)
  }

  @Test func everyGeneratedRouteCompiles() throws {
    var matcher = RouteMatcher<String>()
    for route in GatewayRouteTable.routes {
      matcher.add(method: route.httpMethod, template: try PathTemplate(route.pathTemplate), value: route.operationID)
      _ = try RequestTranscoder(
        route: route, template: try PathTemplate(route.pathTemplate), schemas: .generated,
        headerFields: GatewaySettings().requestHeaderFields[route.operationID] ?? [:],
        clientAddressField: GatewaySettings().clientIPFields[route.operationID])
    }
    if case .found(let id, _) = matcher.match(method: "GET", path: "/v1/users/me") {
      #expect(id == "UserService_GetMe")
    } else {
      Issue.record("GET /v1/users/me not routed")
    }
    if case .found(let id, let bindings) = matcher.match(method: "GET", path: "/v1/users/abc") {
      #expect(id == "UserService_GetUser")
      #expect(bindings == [PathBinding(fieldPath: ["user_id"], value: "abc")])
    } else {
      Issue.record("GET /v1/users/abc not routed")
    }
  }
}
