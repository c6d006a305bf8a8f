import Foundation
import MartProto
import MartRuntime
import PostgresNIO
import SwiftProtobuf

/// The payment service's settings, read from the environment (README: "Payments").
///
/// Secrets come only from the environment. A provider without its secrets is disabled, and
/// asking for it is FAILED_PRECONDITION (PAYMENT_PROVIDER_UNAVAILABLE).
public struct PaymentSettings: Sendable {
  /// The sandbox provider takes no money: off unless asked for (`make run` and tests turn it on).
  public var sandboxEnabled: Bool
  public var stripe: StripeSettings?
  public var payfast: PayFastSettings?
  /// Origins (`scheme://host[:port]`) that return and cancel URLs must be on.
  public var allowedReturnOrigins: [String]
  /// How long one call to a provider may take.
  public var providerTimeout: Duration
  /// The longest wait between two attempts of a failing provider call.
  public var maximumRetryBackoff: Duration
  /// How often the worker looks for due provider calls when nothing wakes it.
  public var workerPollInterval: Duration

  public init(
    sandboxEnabled: Bool = true, stripe: StripeSettings? = nil, payfast: PayFastSettings? = nil,
    allowedReturnOrigins: [String] = [], providerTimeout: Duration = .seconds(10),
    maximumRetryBackoff: Duration = .seconds(60), workerPollInterval: Duration = .seconds(1)
  ) {
    self.sandboxEnabled = sandboxEnabled
    self.stripe = stripe
    self.payfast = payfast
    self.allowedReturnOrigins = allowedReturnOrigins
    self.providerTimeout = providerTimeout
    self.maximumRetryBackoff = maximumRetryBackoff
    self.workerPollInterval = workerPollInterval
  }

  public init(environment env: EnvironmentReader) throws {
    let defaults = PaymentSettings()
    self.init(
      sandboxEnabled: try env.bool("MART_PAYMENT_SANDBOX_ENABLED", default: false),
      stripe: try StripeSettings(environment: env),
      payfast: try PayFastSettings(environment: env),
      allowedReturnOrigins: try Self.origins(env, "MART_PAYMENT_ALLOWED_RETURN_ORIGINS"),
      providerTimeout: try env.duration("MART_PAYMENT_PROVIDER_TIMEOUT", default: defaults.providerTimeout),
      maximumRetryBackoff: try env.duration("MART_PAYMENT_MAX_RETRY_BACKOFF", default: defaults.maximumRetryBackoff),
      workerPollInterval: try env.duration("MART_PAYMENT_WORKER_POLL_INTERVAL", default: defaults.workerPollInterval))
  }

  static func list(_ env: EnvironmentReader, _ name: String) -> [String]? {
    guard let raw = env.string(name) else { return nil }
    return raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
  }

  static func networks(_ env: EnvironmentReader, _ name: String) throws -> [IPNetwork]? {
    guard let items = list(env, name) else { return nil }
    return try items.map { item in
      guard
        let network = IPNetwork(item)
          ?? IPAddress(item).map({ IPNetwork(containing: $0, prefixLength: $0.isIPv4 ? 32 : 128) })
      else {
        throw ConfigurationError(variable: name, value: item, reason: "expected an IP address or CIDR range")
      }
      return network
    }
  }

  static func origins(_ env: EnvironmentReader, _ name: String) throws -> [String] {
    try (list(env, name) ?? []).map { item in
      guard let origin = ReturnURL.origin(of: item), origin == item.lowercased() else {
        throw ConfigurationError(variable: name, value: item, reason: "expected an origin such as https://shop.example")
      }
      return origin
    }
  }
}

/// Stripe's settings: all three secrets or none (then Stripe is disabled).
public struct StripeSettings: Sendable {
  public var secretKey: String
  public var publishableKey: String
  /// The webhook endpoint's signing secrets; two while one is being rotated.
  public var webhookSecrets: [String]
  /// `https://api.stripe.com`, or a stand-in such as localstripe.
  public var apiBase: String
  /// How old a webhook's signed timestamp may be.
  public var webhookTolerance: Duration

