import AsyncHTTPClient
import Crypto
import Foundation
import MartRuntime
import NIOCore
import NIOHTTP1

/// Stripe's webhook signature scheme (docs.stripe.com/webhooks#verify-manually): the
/// `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; each v1 is
/// HMAC-SHA256, keyed with an endpoint secret, of `"<t>.<raw body>"`. Any v1 matching any of
/// the configured secrets (two during a rotation) accepts; other schemes (v0) are ignored.
enum StripeSignature {
  enum Failure: Error, Equatable, CustomStringConvertible {
    case malformedHeader
    case noMatchingSignature
    case timestampOutsideTolerance

    var description: String {
      switch self {
      case .malformedHeader: "the Stripe-Signature header is not t=…,v1=…"
      case .noMatchingSignature: "no v1 signature matches the body"
      case .timestampOutsideTolerance: "the signature's timestamp is outside the tolerance"
      }
    }
  }

  /// Checks `header` against `payload` (the raw body bytes). `now` and `tolerance` bound the
  /// signed timestamp's age (nil tolerance: not checked, for test vectors).
  static func verify(
    header: String, payload: some Collection<UInt8>, secrets: [String], tolerance: Duration?, now: Date = Date()
  ) throws(Failure) {
    var timestamp: Int64?
    var signatures: [[UInt8]] = []
    for item in header.split(separator: ",") {
      let parts = item.split(separator: "=", maxSplits: 1)
      guard parts.count == 2 else { continue }
      let key = parts[0].trimmingCharacters(in: .whitespaces)
      let value = parts[1].trimmingCharacters(in: .whitespaces)
      if key == "t" {
        timestamp = Int64(value)
      } else if key == "v1", let bytes = hexBytes(value) {
        signatures.append(bytes)
      }
    }
    // At most a handful of v1 values (Stripe sends one, two during a rotation): more would only
    // be someone making each request cost many HMACs before it is authenticated.
    guard let timestamp, !signatures.isEmpty, signatures.count <= maximumSignatures else { throw .malformedHeader }
    if let tolerance {
      let age = now.timeIntervalSince1970 - Double(timestamp)
      guard abs(age) <= tolerance.timeInterval else { throw .timestampOutsideTolerance }
    }
    var signed = Array("\(timestamp).".utf8)
    signed.append(contentsOf: payload)
    var matched = false
    for secret in secrets {
      // One MAC per secret, compared with each candidate in constant time (swift-crypto's `==`
      // between a MAC and bytes does not exit early).
      let expected = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: Array(secret.utf8)))
      for signature in signatures where expected == signature { matched = true }
    }
    guard matched else { throw .noMatchingSignature }
  }

  static let maximumSignatures = 8

  /// A header signing `payload` at `timestamp` with `secret` (tests and tools).
  static func header(payload: some Collection<UInt8>, secret: String, timestamp: Int64) -> String {
    var signed = Array("\(timestamp).".utf8)
    signed.append(contentsOf: payload)
    let mac = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: Array(secret.utf8)))
    return "t=\(timestamp),v1=" + mac.map { String(format: "%02x", $0) }.joined()
  }

  static func hexBytes(_ text: String) -> [UInt8]? {
    guard text.count % 2 == 0, !text.isEmpty else { return nil }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(text.count / 2)
    var index = text.startIndex
    while index < text.endIndex {
      let next = text.index(index, offsetBy: 2)
      guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
      bytes.append(byte)
      index = next
    }
    return bytes
  }
}

/// The parts of Stripe's objects the payment service reads.
enum StripeObjects {
  struct Event: Decodable {
    var id: String
    var type: String
    var data: DataField

    struct DataField: Decodable {
      var object: ObjectHeader
    }
  }

  /// The event's object: enough to tell what it is and where it leads.
  struct ObjectHeader: Decodable {
    var id: String
    var object: String
    /// On a charge or a refund: its PaymentIntent.
    var paymentIntent: String?

    enum CodingKeys: String, CodingKey {
      case id, object
      case paymentIntent = "payment_intent"
    }
  }

  struct PaymentIntent: Decodable {
    var id: String
    var status: String
    var amount: Int64
    var currency: String
    var clientSecret: String?
    var metadata: [String: String]?
    var lastPaymentError: PaymentError?

    struct PaymentError: Decodable {
      var code: String?
      var declineCode: String?
      var message: String?

      enum CodingKeys: String, CodingKey {
        case code, message
        case declineCode = "decline_code"
      }
    }

    enum CodingKeys: String, CodingKey {
      case id, status, amount, currency, metadata
      case clientSecret = "client_secret"
      case lastPaymentError = "last_payment_error"
    }

    /// Where the payment stands, by the PaymentIntent's status (docs.stripe.com/payments/paymentintents/lifecycle).
    /// nil: still waiting for the customer (requires_payment_method without an error,
    /// requires_confirmation, requires_action, requires_capture).
    var outcome: ProviderOutcome? {
      switch status {
      case "succeeded": return .succeeded
      case "processing": return .processing
      case "canceled": return .cancelled
      case "requires_payment_method":
        guard let error = lastPaymentError else { return nil }
        return .failed(
          code: error.declineCode ?? error.code ?? "payment_failed",
          message: error.message ?? "The payment was declined")
      default: return nil
      }
    }
  }

  struct Refund: Decodable {
    var id: String
    var status: String
    var amount: Int64
    var paymentIntent: String?
    var failureReason: String?
    var metadata: [String: String]?

    enum CodingKeys: String, CodingKey {
      case id, status, amount, metadata
      case paymentIntent = "payment_intent"
      case failureReason = "failure_reason"
    }

