import Foundation
import GRPCCore
import GRPCProtobuf
import MartProto
import MartRuntime
import Testing

@testable import Gateway

@Suite struct ErrorMappingTests {
  @Test func grpcCodesMapToHTTPStatusesLikeGrpcGateway() {
    let table: [(Google_Rpc_Code, Int)] = [
      (.ok, 200), (.cancelled, 499), (.unknown, 500), (.invalidArgument, 400), (.deadlineExceeded, 504),
      (.notFound, 404), (.alreadyExists, 409), (.permissionDenied, 403), (.unauthenticated, 401),
      (.resourceExhausted, 429), (.failedPrecondition, 400), (.aborted, 409), (.outOfRange, 400),
      (.unimplemented, 501), (.internal, 500), (.unavailable, 503), (.dataLoss, 500),
    ]
    for (code, status) in table {
      #expect(GatewayError.httpStatus(for: code).code == status, "\(code)")
    }
  }

  func json(_ error: GatewayError) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(error.statusJSON)) as? [String: Any])
  }

  @Test func upstreamRichDetailsArePassedOnAsJSON() throws {
    let status = GoogleRPCStatus(
      code: .alreadyExists, message: "email already registered",
      details: [
        .errorInfo(reason: "EMAIL_ALREADY_REGISTERED", domain: "mart", metadata: ["email": "a@example.com"]),
        .badRequest(violations: [.init(field: "email", description: "taken")]),
        .debugInfo(stack: ["frame"], detail: "secret"),
      ])
    let error = GatewayError.upstream(RPCError(status), service: "user", requestID: "r1")
    #expect(error.httpStatus == .conflict)
    let body = try json(error)
    #expect(body["code"] as? Int == 6)
    #expect(body["message"] as? String == "email already registered")
    let details = try #require(body["details"] as? [[String: Any]])
    #expect(details.count == 2, "DebugInfo stays inside: \(details)")
    #expect(details[0]["@type"] as? String == "type.googleapis.com/google.rpc.ErrorInfo")
    #expect(details[0]["reason"] as? String == "EMAIL_ALREADY_REGISTERED")
    #expect(details[1]["@type"] as? String == "type.googleapis.com/google.rpc.BadRequest")
    let violations = try #require(details[1]["fieldViolations"] as? [[String: Any]])
    #expect(violations.first?["field"] as? String == "email")
  }

  /// A service's RetryInfo becomes Retry-After, in whole seconds rounded up: a full
  /// password-hashing queue is a 503 the client knows when to retry.
  @Test func anUpstreamRetryInfoBecomesRetryAfter() throws {
    let status = GoogleRPCStatus(
      code: .unavailable, message: "too many sign-ins at once",
      details: [.errorInfo(reason: "OVERLOADED", domain: "mart"), .retryInfo(delay: .milliseconds(2500))])
    let error = GatewayError.upstream(RPCError(status), service: "user", requestID: "r2")
    #expect(error.httpStatus == .serviceUnavailable)
    #expect(error.headers[.retryAfter] == "3")
    #expect(try json(error)["message"] as? String == "too many sign-ins at once")
  }

  /// A service whose database is down answers `APIStatus.databaseUnavailable` at once: the client
  /// gets 503 with Retry-After, not a 504 after the upstream deadline.
  @Test func aServiceWithoutItsDatabaseIs503WithRetryAfter() throws {
    let error = GatewayError.upstream(RPCError(APIStatus.databaseUnavailable), service: "product", requestID: "r3")
    #expect(error.httpStatus == .serviceUnavailable)
    #expect(error.headers[.retryAfter] == "1")
    #expect(try json(error)["message"] as? String == "the database is unavailable; try again")
  }

  @Test func internalErrorsSayNothingButTheRequestID() throws {
    for code in [RPCError.Code.internalError, .unknown, .dataLoss] {
      let error = GatewayError.upstream(
        RPCError(code: code, message: "password hash for bob@example.com failed at db.go:42"), service: "user",
        requestID: "req-7")
      #expect(error.httpStatus == .internalServerError)
      let text = String(decoding: error.statusJSON, as: UTF8.self)
      #expect(!text.contains("bob@example.com"))
      #expect(text.contains("req-7"))
    }
  }

  @Test func unreachableServicesAre503WithoutTransportDetail() throws {
    let error = GatewayError.upstream(
      RPCError(code: .unavailable, message: "Could not connect to 10.1.2.3:8006"), service: "user", requestID: "r")
    #expect(error.httpStatus == .serviceUnavailable)
    #expect(!error.message.contains("10.1.2.3"))
    let deadline = GatewayError.upstream(
      RPCError(code: .deadlineExceeded, message: "x"), service: "order", requestID: "r")
    #expect(deadline.httpStatus == .gatewayTimeout)
  }

  @Test func theGatewaysOwnErrorsAreStatusBodies() throws {
    let bad = try json(.badRequest(.init(field: "email", description: "expected a string")))
    #expect(bad["code"] as? Int == 3)
    #expect(bad["message"] as? String == "email: expected a string")
    let details = try #require(bad["details"] as? [[String: Any]])
    #expect(details.first?["@type"] as? String == "type.googleapis.com/google.rpc.BadRequest")
    let notAllowed = GatewayError.methodNotAllowed("DELETE", allowed: ["GET", "POST"])
    #expect(notAllowed.httpStatus == .methodNotAllowed)
    #expect(notAllowed.headers[.allow] == "GET, POST")
    #expect(try json(notAllowed)["code"] as? Int == 12)
    let response = GatewayError.contentTooLarge(limit: 10).response()
    #expect(response.status.code == 413)
    #expect(response.headers[.contentType] == "application/json")
  }
}
