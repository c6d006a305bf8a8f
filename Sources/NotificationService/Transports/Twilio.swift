import AsyncHTTPClient
import Crypto
import Foundation
import MartRuntime
import NIOCore

/// Twilio's account, credentials and sender. The auth token is a secret: it appears in no
/// description, summary or error, and only in the Authorization header of a call.
struct TwilioSettings: Sendable, CustomStringConvertible {
  /// Who the messages come from.
  enum Sender: Sendable, Equatable {
    /// A number of the account, in E.164.
    case from(String)
    /// A Messaging Service ("MG…"), which picks the number itself.
    case messagingService(String)
  }

  /// "AC" and 32 hexadecimal digits.
  var accountSID: String
  var authToken: String
  var sender: Sender
  /// `https://api.twilio.com`, or a stand-in (tests point it at a server on loopback); no
  /// trailing slash.
  var baseURL: String
  /// How long one call to Twilio may take, connection included.
  var timeout: Duration
  /// The public URL of `/v1/webhooks/twilio/status` that Twilio reports each text's fate to, and
  /// signs its callbacks over; nil: no callbacks.
  var statusCallbackURL: String?

  static let defaultBaseURL = "https://api.twilio.com"

  init(
    accountSID: String, authToken: String, sender: Sender, baseURL: String = TwilioSettings.defaultBaseURL,
    timeout: Duration = .seconds(10)
  ) {
    self.accountSID = accountSID
    self.authToken = authToken
    self.sender = sender
    self.baseURL = baseURL
    self.timeout = timeout
  }

  /// The account for logs: its kind and last four characters ("AC…1f2e").
  var maskedAccountSID: String { "\(accountSID.prefix(2))…\(accountSID.suffix(4))" }

  /// Without the token, so that settings printed by accident (a log line, a failed test's
  /// message) give nothing away.
  var description: String {
    "TwilioSettings(account: \(maskedAccountSID), sender: \(sender), baseURL: \(baseURL), timeout: \(timeout))"
  }

  /// From `MART_TWILIO_ACCOUNT_SID`, `MART_TWILIO_AUTH_TOKEN`, `MART_TWILIO_FROM` or
  /// `MART_TWILIO_MESSAGING_SERVICE_SID`, `MART_TWILIO_BASE_URL` and `MART_TWILIO_TIMEOUT`.
  /// Nil when neither the SID nor the token is set (SMS then go to the mailbox); a half
  /// configuration throws, naming the variable, rather than failing at the first message.
  static func fromEnvironment(_ env: EnvironmentReader) throws -> TwilioSettings? {
    let sid = env.string("MART_TWILIO_ACCOUNT_SID")
    let token = env.string("MART_TWILIO_AUTH_TOKEN")
    if sid == nil, token == nil { return nil }
    guard let sid else {
      throw ConfigurationError(
        variable: "MART_TWILIO_ACCOUNT_SID", value: "",
        reason: "MART_TWILIO_AUTH_TOKEN is set without it; Twilio needs both")
    }
    guard let token else {
      throw ConfigurationError(
        variable: "MART_TWILIO_AUTH_TOKEN", value: "",
        reason: "MART_TWILIO_ACCOUNT_SID is set without it; Twilio needs both")
    }
    // The SID goes into every request's path: checking its shape also catches the SID and the
    // token swapped, which Twilio would only answer with a 401 per message. The value is not
    // echoed, since then it is the token.
    guard isSID(sid, prefix: "AC") else {
      throw ConfigurationError(
        variable: "MART_TWILIO_ACCOUNT_SID", value: "(\(sid.count) characters, not shown)",
        reason: "expected AC followed by 32 hexadecimal digits")
    }
    let sender: Sender
    switch (env.string("MART_TWILIO_FROM"), env.string("MART_TWILIO_MESSAGING_SERVICE_SID")) {
    case (nil, nil):
      throw ConfigurationError(
        variable: "MART_TWILIO_FROM", value: "",
        reason: "Twilio needs a sender: MART_TWILIO_FROM (an E.164 number) or MART_TWILIO_MESSAGING_SERVICE_SID")
    case (.some, .some(let service)):
      throw ConfigurationError(
        variable: "MART_TWILIO_MESSAGING_SERVICE_SID", value: service,
        reason: "set either it or MART_TWILIO_FROM, not both")
    case (.some(let number), nil):
      guard PhoneNumber.isE164(number) else {
        throw ConfigurationError(
          variable: "MART_TWILIO_FROM", value: number, reason: "expected an E.164 number such as +14155550100")
      }
      sender = .from(number)
    case (nil, .some(let service)):
      guard isSID(service, prefix: "MG") else {
        throw ConfigurationError(
          variable: "MART_TWILIO_MESSAGING_SERVICE_SID", value: service,
          reason: "expected MG followed by 32 hexadecimal digits")
      }
      sender = .messagingService(service)
    }
    let base = env.string("MART_TWILIO_BASE_URL", default: defaultBaseURL)
    guard let url = URL(string: base), let scheme = url.scheme?.lowercased(), scheme == "https" || scheme == "http",
      url.host != nil, url.query == nil, url.fragment == nil
    else {
      throw ConfigurationError(
        variable: "MART_TWILIO_BASE_URL", value: base, reason: "expected an http(s) URL without a query")
    }
    var trimmed = base
    while trimmed.hasSuffix("/") { trimmed.removeLast() }
    var settings = TwilioSettings(
      accountSID: sid, authToken: token, sender: sender, baseURL: trimmed,
      timeout: try env.duration("MART_TWILIO_TIMEOUT", default: .seconds(10)))
    if let callback = env.string("MART_TWILIO_STATUS_CALLBACK_URL") {
      guard let url = URL(string: callback), let scheme = url.scheme?.lowercased(),
        scheme == "https" || scheme == "http", url.host != nil
      else {
        throw ConfigurationError(
          variable: "MART_TWILIO_STATUS_CALLBACK_URL", value: callback,
          reason: "expected the public http(s) URL of /v1/webhooks/twilio/status")
      }
      settings.statusCallbackURL = callback
    }
    return settings
  }

