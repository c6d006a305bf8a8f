import Foundation
import MartProto
import Testing

@testable import Gateway

/// Building the request message's JSON from the path, the query and the body, and naming the
/// field in every refusal.
@Suite struct TranscoderTests {
  static let schemas = SchemaIndex(
    messages: [
      "test.Request": MessageSchema(
        fullName: "test.Request",
        fields: [
          FieldSchema(protoName: "page_size", jsonName: "pageSize", kind: .int32),
          FieldSchema(protoName: "big", jsonName: "big", kind: .int64),
          FieldSchema(protoName: "flag", jsonName: "flag", kind: .bool),
          FieldSchema(protoName: "ratio", jsonName: "ratio", kind: .double),
          FieldSchema(protoName: "tags", jsonName: "tags", kind: .string, isRepeated: true),
          FieldSchema(protoName: "role", jsonName: "role", kind: .enumeration("test.Role")),
          FieldSchema(protoName: "roles", jsonName: "roles", kind: .enumeration("test.Role"), isRepeated: true),
          FieldSchema(protoName: "product", jsonName: "product", kind: .message("test.Product")),
          FieldSchema(protoName: "since", jsonName: "since", kind: .message("google.protobuf.Timestamp")),
          FieldSchema(protoName: "limit", jsonName: "limit", kind: .message("google.protobuf.Int64Value")),
          FieldSchema(protoName: "labels", jsonName: "labels", kind: .string, isMap: true, mapKeyKind: .string),
          FieldSchema(protoName: "counts", jsonName: "counts", kind: .int32, isMap: true, mapKeyKind: .int64),
          FieldSchema(protoName: "items", jsonName: "items", kind: .message("test.Item"), isRepeated: true),
          FieldSchema(protoName: "data", jsonName: "data", kind: .bytes),
          FieldSchema(protoName: "mask", jsonName: "mask", kind: .message("google.protobuf.FieldMask")),
          FieldSchema(protoName: "http_body", jsonName: "httpBody", kind: .message("google.api.HttpBody")),
          FieldSchema(protoName: "signature", jsonName: "signature", kind: .string),
          FieldSchema(protoName: "source_ip", jsonName: "sourceIp", kind: .string),
        ]),
      "test.Product": MessageSchema(
        fullName: "test.Product",
        fields: [
          FieldSchema(protoName: "id", jsonName: "id", kind: .string),
          FieldSchema(protoName: "price_cents", jsonName: "priceCents", kind: .int64),
          FieldSchema(protoName: "dims", jsonName: "dims", kind: .message("test.Dims")),
        ]),
      "test.Dims": MessageSchema(
        fullName: "test.Dims", fields: [FieldSchema(protoName: "width_mm", jsonName: "widthMm", kind: .uint32)]),
      "test.Item": MessageSchema(
        fullName: "test.Item",
        fields: [
          FieldSchema(protoName: "sku", jsonName: "sku", kind: .string),
          FieldSchema(protoName: "quantity", jsonName: "quantity", kind: .int32),
        ]),
      "google.api.HttpBody": MessageSchema(
        fullName: "google.api.HttpBody",
        fields: [
          FieldSchema(protoName: "content_type", jsonName: "contentType", kind: .string),
          FieldSchema(protoName: "data", jsonName: "data", kind: .bytes),
        ]),
    ],
    enums: [
      "test.Role": EnumSchema(
        fullName: "test.Role", values: ["ROLE_UNSPECIFIED", "CUSTOMER", "ADMIN"], numbers: [0, 1, 2])
    ])

  static func route(_ method: String, _ template: String, body: String) -> GatewayRoute {
    GatewayRoute(
      httpMethod: method, pathTemplate: template, body: body, responseBody: "", access: .public, upstream: .user,
      requestMessage: "test.Request", responseMessage: "test.Request", operationID: "Test_Op",
      rpc: ProtobufGatewayRPC<Mart_User_V1_GetMeRequest, Mart_User_V1_User>(
        service: "mart.user.v1.UserService", method: "GetMe"))
  }

  func transcoder(
    _ method: String = "GET", _ template: String = "/v1/things", body: String = "",
    headerFields: [String: String] = [:],
    clientAddressField: String? = nil
  ) throws -> (RequestTranscoder, PathTemplate) {
    let parsed = try PathTemplate(template)
    return (
      try RequestTranscoder(
        route: Self.route(method, template, body: body), template: parsed, schemas: Self.schemas,
        headerFields: headerFields, clientAddressField: clientAddressField), parsed
    )
  }