    var outcome: RefundOutcome {
      switch status {
      case "succeeded": .succeeded(providerRefundID: id)
      case "failed", "canceled": .failed(providerRefundID: id, message: failureReason ?? "the refund \(status)")
      default: .pending(providerRefundID: id)
      }
    }
  }

  struct ErrorBody: Decodable {
    var error: Detail
    struct Detail: Decodable {
      var code: String?
      var type: String?
      var message: String?
    }
  }
}

/// Stripe's API (PaymentIntents, refunds), form-encoded, with the secret key as a bearer token
/// and an Idempotency-Key on every POST.
struct StripeProvider: PaymentProviderClient {
  let settings: StripeSettings
  let http: ProviderHTTP
  var kind: PaymentProvider { .stripe }

  /// The key of the call that creates a payment's PaymentIntent: the same for every attempt of
  /// that call, so Stripe answers a retry with the PaymentIntent it already made.
  static func createKey(_ payment: PaymentRecord) -> String { "mart-payment-\(payment.id.lowercasedString)-create" }
  static func refundKey(_ refund: RefundRecord) -> String { "mart-refund-\(refund.id.lowercasedString)" }
  static func cancelKey(_ payment: PaymentRecord) -> String { "mart-payment-\(payment.id.lowercasedString)-cancel" }

  func start(_ payment: PaymentRecord, checkout: Checkout) async throws -> ProviderStart {
    let intent: StripeObjects.PaymentIntent = try await post(
      "/v1/payment_intents", idempotencyKey: Self.createKey(payment),
      form: [
        ("amount", "\(payment.amountMinor)"),
        ("currency", payment.currency.lowercased()),
        ("payment_method_types[]", "card"),
        ("metadata[order_id]", payment.orderID.lowercasedString),
        ("metadata[payment_id]", payment.id.lowercasedString),
      ])
    guard intent.metadata?["payment_id"] == payment.id.lowercasedString || intent.metadata == nil else {
      throw ProviderRefused(code: "metadata_mismatch", message: "Stripe answered with another payment's PaymentIntent")
    }
    return ProviderStart(providerPaymentID: intent.id, clientSecret: intent.clientSecret)
  }

  func refund(_ refund: RefundRecord, of payment: PaymentRecord) async throws -> RefundOutcome {
    guard let intent = payment.providerPaymentID else {
      throw ProviderRefused(code: "no_payment_intent", message: "the payment has no PaymentIntent to refund")
    }
    let made: StripeObjects.Refund = try await post(
      "/v1/refunds", idempotencyKey: Self.refundKey(refund),
      form: [
        ("payment_intent", intent),
        ("amount", "\(refund.amountMinor)"),
        ("metadata[refund_id]", refund.id.lowercasedString),
        ("metadata[payment_id]", payment.id.lowercasedString),
      ])
    return made.outcome
  }

  func cancel(_ payment: PaymentRecord) async throws {
    guard let intent = payment.providerPaymentID else { return }
    do {
      let _: StripeObjects.PaymentIntent = try await post(
        "/v1/payment_intents/\(Self.pathComponent(intent))/cancel", idempotencyKey: Self.cancelKey(payment), form: [])
    } catch is ProviderRefused {
      // Already succeeded, processing or cancelled: nothing to withdraw.
    }
  }

  func lookUp(_ payment: PaymentRecord) async throws -> ProviderOutcome? {
    guard let id = payment.providerPaymentID else { return nil }
    return try await paymentIntent(id).outcome
  }

  func lookUp(_ refund: RefundRecord) async throws -> RefundOutcome {
    guard let id = refund.providerRefundID else {
      throw ProviderRefused(code: "no_refund", message: "the refund has no Stripe id yet")
    }
    return try await refundObject(id).outcome
  }

  func paymentIntent(_ id: String) async throws -> StripeObjects.PaymentIntent {
    try await get("/v1/payment_intents/\(Self.pathComponent(id))")
  }

  func refundObject(_ id: String) async throws -> StripeObjects.Refund {
    try await get("/v1/refunds/\(Self.pathComponent(id))")
  }

  // MARK: HTTP

  private var authorization: (String, String) { ("Authorization", "Bearer \(settings.secretKey)") }

  private func url(_ path: String) -> String {
    var base = settings.apiBase
    while base.hasSuffix("/") { base.removeLast() }
    return base + path
  }

  static func pathComponent(_ id: String) -> String {
    id.addingPercentEncoding(withAllowedCharacters: FormEncoding.unreserved) ?? ""
  }

  private func post<Object: Decodable>(_ path: String, idempotencyKey: String, form: [(String, String)]) async throws
    -> Object
  {
    let response = try await http.send(
      .POST, url(path), headers: [authorization, ("Idempotency-Key", idempotencyKey)], form: form)
    return try decode(response, path)
  }

  private func get<Object: Decodable>(_ path: String) async throws -> Object {
    try decode(try await http.send(.GET, url(path), headers: [authorization]), path)
  }

  private func decode<Object: Decodable>(_ response: ProviderHTTP.Response, _ path: String) throws -> Object {
    let decoder = JSONDecoder()
    guard response.status.code / 100 == 2 else {
      let detail = try? decoder.decode(StripeObjects.ErrorBody.self, from: Data(buffer: response.body))
      if response.status == .conflict {
        // A concurrent request with the same idempotency key is still running at Stripe.
        throw ProviderUnavailable(description: "\(path): an earlier request with the same key is in progress")
      }
      throw ProviderRefused(
        code: detail?.error.code ?? detail?.error.type ?? "http_\(response.status.code)",
        message: detail?.error.message ?? "Stripe answered \(response.status.code) to \(path)",
        httpStatus: response.status.code)
    }
    do {
      return try decoder.decode(Object.self, from: Data(buffer: response.body))
    } catch {
      throw ProviderUnavailable(description: "\(path): Stripe's answer could not be read (\(error))")
    }
  }
}