  /// Twilio's SIDs: a two-letter prefix for the kind of object and 32 hexadecimal digits.
  static func isSID(_ text: String, prefix: String) -> Bool {
    guard text.hasPrefix(prefix) else { return false }
    let digits = text.utf8.dropFirst(prefix.utf8.count)
    return digits.count == 32 && digits.allSatisfy(isHexDigit)
  }

  private static func isHexDigit(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
      UInt8(ascii: "A")...UInt8(ascii: "F"):
      true
    default: false
    }
  }
}

/// Phone numbers as the SMS channel takes them.
enum PhoneNumber {
  /// E.164: a plus, a country code that does not start with 0, and 7 to 15 digits in all
  /// (`^\+[1-9][0-9]{6,14}$`). Twilio takes other spellings too, but guesses their country.
  static func isE164(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    guard (8...16).contains(bytes.count), bytes[0] == UInt8(ascii: "+"), bytes[1] != UInt8(ascii: "0") else {
      return false
    }
    return bytes.dropFirst().allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
  }
}

/// Text messages through Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`,
/// form-encoded, HTTP basic auth with the account SID and auth token).
///
/// Twilio offers no idempotency key for sending a message, so an attempt that timed out after
/// Twilio accepted it is sent again when retried: a text twice is better than none.
struct TwilioSMSTransport: SMSTransport {
  let settings: TwilioSettings
  let http: HTTPClient

  init(settings: TwilioSettings, http: HTTPClient = .shared) {
    self.settings = settings
    self.http = http
  }

  var summary: String { "twilio \(settings.baseURL) account \(settings.maskedAccountSID)" }

  /// Twilio refuses a longer body (error 21617).
  static let maximumBodyLength = 1600
  /// A message's JSON is a few kilobytes; more is not Twilio.
  static let maximumAnswerSize = 256 * 1024

  var messagesURL: String {
    "\(settings.baseURL)/2010-04-01/Accounts/\(FormEncoding.escape(settings.accountSID))/Messages.json"
  }

  func send(_ sms: OutgoingSMS) async throws -> String {
    // Checked before any call, whatever the caller checked: Twilio guesses the country of a
    // number written without its code, and would text whoever has that number there.
    guard PhoneNumber.isE164(sms.to) else {
      throw DeliveryFailure.permanent("the recipient's number is not an E.164 number (+ and 7 to 15 digits)")
    }
    let body = Self.fitted(sms.body)
    guard !body.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
      throw DeliveryFailure.permanent("the text message is empty")
    }
    var form = [("To", sms.to)]
    switch settings.sender {
    case .from(let number): form.append(("From", number))
    case .messagingService(let sid): form.append(("MessagingServiceSid", sid))
    }
    form.append(("Body", body))
    if let callback = settings.statusCallbackURL { form.append(("StatusCallback", callback)) }