  public init(
    secretKey: String, publishableKey: String, webhookSecrets: [String],
    apiBase: String = "https://api.stripe.com", webhookTolerance: Duration = .seconds(300)
  ) {
    self.secretKey = secretKey
    self.publishableKey = publishableKey
    self.webhookSecrets = webhookSecrets
    self.apiBase = apiBase
    self.webhookTolerance = webhookTolerance
  }

  init?(environment env: EnvironmentReader) throws {
    let secret = env.string("MART_PAYMENT_STRIPE_SECRET_KEY")
    let publishable = env.string("MART_PAYMENT_STRIPE_PUBLISHABLE_KEY")
    let webhook = PaymentSettings.list(env, "MART_PAYMENT_STRIPE_WEBHOOK_SECRETS") ?? []
    if secret == nil, publishable == nil, webhook.isEmpty { return nil }
    guard let secret, let publishable, !webhook.isEmpty else {
      throw ConfigurationError(
        variable: "MART_PAYMENT_STRIPE_SECRET_KEY", value: "(set)",
        reason:
          "Stripe needs MART_PAYMENT_STRIPE_SECRET_KEY, MART_PAYMENT_STRIPE_PUBLISHABLE_KEY and MART_PAYMENT_STRIPE_WEBHOOK_SECRETS together"
      )
    }
    guard webhook.count <= 2 else {
      throw ConfigurationError(
        variable: "MART_PAYMENT_STRIPE_WEBHOOK_SECRETS", value: "(\(webhook.count) secrets)",
        reason: "at most two: the current secret and the one being rotated out")
    }
    let base = env.string("MART_PAYMENT_STRIPE_API_BASE", default: "https://api.stripe.com")
    guard let url = URL(string: base), url.scheme == "https" || url.scheme == "http", url.host != nil else {
      throw ConfigurationError(variable: "MART_PAYMENT_STRIPE_API_BASE", value: base, reason: "expected an http(s) URL")
    }
    self.init(
      secretKey: secret, publishableKey: publishable, webhookSecrets: webhook, apiBase: url.absoluteString,
      webhookTolerance: try env.duration("MART_PAYMENT_STRIPE_WEBHOOK_TOLERANCE", default: .seconds(300)))
  }
}

/// PayFast's settings: merchant id and key or nothing (then PayFast is disabled).
public struct PayFastSettings: Sendable {
  public var merchantID: String
  public var merchantKey: String
  /// The passphrase set on the merchant account, if any (it salts every signature).
  public var passphrase: String?
  /// `https://sandbox.payfast.co.za` or `https://www.payfast.co.za` (or a test server).
  public var baseURL: String
  /// Where PayFast posts the ITN: this mart's public `/v1/webhooks/payfast`.
  public var notifyURL: String
  /// Where ITNs may come from: PayFast's published ranges unless configured.
  public var sourceRanges: [IPNetwork]

  /// PayFast's published ITN source ranges (developers.payfast.co.za, "Step 4: Confirm payment").
  public static let publishedRanges = [
    "197.97.145.144/28", "41.74.179.192/27", "102.216.36.0/28", "102.216.36.128/28", "144.126.193.139/32",
  ].compactMap(IPNetwork.init)

  public init(
    merchantID: String, merchantKey: String, passphrase: String?, baseURL: String, notifyURL: String,
    sourceRanges: [IPNetwork] = PayFastSettings.publishedRanges
  ) {
    self.merchantID = merchantID
    self.merchantKey = merchantKey
    self.passphrase = passphrase
    self.baseURL = baseURL
    self.notifyURL = notifyURL
    self.sourceRanges = sourceRanges
  }

