import AsyncHTTPClient
import Foundation
import Logging
import MartProto
import MartRuntime
import NIOCore
import NIOHTTP1

/// What the customer's checkout needs beyond the payment row.
struct Checkout: Sendable {
  var returnURL: String?
  var cancelURL: String?
  var sandboxOutcome: Mart_Payment_V1_CreatePaymentRequest.SandboxOutcome
  /// The recipient on the order's shipping address (PayFast's name fields).
  var customerName: String
  var itemName: String
}

/// What a provider said when a payment was started.
struct ProviderStart: Sendable {
  /// The provider's id for it, when it assigns one at once (Stripe, sandbox).
  var providerPaymentID: String?
  /// Stripe: the PaymentIntent's client secret.
  var clientSecret: String?
  /// PayFast: the form the browser posts.
  var redirectForm: Mart_Payment_V1_RedirectForm?
  /// The sandbox's outcome, known at once; nil for a real provider (its webhook tells).
  var outcome: ProviderOutcome?
}

/// Where a payment stands at its provider.
enum ProviderOutcome: Sendable, Equatable {
  case succeeded
  case processing
  case failed(code: String, message: String)
  case cancelled
}

/// Where a refund stands at its provider.
enum RefundOutcome: Sendable, Equatable {
  case succeeded(providerRefundID: String)
  /// Asked for; the provider's webhook (or a later look) tells how it ended.
  case pending(providerRefundID: String)
  case failed(providerRefundID: String?, message: String)
}

/// One payment provider: how a payment is started and refunded. The webhooks, which differ
/// most, are the RPC handlers' part (`StripeWebhooks`, `PayFastITN`).
protocol PaymentProviderClient: Sendable {
  var kind: PaymentProvider { get }
  func start(_ payment: PaymentRecord, checkout: Checkout) async throws -> ProviderStart
  func refund(_ refund: RefundRecord, of payment: PaymentRecord) async throws -> RefundOutcome
  /// Withdraws a superseded payment at the provider, so that it can no longer be paid (money
  /// that arrives anyway is refunded as surplus or by the order's rules).
  func cancel(_ payment: PaymentRecord) async throws
  /// Where a started payment stands at the provider now; nil when the provider cannot be asked
  /// (its notification tells) or the customer has not acted yet.
  func lookUp(_ payment: PaymentRecord) async throws -> ProviderOutcome?
  /// Where a refund the provider took as pending stands now.
  func lookUp(_ refund: RefundRecord) async throws -> RefundOutcome
}

extension PaymentProviderClient {
  func lookUp(_ payment: PaymentRecord) async throws -> ProviderOutcome? { nil }
  func lookUp(_ refund: RefundRecord) async throws -> RefundOutcome {
    throw ProviderRefused(code: "lookup_unsupported", message: "\(kind.rawValue) refunds cannot be looked up")
  }
}

/// A provider call that may succeed if tried again: a timeout, a connection failure, a 5xx or a
/// 429. The payment or refund stays PENDING and the worker retries with the same idempotency key.
struct ProviderUnavailable: Error, CustomStringConvertible {
  var description: String
}

/// A provider's definite refusal (a 4xx): retrying the same request cannot help.
struct ProviderRefused: Error, CustomStringConvertible {
  var code: String
  var message: String
  /// The provider's HTTP status, when it answered with one.
  var httpStatus: UInt? = nil
  var description: String { "\(code): \(message)" }
  /// The object asked about does not exist there (a 404).
  var isNotFound: Bool { httpStatus == 404 }
}

/// The sandbox: no network and no money. Its outcomes are chosen by the client
/// (`sandbox_outcome`), and a success goes through the same code a real webhook takes.
struct SandboxProvider: PaymentProviderClient {
  var kind: PaymentProvider { .sandbox }

  func start(_ payment: PaymentRecord, checkout: Checkout) async throws -> ProviderStart {
    let id = "sbx_" + payment.id.uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    switch checkout.sandboxOutcome {
    case .unspecified, .succeed, .UNRECOGNIZED:
      return ProviderStart(providerPaymentID: id, outcome: .succeeded)
    case .fail:
      return ProviderStart(
        providerPaymentID: id, outcome: .failed(code: "card_declined", message: "The sandbox declined the card"))
    case .stayPending:
      return ProviderStart(providerPaymentID: id, outcome: nil)
    }
  }

  func refund(_ refund: RefundRecord, of payment: PaymentRecord) async throws -> RefundOutcome {
    .succeeded(providerRefundID: "sbxre_" + refund.id.uuidString.replacingOccurrences(of: "-", with: "").lowercased())
  }

  func cancel(_ payment: PaymentRecord) async throws {}
}

/// Outbound HTTP for the providers: async-http-client with a deadline on every call, and the
/// classification every provider shares (5xx, 429 and transport errors may pass; 4xx do not).
struct ProviderHTTP: Sendable {
  let client: HTTPClient
  let timeout: Duration

  struct Response: Sendable {
    var status: HTTPResponseStatus
    var body: ByteBuffer
  }

  func send(
    _ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], form: [(String, String)]? = nil,
    rawBody: String? = nil
  ) async throws -> Response {
    var request = HTTPClientRequest(url: url)
    request.method = method
    for (name, value) in headers { request.headers.add(name: name, value: value) }
    if let form {
      request.headers.replaceOrAdd(name: "Content-Type", value: "application/x-www-form-urlencoded")
      request.body = .bytes(ByteBuffer(string: FormEncoding.encode(form)))
    } else if let rawBody {
      request.headers.replaceOrAdd(name: "Content-Type", value: "application/x-www-form-urlencoded")
      request.body = .bytes(ByteBuffer(string: rawBody))
    }
    let response: HTTPClientResponse
    let body: ByteBuffer
    do {
      response = try await client.execute(request, timeout: .nanoseconds(Int64(timeout.microseconds) * 1000))
      body = try await response.body.collect(upTo: 1 << 20)
    } catch {
      throw ProviderUnavailable(description: "\(method) \(Self.redacted(url)): \(error)")
    }
    if response.status.code >= 500 || response.status == .tooManyRequests {
      throw ProviderUnavailable(description: "\(method) \(Self.redacted(url)) answered \(response.status.code)")
    }
    return Response(status: response.status, body: body)
  }

  /// The URL without its query (which could carry a secret), for logs and errors.
  static func redacted(_ url: String) -> String {
    String(url.prefix { $0 != "?" })
  }
}