  func transcode(
    _ method: String = "GET", _ template: String = "/v1/things", body bodyRule: String = "", path: String? = nil,
    query: String? = nil, body: String = "", contentType: String? = "application/json",
    headerFields: [String: String] = [:], headers: [String: String] = [:], clientAddressField: String? = nil,
    clientAddress: String? = nil
  ) throws -> TranscodedRequest {
    let (transcoder, template) = try transcoder(
      method, template, body: bodyRule, headerFields: headerFields, clientAddressField: clientAddressField)
    let requestPath = try #require(RequestPath(path ?? template.description))
    let bindings = try #require(try template.match(requestPath))
    return try transcoder.transcode(
      bindings: bindings, query: query, body: Array(body.utf8), contentType: contentType,
      headers: { headers[$0] }, clientAddress: clientAddress)
  }

  /// The violation a refused request names (its field and description), or nil if it passed.
  func refusal(_ make: () throws -> TranscodedRequest) -> (field: String, message: String)? {
    do {
      _ = try make()
      return nil
    } catch let error as GatewayError {
      #expect(error.httpStatus == .badRequest || error.httpStatus == .unsupportedMediaType)
      return (Self.violatedField(error) ?? "", error.message)
    } catch {
      Issue.record("unexpected \(error)")
      return nil
    }
  }

  /// The field of the first BadRequest violation in the error's Status body.
  static func violatedField(_ error: GatewayError) -> String? {
    guard let status = try? Google_Rpc_Status(jsonUTF8Bytes: error.statusJSON),
      let detail = status.details.first(where: { $0.typeURL.hasSuffix("google.rpc.BadRequest") }),
      let badRequest = try? Google_Rpc_BadRequest(unpackingAny: detail)
    else { return nil }
    return badRequest.fieldViolations.first?.field
  }

  // MARK: Query parameters

  @Test func queryParametersFillScalarsRepeatedsNestedAndEnums() throws {
    let request = try transcode(
      query: "page_size=20&big=9007199254740993&flag=true&ratio=0.5&tags=a&tags=b%20c&role=ADMIN&roles=1"
        + "&roles=CUSTOMER&product.id=p%2F1&product.dims.width_mm=30&since=2024-01-31T12:00:00Z&limit=7")
    #expect(request.bodyJSON == nil)
    #expect(
      request.parameters.serialized
        == #"{"pageSize":20,"big":"9007199254740993","flag":true,"ratio":"0.5","tags":["a","b c"],"role":"ADMIN","#
        + #""roles":[1,"CUSTOMER"],"product":{"id":"p/1","dims":{"widthMm":30}},"since":"2024-01-31T12:00:00Z","#
        + #""limit":"7"}"#)
  }