  init?(environment env: EnvironmentReader) throws {
    let id = env.string("MART_PAYMENT_PAYFAST_MERCHANT_ID")
    let key = env.string("MART_PAYMENT_PAYFAST_MERCHANT_KEY")
    if id == nil, key == nil { return nil }
    guard let id, let key, let notify = env.string("MART_PAYMENT_PAYFAST_NOTIFY_URL") else {
      throw ConfigurationError(
        variable: "MART_PAYMENT_PAYFAST_MERCHANT_ID", value: "(set)",
        reason:
          "PayFast needs MART_PAYMENT_PAYFAST_MERCHANT_ID, MART_PAYMENT_PAYFAST_MERCHANT_KEY and MART_PAYMENT_PAYFAST_NOTIFY_URL together"
      )
    }
    let mode = env.string("MART_PAYMENT_PAYFAST_MODE", default: "sandbox")
    let modeURL: String
    switch mode {
    case "sandbox": modeURL = "https://sandbox.payfast.co.za"
    case "live": modeURL = "https://www.payfast.co.za"
    default:
      throw ConfigurationError(variable: "MART_PAYMENT_PAYFAST_MODE", value: mode, reason: "expected sandbox or live")
    }
    let base = env.string("MART_PAYMENT_PAYFAST_BASE_URL", default: modeURL)
    guard let url = URL(string: base), url.scheme == "https" || url.scheme == "http", url.host != nil else {
      throw ConfigurationError(
        variable: "MART_PAYMENT_PAYFAST_BASE_URL", value: base, reason: "expected an http(s) URL")
    }
    self.init(
      merchantID: id, merchantKey: key, passphrase: env.string("MART_PAYMENT_PAYFAST_PASSPHRASE"),
      baseURL: url.absoluteString,
      notifyURL: notify,
      sourceRanges: try PaymentSettings.networks(env, "MART_PAYMENT_PAYFAST_SOURCE_RANGES") ?? Self.publishedRanges)
  }
}

/// Return and cancel URLs: absolute http(s) URLs on an allowed origin.
enum ReturnURL {
  /// `scheme://host[:port]` in lower case; nil for anything but an absolute http(s) URL.
  static func origin(of text: String) -> String? {
    guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
      scheme == "https" || scheme == "http", let host = components.host?.lowercased(), !host.isEmpty,
      components.user == nil, components.password == nil
    else { return nil }
    return components.port.map { "\(scheme)://\(host):\($0)" } ?? "\(scheme)://\(host)"
  }
}

// MARK: Statuses

enum PaymentStatus: String, PostgresTextEnum, CaseIterable {
  case pending, processing, succeeded, failed, cancelled
  case partiallyRefunded = "partially_refunded"
  case refunded

  /// Whether the payment took money (refunds only ever follow a success).
  var tookMoney: Bool { [.succeeded, .partiallyRefunded, .refunded].contains(self) }
  /// Whether the payment is still waiting for the customer or the provider.
  var isOpen: Bool { self == .pending || self == .processing }

  var proto: Mart_Payment_V1_Payment.Status {
    switch self {
    case .pending: .pending
    case .processing: .processing
    case .succeeded: .succeeded
    case .failed: .failed
    case .cancelled: .cancelled
    case .partiallyRefunded: .partiallyRefunded
    case .refunded: .refunded
    }
  }
}

enum RefundStatus: String, PostgresTextEnum {
  case pending, succeeded, failed

  var proto: Mart_Payment_V1_Refund.Status {
    switch self {
    case .pending: .pending
    case .succeeded: .succeeded
    case .failed: .failed
    }
  }
}

// MARK: Rows

struct RefundRecord: Sendable {
  var id: UUID
  var paymentID: UUID
  var amountMinor: Int64
  var status: RefundStatus
  var reason: String?
  var providerRefundID: String?
  var actorUserID: UUID?
  var requestID: String?
  var createdAt: Date
  var updatedAt: Date
  var callAttempts: Int32

  static let columns = """
    id, payment_id, amount_minor, status, reason, provider_refund_id, actor_user_id, request_id, created_at,
    updated_at, provider_call_attempts
    """

  typealias Row = (UUID, UUID, Int64, RefundStatus, String?, String?, UUID?, String?, Date, Date, Int32)

  init(_ row: Row) {
    (
      id, paymentID, amountMinor, status, reason, providerRefundID, actorUserID, requestID, createdAt, updatedAt,
      callAttempts
    ) = row
  }

