import Crypto
import Foundation
import MartProto
import MartRuntime
import NIOCore

/// PayFast's signatures (developers.payfast.co.za/docs#step_2_signature): the MD5, in lower-case
/// hex, of `name=value` pairs joined with `&`, values encoded the way PHP's `urlencode` does,
/// with `&passphrase=…` appended when the merchant account has one.
enum PayFastSignature {
  /// PHP's `urlencode`: alphanumerics and `-_.` stay, a space is `+`, every other byte is `%XX`
  /// in upper case (so `~` is `%7E`, unlike RFC 3986).
  static func phpURLEncode(_ text: String) -> String {
    var encoded = ""
    for byte in text.utf8 {
      switch byte {
      case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
        encoded.unicodeScalars.append(Unicode.Scalar(byte))
      case UInt8(ascii: " "):
        encoded += "+"
      default:
        encoded += String(format: "%%%02X", byte)
      }
    }
    return encoded
  }

  /// The parameter string of `fields` in their order (blank ones included: filter first where
  /// the scheme skips them).
  static func parameterString(_ fields: [(String, String)]) -> String {
    fields.map { "\($0.0)=\(phpURLEncode($0.1))" }.joined(separator: "&")
  }

  static func signature(_ fields: [(String, String)], passphrase: String?) -> String {
    var text = parameterString(fields)
    if let passphrase, !passphrase.isEmpty { text += "&passphrase=\(phpURLEncode(passphrase))" }
    return Insecure.MD5.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
  }

  /// Compares two hex signatures without an early exit.
  static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    let left = Array(a.lowercased().utf8)
    let right = Array(b.lowercased().utf8)
    guard left.count == right.count else { return false }
    var difference: UInt8 = 0
    for index in left.indices { difference |= left[index] ^ right[index] }
    return difference == 0
  }
}

/// Amounts as PayFast writes them: Rand with two decimals.
enum PayFastAmount {
  static func format(_ minor: Int64) -> String {
    let sign = minor < 0 ? "-" : ""
    let magnitude = minor.magnitude
    let cents = magnitude % 100
    return "\(sign)\(magnitude / 100).\(cents < 10 ? "0" : "")\(cents)"
  }

  /// Minor units of `12.30`, `12.3` or `12`; nil for anything else.
  static func parse(_ text: String) -> Int64? {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count <= 2, let whole = Int64(parts[0]), !parts[0].hasPrefix("+") else { return nil }
    var cents: Int64 = 0
    if parts.count == 2 {
      let fraction = parts[1]
      guard (1...2).contains(fraction.count), fraction.allSatisfy(\.isASCII), let value = Int64(fraction),
        value >= 0
      else { return nil }
      cents = fraction.count == 1 ? value * 10 : value
    }
    guard whole >= 0 else { return nil }
    let (total, overflow) = whole.multipliedReportingOverflow(by: 100)
    guard !overflow else { return nil }
    return total + cents
  }
}

/// PayFast's redirect checkout. It makes no call when a payment starts: the browser posts the
/// signed form to PayFast, and PayFast's ITN says how it ended (assigning `pf_payment_id`).
struct PayFastProvider: PaymentProviderClient {
  let settings: PayFastSettings
  let http: ProviderHTTP
  var kind: PaymentProvider { .payfast }

  var processURL: String { url("/eng/process") }
  var validateURL: String { url("/eng/query/validate") }

  private func url(_ path: String) -> String {
    var base = settings.baseURL
    while base.hasSuffix("/") { base.removeLast() }
    return base + path
  }

  func start(_ payment: PaymentRecord, checkout: Checkout) async throws -> ProviderStart {
    ProviderStart(redirectForm: redirectForm(payment, checkout: checkout))
  }

  /// The checkout form, its fields in PayFast's fixed order, blank ones left out, and signed.
  func redirectForm(_ payment: PaymentRecord, checkout: Checkout) -> Mart_Payment_V1_RedirectForm {
    let names = checkout.customerName.split(separator: " ", maxSplits: 1).map(String.init)
    let ordered: [(String, String)] = [
      ("merchant_id", settings.merchantID),
      ("merchant_key", settings.merchantKey),
      ("return_url", checkout.returnURL ?? ""),
      ("cancel_url", checkout.cancelURL ?? ""),
      ("notify_url", settings.notifyURL),
      ("name_first", String((names.first ?? "").prefix(100))),
      ("name_last", String((names.count > 1 ? names[1] : "").prefix(100))),
      ("m_payment_id", payment.id.lowercasedString),
      ("amount", PayFastAmount.format(payment.amountMinor)),
      ("item_name", String(checkout.itemName.prefix(100))),
      ("custom_str1", payment.orderID.lowercasedString),
    ]
    let fields = ordered.filter { !$0.1.isEmpty }
    let signature = PayFastSignature.signature(fields, passphrase: settings.passphrase)
    return .with {
      $0.redirectURL = processURL
      $0.method = "POST"
      $0.formFields = (fields + [("signature", signature)]).map { field in
        .with {
          $0.name = field.0
          $0.value = field.1
        }
      }
    }
  }

  /// PayFast's refunds go through its merchant API, which needs credentials this service does
  /// not hold; refunds of PayFast payments are refused rather than pretended.
  func refund(_ refund: RefundRecord, of payment: PaymentRecord) async throws -> RefundOutcome {
    throw ProviderRefused(
      code: "refund_unsupported",
      message: "PayFast payments are refunded from the PayFast merchant dashboard")
  }

  func cancel(_ payment: PaymentRecord) async throws {}

  /// Check 4 of an ITN: PayFast confirms, server to server, that it sent this parameter string.
  func confirms(_ parameterString: String) async throws -> Bool {
    let response = try await http.send(.POST, validateURL, rawBody: parameterString)
    let text = String(buffer: response.body).trimmingCharacters(in: .whitespacesAndNewlines)
    return response.status.code / 100 == 2 && text == "VALID"
  }
}