  @Test func queryNamesByJSONNameAndPlusIsASpace() throws {
    let request = try transcode(query: "pageSize=5&product.priceCents=-3&tags=x+y&mask=product.price_cents,flag")
    #expect(
      request.parameters.serialized
        == #"{"pageSize":5,"product":{"priceCents":"-3"},"tags":["x y"],"mask":"product.priceCents,flag"}"#,
      "field masks by proto names become JSON names")
  }

  @Test func unknownOrUnusableQueryParametersAreRefusedByName() throws {
    #expect(refusal { try transcode(query: "debug=true") }?.field == "debug")
    #expect(refusal { try transcode(query: "product.colour=red") }?.field == "product.colour")
    #expect(refusal { try transcode(query: "items.sku=x") }?.field == "items.sku", "through a repeated message")
    #expect(refusal { try transcode(query: "product=x") }?.field == "product", "a message")
    #expect(refusal { try transcode(query: "labels=x") }?.field == "labels", "a map")
    #expect(refusal { try transcode(query: "page_size=1&pageSize=2") }?.field == "pageSize", "twice")
    #expect(refusal { try transcode(query: "q=%zz") } != nil)
  }

  @Test func queryValuesAreTypeChecked() throws {
    #expect(refusal { try transcode(query: "page_size=ten") }?.field == "page_size")
    #expect(refusal { try transcode(query: "page_size=2147483648") }?.field == "page_size")
    #expect(refusal { try transcode(query: "big=18446744073709551616") }?.field == "big")
    #expect(refusal { try transcode(query: "flag=maybe") }?.field == "flag")
    #expect(refusal { try transcode(query: "ratio=abc") }?.field == "ratio")
    #expect(refusal { try transcode(query: "role=OWNER") }?.field == "role")
    #expect(refusal { try transcode(query: "since=yesterday") }?.field == "since")
    #expect(refusal { try transcode(query: "product.dims.width_mm=-1") }?.field == "product.dims.width_mm")
    #expect(try transcode(query: "flag=0").parameters.serialized == #"{"flag":false}"#)
    #expect(try transcode(query: "ratio=NaN").parameters.serialized == #"{"ratio":"NaN"}"#)
  }

  // MARK: Path variables

  @Test func pathVariablesSetNestedFieldsAndTheQueryCannotOverrideThem() throws {
    let request = try transcode("GET", "/v1/products/{product.id}", path: "/v1/products/p%201", query: "page_size=2")
    #expect(request.parameters.serialized == #"{"product":{"id":"p 1"},"pageSize":2}"#)
    #expect(
      refusal { try transcode("GET", "/v1/products/{product.id}", path: "/v1/products/p1", query: "product.id=p2") }?
        .field == "product.id")
  }

  @Test func pathVariablesAreTypeChecked() throws {
    #expect(refusal { try transcode("GET", "/v1/things/{page_size}", path: "/v1/things/x") }?.field == "page_size")
    #expect(throws: RequestTranscoder.ConfigurationProblem.self) {
      _ = try transcoder("GET", "/v1/things/{nope}")
    }
    #expect(throws: RequestTranscoder.ConfigurationProblem.self) {
      _ = try transcoder("GET", "/v1/things/{product}")
    }
  }

  // MARK: Bodies

  @Test func wholeMessageBodyIsPassedOnUnchangedAndTakesNoQuery() throws {
    let body = #"{"pageSize": 3, "big": 9007199254740993, "product": {"priceCents": "12"}}"#
    let request = try transcode("POST", "/v1/things/{product.id}", body: "*", path: "/v1/things/p9", body: body)
    #expect(request.bodyJSON == Array(body.utf8), "the body's numbers are not re-serialised")
    #expect(request.parameters.serialized == #"{"product":{"id":"p9"}}"#)
    #expect(refusal { try transcode("POST", body: "*", query: "page_size=1", body: "{}") }?.field == "page_size")
  }

  @Test func fieldBodyIsWrappedAsThatField() throws {
    let request = try transcode(
      "PATCH", "/v1/products/{product.id}", body: "product", path: "/v1/products/p1", query: "mask=id,priceCents",
      body: #" {"priceCents": 5} "#)
    #expect(request.bodyJSON == Array(#"{"product": {"priceCents": 5} }"#.utf8))
    #expect(request.parameters.serialized == #"{"product":{"id":"p1"},"mask":"id,priceCents"}"#)
    // The body's field cannot also come from the query.
    #expect(
      refusal {
        try transcode("PATCH", "/v1/x", body: "product", query: "product.price_cents=1", body: "{}")
      }?.field == "product.price_cents")
    // Unknown fields in the body are named with the body field's prefix.
    #expect(
      refusal { try transcode("PATCH", "/v1/x", body: "product", body: #"{"colour": 1}"#) }?.field == "product.colour")
    // Exactly one JSON value.
    #expect(refusal { try transcode("PATCH", "/v1/x", body: "product", body: #"{} {}"#) } != nil)
    // A repeated body field takes an array.
    let items = try transcode("POST", "/v1/x", body: "items", body: #"[{"sku": "a"}]"#)
    #expect(items.bodyJSON == Array(#"{"items":[{"sku": "a"}]}"#.utf8))
  }

  @Test func noBodyRouteRefusesABody() throws {
    #expect(refusal { try transcode("GET", body: "", body: "{}") } != nil)
    #expect(try transcode("GET", body: "", body: "").bodyJSON == nil)
  }

  @Test func emptyBodyIsTheEmptyMessageAndNeedsNoContentType() throws {
    let request = try transcode("POST", body: "*", body: "", contentType: nil)
    #expect(request.bodyJSON == nil)
  }

  @Test func contentTypeMustBeJSON() throws {
    #expect(
      try transcode("POST", body: "*", body: "{}", contentType: "application/json; charset=utf-8").bodyJSON != nil)
    #expect(try transcode("POST", body: "*", body: "{}", contentType: "Application/JSON").bodyJSON != nil)
    for bad in ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin1"] {
      do {
        _ = try transcode("POST", body: "*", body: "{}", contentType: bad)
        Issue.record("\(bad) accepted")
      } catch let error as GatewayError {
        #expect(error.httpStatus == .unsupportedMediaType, "\(bad)")
      }
    }
    do {
      _ = try transcode("POST", body: "*", body: "{}", contentType: nil)
      Issue.record("unlabelled body accepted")
    } catch let error as GatewayError {
      #expect(error.httpStatus == .unsupportedMediaType)
    }
  }

  @Test func malformedJSONIs400() throws {
    for bad in [#"{"pageSize": "#, "{,}", "[1,]", #"{"a" 1}"#, "nul", #"{"a": 01}"#, "\"\u{01}\"", "{} x"] {
      let refused = refusal { try transcode("POST", body: "*", body: bad) }
      #expect(refused != nil, "\(bad)")
      #expect(refused?.field == "", "no field for a syntax error: \(bad)")
    }
    #expect(refusal { try transcode("POST", body: "*", body: "[1]") } != nil, "not an object")
  }

  @Test func httpBodyFieldsTakeTheRawBytesAndHeadersFillFields() throws {
    let raw = "amount=10&signature=abc"
    let request = try transcode(
      "POST", "/v1/hooks", body: "http_body", body: raw, contentType: "application/x-www-form-urlencoded",
      headerFields: ["signature": "Stripe-Signature"], headers: ["Stripe-Signature": "t=1,v1=x"],
      clientAddressField: "source_ip", clientAddress: "203.0.113.9")
    let encoded = Data(raw.utf8).base64EncodedString()
    #expect(
      request.bodyJSON
        == Array(#"{"httpBody":{"contentType":"application/x-www-form-urlencoded","data":"\#(encoded)"}}"#.utf8))
    #expect(request.parameters.serialized == #"{"signature":"t=1,v1=x","sourceIp":"203.0.113.9"}"#)
    // Fields the gateway fills cannot come from the client.
    #expect(
      refusal {
        try transcode(
          "POST", "/v1/hooks", body: "http_body", query: "signature=forged", body: raw,
          headerFields: ["signature": "Stripe-Signature"])
      }?.field == "signature")
  }

  // MARK: Body validation names the field

  @Test func bodyValidationNamesTheField() throws {
    func field(_ body: String) -> String? { refusal { try transcode("POST", body: "*", body: body) }?.field }
    #expect(field(#"{"isAdmin": true}"#) == "isAdmin")
    #expect(field(#"{"pageSize": "many"}"#) == "pageSize")
    #expect(field(#"{"page_size": 1.5}"#) == "page_size")
    #expect(field(#"{"pageSize": 4294967296}"#) == "pageSize")
    #expect(field(#"{"big": "12x"}"#) == "big")
    #expect(field(#"{"flag": "true"}"#) == "flag")
    #expect(field(#"{"ratio": true}"#) == "ratio")
    #expect(field(#"{"tags": "a"}"#) == "tags")
    #expect(field(#"{"tags": ["a", 1]}"#) == "tags[1]")
    #expect(field(#"{"tags": ["a", null]}"#) == "tags[1]")
    #expect(field(#"{"role": "OWNER"}"#) == "role")
    #expect(field(#"{"roles": ["ADMIN", true]}"#) == "roles[1]")
    #expect(field(#"{"product": {"dims": {"widthMm": -1}}}"#) == "product.dims.widthMm")
    #expect(field(#"{"product": {"colour": "red"}}"#) == "product.colour")
    #expect(field(#"{"product": []}"#) == "product")
    #expect(field(#"{"items": [{"sku": "a"}, {"qty": 1}]}"#) == "items[1].qty")
    #expect(field(#"{"since": "2024-13-01T00:00:00Z"}"#) == "since")
    #expect(field(#"{"since": 1700000000}"#) == "since")
    #expect(field(#"{"limit": "x"}"#) == "limit")
    #expect(field(#"{"labels": {"a": 1}}"#) == "labels[a]")
    #expect(field(#"{"counts": {"x": 1}}"#) == "counts[x]")
    #expect(field(#"{"data": "not base64!"}"#) == "data")
    #expect(field(#"{"pageSize": 1, "page_size": 2}"#) == "page_size")
    #expect(field(#"{"mask": "price_cents"}"#) == "mask", "JSON field masks are lowerCamelCase")
    #expect(field(#"{"since": "2024-01-31t12:00:00z"}"#) == "since")
  }

  @Test func bodyValidationAcceptsProto3JSONForms() throws {
    let good = [
      #"{"pageSize": 1, "big": "-9223372036854775808", "ratio": "Infinity", "flag": false}"#,
      #"{"page_size": "7", "big": 12, "ratio": 1e3, "role": 2, "roles": ["ADMIN", 0]}"#,
      #"{"pageSize": 1e2, "product": null, "tags": null, "since": "2024-01-31T12:00:00.123456789+02:00"}"#,
      #"{"labels": {"a": "b"}, "counts": {"-5": 1}, "data": "aGk", "limit": "9", "mask": "product.id,pageSize"}"#,
      #"{"items": [{"sku": "a", "quantity": 2}], "product": {"id": "p", "price_cents": "5", "dims": {}}}"#,
    ]
    for body in good {
      let refused = refusal { try transcode("POST", body: "*", body: body) }
      #expect(refused == nil, "\(body): \(String(describing: refused))")
    }
  }
}