  static func decode(_ rows: PostgresRowSequence) async throws -> [RefundRecord] {
    var refunds: [RefundRecord] = []
    for try await row in rows.decode(Row.self) { refunds.append(RefundRecord(row)) }
    return refunds
  }

  func proto(currency: String) -> Mart_Payment_V1_Refund {
    .with {
      $0.id = id.lowercasedString
      $0.paymentID = paymentID.lowercasedString
      $0.amount = Mart_Common_V1_Money(minor: amountMinor, currency: currency)
      $0.status = status.proto
      $0.reason = reason ?? ""
      $0.providerRefundID = providerRefundID ?? ""
      $0.actorUserID = actorUserID?.lowercasedString ?? ""
      $0.createTime = .init(date: createdAt)
      $0.updateTime = .init(date: updatedAt)
    }
  }
}

struct PaymentRecord: Sendable {
  var id: UUID
  var orderID: UUID
  var userID: UUID
  var provider: PaymentProvider
  var providerPaymentID: String?
  var status: PaymentStatus
  var amountMinor: Int64
  var currency: String
  var refundedMinor: Int64
  var clientSecret: String?
  var redirectURL: String?
  var failureCode: String?
  var failureMessage: String?
  var requestID: String?
  var createdAt: Date
  var updatedAt: Date
  var succeededAt: Date?
  var orderNumber: String?
  var orderDeadline: Date?
  var surplus: Bool
  var callAttempts: Int32
  /// What can still be refunded: the amount less the refunds not failed (pending ones count,
  /// as the provider may still make them; the refunds trigger counts the same way).
  var refundableMinor: Int64 {
    amountMinor - refunds.filter { $0.status != .failed }.reduce(Int64(0)) { $0 + $1.amountMinor }
  }

  /// `created_at` in microseconds since 1970, exactly (ListOrderPayments' cursor).
  var createdMicros: Int64
  var refunds: [RefundRecord] = []

  static let columns = """
    id, order_id, user_id, provider, provider_payment_id, status, amount_minor, currency::text, refunded_minor,
    client_secret, redirect_url, failure_code, failure_message, request_id, created_at, updated_at, succeeded_at,
    order_number, order_deadline, surplus, provider_call_attempts, (extract(epoch FROM created_at) * 1000000)::int8
    """

  typealias Row = (
    UUID, UUID, UUID, PaymentProvider, String?, PaymentStatus, Int64, String, Int64,
    String?, String?, String?, String?, String?, Date, Date, Date?,
    String?, Date?, Bool, Int32, Int64
  )

  init(_ row: Row) {
    (
      id, orderID, userID, provider, providerPaymentID, status, amountMinor, currency, refundedMinor,
      clientSecret, redirectURL, failureCode, failureMessage, requestID, createdAt, updatedAt, succeededAt,
      orderNumber, orderDeadline, surplus, callAttempts, createdMicros
    ) = row
  }

  static func decode(_ rows: PostgresRowSequence) async throws -> [PaymentRecord] {
    var payments: [PaymentRecord] = []
    for try await row in rows.decode(Row.self) { payments.append(PaymentRecord(row)) }
    return payments
  }

  var proto: Mart_Payment_V1_Payment {
    .with {
      $0.id = id.lowercasedString
      $0.orderID = orderID.lowercasedString
      $0.userID = userID.lowercasedString
      $0.provider = provider.proto
      $0.status = status.proto
      $0.amount = Mart_Common_V1_Money(minor: amountMinor, currency: currency)
      $0.refundedAmount = Mart_Common_V1_Money(minor: refundedMinor, currency: currency)
      $0.providerPaymentID = providerPaymentID ?? ""
      $0.failureCode = failureCode ?? ""
      $0.failureMessage = failureMessage ?? ""
      $0.refunds = refunds.map { $0.proto(currency: currency) }
      $0.createTime = .init(date: createdAt)
      $0.updateTime = .init(date: updatedAt)
      if let succeededAt { $0.succeedTime = .init(date: succeededAt) }
    }
  }
}
