import Foundation
import Hummingbird
import MartRuntime
import MartTestSupport
import NIOCore
import Testing

@testable import NotificationService

// Note: no closure literal inside `#expect(...)` in these tests (see InventoryHarness); values
// are computed first and then expected.

/// The Twilio SMS transport against a stand-in for Twilio's Messages API on loopback (it answers
/// by the `To` number, the way Twilio's test credentials answer their magic numbers), Twilio's
/// request signature against its documented example, and the settings from the environment.
@Suite struct TwilioTests {
  static let accountSID = "AC0123456789abcdef0123456789abcdef"
  static let authToken = "twilio_test_token_5f1d"
  static let from = "+15005550006"
  static let messagingService = "MG0123456789abcdef0123456789abcdef"
  /// base64("AC0123456789abcdef0123456789abcdef:twilio_test_token_5f1d"), computed with Python.
  static let basicAuthorization = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0d2lsaW9fdGVzdF90b2tlbl81ZjFk"

  // MARK: The stand-in

  /// One request as the stand-in received it.
  struct Received: Sendable {
    var method: String
    var path: String
    var authorization: String?
    var contentType: String?
    var rawBody: String
    var form: [(String, String)]

    func field(_ name: String) -> String? {
      form.first { $0.0 == name }?.1
    }
  }