    var request = HTTPClientRequest(url: messagesURL)
    request.method = .POST
    request.headers.add(name: "Authorization", value: authorization)
    request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
    request.headers.add(name: "Accept", value: "application/json")
    request.body = .bytes(ByteBuffer(string: FormEncoding.encode(form)))
    let status: UInt
    let answer: ByteBuffer
    do {
      let response = try await http.execute(request, timeout: .microseconds(settings.timeout.microseconds))
      status = response.status.code
      answer = try await response.body.collect(upTo: Self.maximumAnswerSize)
    } catch {
      // Timeouts, refused or dropped connections, TLS failures: Twilio may be there next time.
      // The error names no header, so the token stays out of it.
      throw DeliveryFailure.retryable("Twilio could not be reached: \(error)")
    }
    return try Self.interpret(status: status, body: Data(answer.readableBytesView)).get()
  }

  private var authorization: String {
    "Basic " + Data("\(settings.accountSID):\(settings.authToken)".utf8).base64EncodedString()
  }

  // MARK: Answers

  struct MessageResource: Decodable {
    var sid: String?
    var status: String?
  }

  /// Twilio's error body: `{"code": 21211, "message": "…", "more_info": "…", "status": 400}`.
  struct ErrorResource: Decodable {
    var code: Int?
    var message: String?
    var detail: String?
    var status: Int?
  }

  /// What Twilio's error codes mean for a retry (twilio.com/docs/api/errors), and a few words
  /// for whoever reads the delivery's last error. Codes not listed go by the HTTP status.
  static let knownCodes: [Int: (retryable: Bool, meaning: String)] = [
    20429: (true, "too many requests"),
    30001: (true, "queue overflow"),
    20500: (true, "Twilio internal error"),
    20503: (true, "Twilio unavailable"),
    20003: (false, "authentication failed: check MART_TWILIO_ACCOUNT_SID and MART_TWILIO_AUTH_TOKEN"),
    21211: (false, "invalid To number"),
    21408: (false, "the account may not send to this region"),
    21610: (false, "the recipient has unsubscribed"),
    21612: (false, "this To and From cannot be routed"),
    21614: (false, "not a mobile number"),
  ]

  /// The message SID of a 2xx answer, or the failure an error answer means.
  static func interpret(status: UInt, body: Data) -> Result<String, DeliveryFailure> {
    let decoder = JSONDecoder()
    if (200..<300).contains(status) {
      if let message = try? decoder.decode(MessageResource.self, from: body), let sid = message.sid, !sid.isEmpty {
        return .success(sid)
      }
      // Accepted or not, we cannot tell; trying again may send it twice, giving up may lose it.
      return .failure(.retryable("Twilio answered \(status) without a message SID"))
    }
    let error = try? decoder.decode(ErrorResource.self, from: body)
    var text = "Twilio answered \(status)"
    var known: (retryable: Bool, meaning: String)?
    if let code = error?.code {
      known = knownCodes[code]
      text += ", error \(code)"
      if let known { text += " (\(known.meaning))" }
    }
    if let message = error?.message, !message.isEmpty { text += ": " + clipped(message) }
    if let detail = error?.detail, !detail.isEmpty, detail != error?.message { text += "; " + clipped(detail) }
    if let known { return .failure(DeliveryFailure(retryable: known.retryable, message: text)) }
    switch status {
    case 401, 403:
      return .failure(.permanent(text + " (check MART_TWILIO_ACCOUNT_SID and MART_TWILIO_AUTH_TOKEN)"))
    case 429, 500...:
      return .failure(.retryable(text))
    case 400..<500:
      return .failure(.permanent(text))
    default:
      // A 1xx or an unfollowed 3xx: not an answer about the message.
      return .failure(.retryable(text))
    }
  }

  /// Twilio's messages are a sentence; a proxy's error page is not, and the failure is stored.
  private static func clipped(_ text: String) -> String {
    text.count > 300 ? String(text.prefix(300)) + "…" : text
  }

  // MARK: Encoding

  /// The body cut to Twilio's limit with an ellipsis, rather than a message refused. Counted in
  /// UTF-16 units, the measure that is never below Twilio's, and cut between characters.
  static func fitted(_ body: String) -> String {
    guard body.utf16.count > maximumBodyLength else { return body }
    var kept = ""
    var length = 0
    for character in body {
      let size = character.utf16.count
      guard length + size <= maximumBodyLength - 1 else { break }
      kept.append(character)
      length += size
    }
    return kept + "…"
  }
}

/// Twilio's request signature (twilio.com/docs/usage/webhooks/webhooks-security): the
/// `X-Twilio-Signature` header of its callbacks is base64(HMAC-SHA1(auth token, the full URL
/// Twilio requested followed by each POST parameter's name and value, sorted by name)).
enum TwilioSignature {
  static func compute(url: String, parameters: [(String, String)], authToken: String) -> String {
    Data(mac(url: url, parameters: parameters, authToken: authToken)).base64EncodedString()
  }

  /// Whether `signature` (the header's value) signs this request.
  static func isValid(_ signature: String, url: String, parameters: [(String, String)], authToken: String) -> Bool {
    guard let provided = Data(base64Encoded: signature) else { return false }
    // swift-crypto's `==` between a MAC and bytes compares in constant time.
    return mac(url: url, parameters: parameters, authToken: authToken) == provided
  }

  private static func mac(
    url: String, parameters: [(String, String)], authToken: String
  ) -> HashedAuthenticationCode<Insecure.SHA1> {
    // Sorted by the bytes of the name (then of the value, for a repeated name), as Twilio's own
    // libraries do; String's `<` would compare by Unicode rules instead.
    let sorted = parameters.sorted { left, right in
      left.0 == right.0
        ? left.1.utf8.lexicographicallyPrecedes(right.1.utf8) : left.0.utf8.lexicographicallyPrecedes(right.0.utf8)
    }
    var signed = Array(url.utf8)
    for (name, value) in sorted {
      signed.append(contentsOf: name.utf8)
      signed.append(contentsOf: value.utf8)
    }
    return HMAC<Insecure.SHA1>.authenticationCode(for: signed, using: SymmetricKey(data: Array(authToken.utf8)))
  }
}