  /// Twilio's Messages API as far as the transport uses it. By the `To` number's ending: 0001
  /// is refused as invalid (21211), 0429 is rate-limited (20429), 0500 is a server error, 0999
  /// is never answered (until the test ends); any other number is queued.
  actor FakeTwilio {
    private(set) var received: [Received] = []
    private(set) var issued: [String] = []
    private var released = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func handle(_ request: Received) async -> (Int, String) {
      received.append(request)
      guard request.authorization == TwilioTests.basicAuthorization else {
        return (
          401,
          #"{"code":20003,"detail":"Your AccountSid or AuthToken was incorrect.","message":"Authenticate","status":401}"#
        )
      }
      guard request.path == "/2010-04-01/Accounts/\(TwilioTests.accountSID)/Messages.json" else {
        return (404, #"{"code":20404,"message":"The requested resource was not found","status":404}"#)
      }
      let to = request.field("To") ?? ""
      if to.hasSuffix("0001") {
        return (400, #"{"code":21211,"message":"The 'To' number is not a valid phone number.","status":400}"#)
      }
      if to.hasSuffix("0429") {
        return (429, #"{"code":20429,"message":"Too Many Requests","status":429}"#)
      }
      if to.hasSuffix("0500") {
        return (500, "Internal Server Error")
      }
      if to.hasSuffix("0999") {
        await untilReleased()
        return (503, "")
      }
      let sid = "SM" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
      issued.append(sid)
      return (201, #"{"sid":"\#(sid)","status":"queued","to":"\#(to)","num_segments":"1"}"#)
    }

    /// Lets every unanswered request end, so that the server can shut down.
    func release() {
      released = true
      for continuation in waiting { continuation.resume() }
      waiting = []
    }

    private func untilReleased() async {
      if released { return }
      await withCheckedContinuation { continuation in waiting.append(continuation) }
    }
  }

  /// Serves a stand-in on a free loopback port while `body` runs with it and its base URL.
  static func withFakeTwilio(_ body: (FakeTwilio, String) async throws -> Void) async throws {
    let fake = FakeTwilio()
    let router = Router()
    router.post("**") { request, _ -> Response in
      let bytes = try await request.body.collect(upTo: 1 << 16)
      let raw = String(buffer: bytes)
      let received = Received(
        method: request.method.rawValue, path: request.uri.path, authorization: request.headers[.authorization],
        contentType: request.headers[.contentType], rawBody: raw, form: Self.decodeForm(raw))
      let (status, json) = await fake.handle(received)
      return Response(
        status: .init(code: status), headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(string: json)))
    }
    let (ports, announce) = AsyncStream.makeStream(of: Int.self)
    let app = Application(
      router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
      onServerRunning: { channel in
        announce.yield(channel.localAddress?.port ?? 0)
        announce.finish()
      }, logger: TestBed.logger)
    try await withServices([app]) {
      var iterator = ports.makeAsyncIterator()
      let port = try #require(await iterator.next())
      // An unanswered request would hold the server's shutdown: release it however the test ends.
      do {
        try await body(fake, "http://127.0.0.1:\(port)")
      } catch {
        await fake.release()
        throw error
      }
      await fake.release()
    }
  }

  /// A form body's fields in order, as a server reads them (`+` is a space).
  static func decodeForm(_ body: String) -> [(String, String)] {
    body.split(separator: "&").map { pair in
      let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      func decoded(_ text: Substring) -> String {
        text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "<malformed>"
      }
      return (decoded(parts[0]), parts.count > 1 ? decoded(parts[1]) : "")
    }
  }

  static func settings(
    _ baseURL: String, sender: TwilioSettings.Sender = .from(from), authToken: String = authToken,
    timeout: Duration = .seconds(10)
  ) -> TwilioSettings {
    TwilioSettings(accountSID: accountSID, authToken: authToken, sender: sender, baseURL: baseURL, timeout: timeout)
  }

  static func sms(_ to: String, _ body: String = "Your order M-1042 is paid.") -> OutgoingSMS {
    OutgoingSMS(deliveryID: UUID(), to: to, body: body)
  }

  /// The DeliveryFailure `send` threw; nil, with an issue recorded, if it sent or threw another error.
  static func failure(_ transport: TwilioSMSTransport, _ sms: OutgoingSMS) async -> DeliveryFailure? {
    do {
      let sid = try await transport.send(sms)
      Issue.record("sent as \(sid) where a failure was expected")
      return nil
    } catch let failure as DeliveryFailure {
      return failure
    } catch {
      Issue.record("not a DeliveryFailure: \(error)")
      return nil
    }
  }

  // MARK: Sending

  @Test func sendsTheDocumentedRequestAndReturnsTheMessageSID() async throws {
    try await Self.withFakeTwilio { fake, baseURL in
      let transport = TwilioSMSTransport(settings: Self.settings(baseURL))
      let body = "Ihre Bestellung M-1042 ist bezahlt: 12,50 € & mehr = Grüße +1 100%"
      let sid = try await transport.send(Self.sms("+15005550006", body))

      let received = await fake.received
      #expect(received.count == 1)
      let request = try #require(received.first)
      #expect(request.method == "POST")
      #expect(request.path == "/2010-04-01/Accounts/\(Self.accountSID)/Messages.json")
      #expect(request.authorization == Self.basicAuthorization)
      #expect(request.contentType == "application/x-www-form-urlencoded")
      let names = request.form.map(\.0)
      #expect(names == ["To", "From", "Body"])
      #expect(request.field("To") == "+15005550006")
      #expect(request.field("From") == Self.from)
      #expect(request.field("Body") == body)
      // The numbers' `+` is escaped: left as it is, a form reads it as a space.
      #expect(request.rawBody.hasPrefix("To=%2B15005550006&From=%2B15005550006&Body="))

      let issued = await fake.issued
      #expect(issued == [sid])
      #expect(sid.hasPrefix("SM"))
      #expect(sid.count == 34)
    }
  }

  @Test func aMessagingServiceSendsAndALongBodyIsCutToTwiliosLimit() async throws {
    try await Self.withFakeTwilio { fake, baseURL in
      let transport = TwilioSMSTransport(
        settings: Self.settings(baseURL, sender: .messagingService(Self.messagingService)))
      _ = try await transport.send(Self.sms("+4915112345678", String(repeating: "a", count: 2000)))
      let request = try #require(await fake.received.first)
      let names = request.form.map(\.0)
      #expect(names == ["To", "MessagingServiceSid", "Body"])
      #expect(request.field("MessagingServiceSid") == Self.messagingService)
      let sent = try #require(request.field("Body"))
      #expect(sent.count == 1600)
      #expect(sent == String(repeating: "a", count: 1599) + "…")
    }
  }

  @Test func twiliosRefusalsArePermanentAndItsOverloadRetryable() async throws {
    try await Self.withFakeTwilio { fake, baseURL in
      let transport = TwilioSMSTransport(settings: Self.settings(baseURL))

      let invalid = try #require(await Self.failure(transport, Self.sms("+15005550001")))
      #expect(!invalid.retryable)
      #expect(invalid.message.contains("21211"))
      #expect(invalid.message.contains("The 'To' number is not a valid phone number."))

      let limited = try #require(await Self.failure(transport, Self.sms("+15005550429")))
      #expect(limited.retryable)
      #expect(limited.message.contains("20429"))

      let broken = try #require(await Self.failure(transport, Self.sms("+15005550500")))
      #expect(broken.retryable)
      #expect(broken.message.contains("500"))

      // Wrong credentials: no retry helps until the configuration is fixed; the token is not told.
      let wrongToken = "wrong_token_7c2a"
      let refused = TwilioSMSTransport(settings: Self.settings(baseURL, authToken: wrongToken))
      let unauthenticated = try #require(await Self.failure(refused, Self.sms("+15005550006")))
      #expect(!unauthenticated.retryable)
      #expect(unauthenticated.message.contains("20003"))

      for failure in [invalid, limited, broken, unauthenticated] {
        #expect(!failure.message.contains(Self.authToken))
        #expect(!failure.message.contains(wrongToken))
      }
      let count = await fake.received.count
      #expect(count == 4)
    }
  }

  @Test func aNumberNotInE164IsRefusedWithoutACall() async throws {
    try await Self.withFakeTwilio { fake, baseURL in
      let transport = TwilioSMSTransport(settings: Self.settings(baseURL))
      for number in ["015112345678", "+49 151 12345678", "+0151123456", "+12345", "+1234567890123456", ""] {
        let failure = await Self.failure(transport, Self.sms(number))
        #expect(failure?.retryable == false, "\(number)")
      }
      let count = await fake.received.count
      #expect(count == 0)
    }
  }

  @Test func aTwilioThatDoesNotAnswerInTimeIsRetryable() async throws {
    try await Self.withFakeTwilio { fake, baseURL in
      let transport = TwilioSMSTransport(settings: Self.settings(baseURL, timeout: .seconds(1)))
      let failure = try #require(await Self.failure(transport, Self.sms("+15005550999")))
      #expect(failure.retryable)
      // It was the answer that never came, not the connection.
      let count = await fake.received.count
      #expect(count == 1)
    }
  }

  @Test func aTwilioThatCannotBeReachedIsRetryable() async throws {
    // A port nobody listens on: the connection is refused. The client tries to connect again
    // until the deadline, so the deadline is short.
    let port = try freePort()
    let transport = TwilioSMSTransport(settings: Self.settings("http://127.0.0.1:\(port)", timeout: .seconds(1)))
    let failure = try #require(await Self.failure(transport, Self.sms("+15005550006")))
    #expect(failure.retryable)
  }

  @Test func answersAreClassifiedByTwiliosErrorCodeThenByStatus() throws {
    let cases: [(status: UInt, body: String, retryable: Bool, mentions: String)] = [
      (401, #"{"code":20003,"message":"Authenticate","status":401}"#, false, "20003"),
      (400, #"{"code":21408,"message":"Permission to send an SMS has not been enabled","status":400}"#, false, "21408"),
      (400, #"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#, false, "21610"),
      (
        400, #"{"code":21612,"message":"The 'To' phone number is not currently reachable","status":400}"#, false,
        "21612"
      ),
      (400, #"{"code":21614,"message":"'To' number is not a valid mobile number","status":400}"#, false, "21614"),
      (400, #"{"code":21602,"message":"Message body is required.","status":400}"#, false, "21602"),
      (400, #"{"code":30001,"message":"Queue overflow","status":400}"#, true, "30001"),
      (500, #"{"code":20500,"message":"Internal Server Error","status":500}"#, true, "20500"),
      (503, #"{"code":20503,"message":"Service Unavailable","status":503}"#, true, "20503"),
      (403, "", false, "403"),
      (404, "<html>Not Found</html>", false, "404"),
      (429, "", true, "429"),
      (502, "<html>Bad Gateway</html>", true, "502"),
      (201, #"{"status":"queued"}"#, true, "without a message SID"),
    ]
    for (status, body, retryable, mentions) in cases {
      let result = TwilioSMSTransport.interpret(status: status, body: Data(body.utf8))
      guard case .failure(let failure) = result else {
        Issue.record("\(status) \(body) was taken as sent")
        continue
      }
      #expect(failure.retryable == retryable, "\(status) \(body)")
      #expect(failure.message.contains(mentions), "\(failure.message)")
    }
    let sent = TwilioSMSTransport.interpret(
      status: 201, body: Data(#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"queued"}"#.utf8))
    let sid = try sent.get()
    #expect(sid == "SM0123456789abcdef0123456789abcdef")
  }

  @Test func phoneNumbersInE164() {
    let numbers: [(String, Bool)] = [
      ("+15005550006", true), ("+4915112345678", true), ("+1234567", true), ("+123456789012345", true),
      ("+123456", false), ("+1234567890123456", false), ("+0151123456", false), ("15005550006", false),
      ("+1 500 555 0006", false), ("+1-500-555-0006", false), ("", false), ("+", false), ("+49１5112345678", false),
    ]
    for (number, valid) in numbers {
      #expect(PhoneNumber.isE164(number) == valid, "\(number)")
    }
  }

  // MARK: Signatures

  /// Twilio's example (twilio.com/docs/usage/webhooks/webhooks-security), as also given in the
  /// workplace's shared vectors (twilio-signature.json); the parameters in another order than
  /// the signed one, since the scheme sorts them.
  static let documentedURL = "https://mycompany.com/myapp.php?foo=1&bar=2"
  static let documentedParameters = [
    ("To", "+18005551212"), ("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("From", "+14158675309"),
    ("Digits", "1234"),
  ]

  @Test func theSignatureMatchesTwiliosDocumentedExample() {
    let signature = TwilioSignature.compute(
      url: Self.documentedURL, parameters: Self.documentedParameters, authToken: "12345")
    #expect(signature == "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    let valid = TwilioSignature.isValid(
      "RSOYDt4T1cUTdK1PDd93/VVr8B8=", url: Self.documentedURL, parameters: Self.documentedParameters,
      authToken: "12345")
    #expect(valid)

    var changed = Self.documentedParameters
    changed[4].1 = "1235"
    let changedParameter = TwilioSignature.isValid(
      "RSOYDt4T1cUTdK1PDd93/VVr8B8=", url: Self.documentedURL, parameters: changed, authToken: "12345")
    #expect(!changedParameter)
    let changedURL = TwilioSignature.isValid(
      "RSOYDt4T1cUTdK1PDd93/VVr8B8=", url: "https://mycompany.com/myapp.php?foo=1&bar=3",
      parameters: Self.documentedParameters, authToken: "12345")
    #expect(!changedURL)
    let otherToken = TwilioSignature.isValid(
      "RSOYDt4T1cUTdK1PDd93/VVr8B8=", url: Self.documentedURL, parameters: Self.documentedParameters,
      authToken: "12346")
    #expect(!otherToken)
    let garbage = TwilioSignature.isValid(
      "not a signature", url: Self.documentedURL, parameters: Self.documentedParameters, authToken: "12345")
    #expect(!garbage)
    let empty = TwilioSignature.isValid(
      "", url: Self.documentedURL, parameters: Self.documentedParameters, authToken: "12345")
    #expect(!empty)
  }

  @Test func theSignatureSortsByNameAndSignsUTF8() {
    // A status callback with an empty value and non-ASCII text; the signature computed with
    // Python's hmac and hashlib (sorted by name, url + name + value, base64 of HMAC-SHA1).
    let parameters = [
      ("MessageStatus", "delivered"), ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
      ("AccountSid", "AC0123456789abcdef0123456789abcdef"), ("ErrorCode", ""), ("Body", "Grüße"),
    ]
    let signature = TwilioSignature.compute(
      url: "https://shop.example/v1/webhooks/twilio/status", parameters: parameters, authToken: "auth_token_test")
    #expect(signature == "X6zllObUgjymVDY2osBDyC9yhgE=")
  }

  // MARK: Settings

  static let fullEnvironment = [
    "MART_TWILIO_ACCOUNT_SID": accountSID, "MART_TWILIO_AUTH_TOKEN": authToken, "MART_TWILIO_FROM": from,
  ]

  /// The ConfigurationError reading `values` threw; nil if it threw none.
  static func configurationError(_ values: [String: String]) -> ConfigurationError? {
    do {
      _ = try TwilioSettings.fromEnvironment(EnvironmentReader(values))
      return nil
    } catch let error as ConfigurationError {
      return error
    } catch {
      Issue.record("not a ConfigurationError: \(error)")
      return nil
    }
  }

  @Test func withoutCredentialsThereIsNoTwilio() throws {
    let none = try TwilioSettings.fromEnvironment(EnvironmentReader([:])) == nil
    #expect(none)
    // Empty values (as compose passes unset ones) are unset.
    let empty =
      try TwilioSettings.fromEnvironment(
        EnvironmentReader(["MART_TWILIO_ACCOUNT_SID": "", "MART_TWILIO_AUTH_TOKEN": "", "MART_TWILIO_FROM": ""]))
      == nil
    #expect(empty)
  }

  @Test func settingsAreReadFromTheEnvironment() throws {
    let settings = try #require(try TwilioSettings.fromEnvironment(EnvironmentReader(Self.fullEnvironment)))
    #expect(settings.accountSID == Self.accountSID)
    #expect(settings.authToken == Self.authToken)
    #expect(settings.sender == .from(Self.from))
    #expect(settings.baseURL == "https://api.twilio.com")
    #expect(settings.timeout == .seconds(10))

    var service = Self.fullEnvironment
    service["MART_TWILIO_FROM"] = nil
    service["MART_TWILIO_MESSAGING_SERVICE_SID"] = Self.messagingService
    service["MART_TWILIO_BASE_URL"] = "http://127.0.0.1:8089/"
    service["MART_TWILIO_TIMEOUT"] = "2500ms"
    let other = try #require(try TwilioSettings.fromEnvironment(EnvironmentReader(service)))
    #expect(other.sender == .messagingService(Self.messagingService))
    #expect(other.baseURL == "http://127.0.0.1:8089")
    #expect(other.timeout == .milliseconds(2500))

    // The token shows nowhere it could be logged.
    let transport = TwilioSMSTransport(settings: settings)
    #expect(transport.summary == "twilio https://api.twilio.com account AC…cdef")
    let description = "\(settings)"
    #expect(!description.contains(Self.authToken))
  }

  @Test func aHalfConfigurationIsRefusedNamingTheVariable() {
    func without(_ name: String) -> [String: String] {
      var values = Self.fullEnvironment
      values[name] = nil
      return values
    }
    func with(_ name: String, _ value: String) -> [String: String] {
      var values = Self.fullEnvironment
      values[name] = value
      return values
    }
    let cases: [(String, [String: String], String)] = [
      ("SID without token", without("MART_TWILIO_AUTH_TOKEN"), "MART_TWILIO_AUTH_TOKEN"),
      ("token without SID", without("MART_TWILIO_ACCOUNT_SID"), "MART_TWILIO_ACCOUNT_SID"),
      ("no sender", without("MART_TWILIO_FROM"), "MART_TWILIO_FROM"),
      (
        "both senders", with("MART_TWILIO_MESSAGING_SERVICE_SID", Self.messagingService),
        "MART_TWILIO_MESSAGING_SERVICE_SID"
      ),
      ("FROM not in E.164", with("MART_TWILIO_FROM", "0151 12345678"), "MART_TWILIO_FROM"),
      ("FROM without its +", with("MART_TWILIO_FROM", "15005550006"), "MART_TWILIO_FROM"),
      ("base URL not http(s)", with("MART_TWILIO_BASE_URL", "ftp://api.twilio.com"), "MART_TWILIO_BASE_URL"),
      ("base URL not a URL", with("MART_TWILIO_BASE_URL", "api.twilio.com"), "MART_TWILIO_BASE_URL"),
      ("timeout without a unit", with("MART_TWILIO_TIMEOUT", "10"), "MART_TWILIO_TIMEOUT"),
      ("SID and token swapped", with("MART_TWILIO_ACCOUNT_SID", Self.authToken), "MART_TWILIO_ACCOUNT_SID"),
      (
        "messaging service SID malformed",
        with("MART_TWILIO_MESSAGING_SERVICE_SID", "MG123").merging(["MART_TWILIO_FROM": ""]) { _, new in new },
        "MART_TWILIO_MESSAGING_SERVICE_SID"
      ),
    ]
    for (name, values, variable) in cases {
      let error = Self.configurationError(values)
      #expect(error?.variable == variable, "\(name)")
      // Not even in the error that stops start-up, which is printed.
      let text = error.map { "\($0)" } ?? ""
      #expect(!text.contains(Self.authToken), "\(name)")
    }
  }
}

/// The SMS channel end to end: an OrderPaid reaches the sender, which texts through the Twilio
/// stand-in and records what Twilio answered in the delivery log.
@Suite struct TwilioDeliveryTests {
  struct SMSRow: Sendable {
    var status: String
    var attempts: Int
    var providerMessageID: String?
    var lastError: String?
  }

  static func smsRow(_ mart: NotificationHarness, of userID: UUID) async throws -> SMSRow? {
    let rows = try await mart.database.query(
      """
      SELECT status, attempt_count, provider_message_id, last_error FROM deliveries
      WHERE user_id = \(userID) AND channel = 'sms'
      """, logger: TestBed.logger)
    for try await (status, attempts, providerID, error) in rows.decode((String, Int32, String?, String?).self) {
      return SMSRow(status: status, attempts: Int(attempts), providerMessageID: providerID, lastError: error)
    }
    return nil
  }

  /// A customer with texts on for orders, and their paid order published.
  static func customerWithAPaidOrder(_ mart: NotificationHarness, email: String, phone: String) async throws -> UUID {
    let (userID, auth) = try await mart.register(email, phone: phone)
    try await mart.waitUntilKnown(userID)
    _ = try await mart.notifications.updateMyPreferences(
      .with {
        $0.preferences.orders.sms = true
        $0.updateMask.paths = ["orders.sms"]
      }, metadata: auth)
    let paid = NotificationHarness.orderPaid(userID)
    try await mart.publish(paid, subject: paid.orderID)
    return userID
  }

  /// Accepted → SENT with Twilio's message SID kept; a refused number (21211) → FAILED after one
  /// try; Twilio's rate limit (20429) → retried until the attempts run out, then FAILED with
  /// Twilio's word kept.
  @Test func textsAreSentThroughTwilioAndItsAnswersDecideTheDelivery() async throws {
    try await TwilioTests.withFakeTwilio { fake, baseURL in
      var settings = try NotificationHarness.settings()
      settings.twilio = TwilioTests.settings(baseURL)
      try await NotificationHarness.run("notify_twilio", settings: settings) { mart in
        let accepted = try await Self.customerWithAPaidOrder(mart, email: "lerato@example.com", phone: "+27821230042")
        let refused = try await Self.customerWithAPaidOrder(mart, email: "pieter@example.com", phone: "+27821230001")
        let limited = try await Self.customerWithAPaidOrder(mart, email: "naledi@example.com", phone: "+27821230429")

        for user in [accepted, refused, limited] {
          _ = try await mart.settledDeliveries(of: user, count: 3)
        }
        let sent = try #require(try await Self.smsRow(mart, of: accepted))
        #expect(sent.status == "sent")
        #expect(sent.attempts == 1)
        let issued = await fake.issued
        #expect(issued.count == 1)
        #expect(sent.providerMessageID == issued.first)

        let invalid = try #require(try await Self.smsRow(mart, of: refused))
        #expect(invalid.status == "failed")
        #expect(invalid.attempts == 1)
        #expect(invalid.lastError?.contains("21211") == true)
        #expect(invalid.providerMessageID == nil)

        let exhausted = try #require(try await Self.smsRow(mart, of: limited))
        #expect(exhausted.status == "failed")
        #expect(exhausted.attempts == settings.maximumAttempts)
        #expect(exhausted.lastError?.contains("20429") == true)

        // Exactly the calls the log says were made: one each, and every retry of the limited one.
        let calls = await fake.received.compactMap { $0.field("To") }
        #expect(calls.filter { $0 == "+27821230042" }.count == 1)
        #expect(calls.filter { $0 == "+27821230001" }.count == 1)
        #expect(calls.filter { $0 == "+27821230429" }.count == settings.maximumAttempts)
        let body = await fake.received.first { $0.field("To") == "+27821230042" }?.field("Body")
        #expect(body?.contains("M-2026-000042") == true)
      }
    }
  }
}
