import Crypto
import Foundation
import MartRuntime
import Testing

@testable import PaymentService

/// The providers' signature schemes against vectors their own code made (copied from the
/// workplace's shared vectors: stripe-python 16.1.0 `WebhookSignature`, and the data sets of
/// Payfast/payfast-php-sdk `tests/PaymentIntegrations/NotificationTest.php`), and the parsing
/// around them.
@Suite struct PaymentSignatureTests {
  static let payload = Array(
    "{\"id\":\"evt_1Mart\",\"object\":\"event\",\"type\":\"payment_intent.succeeded\",\"data\":{\"object\":{\"id\":\"pi_1Mart\",\"object\":\"payment_intent\",\"amount\":123450,\"currency\":\"pkr\",\"status\":\"succeeded\",\"metadata\":{\"order_id\":\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"payment_id\":\"7c9e6679-7425-40de-944b-e07fc1f90ae7\"}}}}"
      .utf8)
  static let changedPayload = Array(
    "{\"id\":\"evt_1Mart\",\"object\":\"event\",\"type\":\"payment_intent.succeeded\",\"data\":{\"object\":{\"id\":\"pi_1Mart\",\"object\":\"payment_intent\",\"amount\":123451,\"currency\":\"pkr\",\"status\":\"succeeded\",\"metadata\":{\"order_id\":\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"payment_id\":\"7c9e6679-7425-40de-944b-e07fc1f90ae7\"}}}}"
      .utf8)

  static let stripeCases: [(String, String, String, [UInt8], Bool)] = [
    (
      "valid, one v1", "whsec_test_mart_0123456789abcdef",
      "t=1764892800,v1=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd", payload, true
    ),
    (
      "valid, second v1 matches (rotation)", "whsec_test_mart_0123456789abcdef",
      "t=1764892800,v1=0000000000000000000000000000000000000000000000000000000000000000,v1=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd",
      payload, true
    ),
    (
      "valid for the rotated secret only", "whsec_test_mart_rotated_fedcba9876543210",
      "t=1764892800,v1=95ff6581e1842b3df3b3f0c416af06dc8bfa5adc8df3c85e2734ace54cf4b730", payload, true
    ),
    (
      "wrong secret", "whsec_test_mart_0123456789abcdef",
      "t=1764892800,v1=95ff6581e1842b3df3b3f0c416af06dc8bfa5adc8df3c85e2734ace54cf4b730", payload, false
    ),
    (
      "body changed by one byte", "whsec_test_mart_0123456789abcdef",
      "t=1764892800,v1=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd", changedPayload, false
    ),
    (
      "timestamp changed", "whsec_test_mart_0123456789abcdef",
      "t=1764892801,v1=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd", payload, false
    ),
    (
      "v0 only (not a v1 scheme)", "whsec_test_mart_0123456789abcdef",
      "t=1764892800,v0=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd", payload, false
    ),
    (
      "no timestamp", "whsec_test_mart_0123456789abcdef",
      "v1=25533c61f9e2c03f06be34a30df2918f24980b33f72a3884bd0978017be724bd", payload, false
    ),
    ("garbage header", "whsec_test_mart_0123456789abcdef", "nonsense", payload, false),
  ]

  @Test func stripeVectors() {
    for (name, secret, header, body, valid) in Self.stripeCases {
      var verified = true
      do {
        try StripeSignature.verify(header: header, payload: body, secrets: [secret], tolerance: nil)
      } catch {
        verified = false
      }
      #expect(verified == valid, "\(name)")
    }
  }

  /// A header with many v1 values would make each unauthenticated request cost many HMACs.
  @Test func stripeRefusesAHeaderWithTooManySignatures() {
    let valid = Self.stripeCases[0]
    let padded = "t=1764892800," + String(repeating: "v1=00,", count: 8) + valid.2.dropFirst("t=1764892800,".count)
    #expect(throws: StripeSignature.Failure.malformedHeader) {
      try StripeSignature.verify(header: padded, payload: Self.payload, secrets: [valid.1], tolerance: nil)
    }
  }

  @Test func stripeRotationAcceptsEitherConfiguredSecret() throws {
    let rotatedOnly = Self.stripeCases[2]
    try StripeSignature.verify(
      header: rotatedOnly.2, payload: Self.payload,
      secrets: ["whsec_test_mart_0123456789abcdef", "whsec_test_mart_rotated_fedcba9876543210"], tolerance: nil)
  }

  @Test func stripeTimestampTolerance() throws {
    let now = Date(timeIntervalSince1970: 1_764_892_800)
    let header = Self.stripeCases[0].2
    let secrets = [Self.stripeCases[0].1]
    try StripeSignature.verify(
      header: header, payload: Self.payload, secrets: secrets, tolerance: .seconds(300),
      now: now.addingTimeInterval(299))
    #expect(throws: StripeSignature.Failure.timestampOutsideTolerance) {
      try StripeSignature.verify(
        header: header, payload: Self.payload, secrets: secrets, tolerance: .seconds(300),
        now: now.addingTimeInterval(301))
    }
    // A signature from the future beyond the tolerance is refused as well.
    #expect(throws: StripeSignature.Failure.timestampOutsideTolerance) {
      try StripeSignature.verify(
        header: header, payload: Self.payload, secrets: secrets, tolerance: .seconds(300),
        now: now.addingTimeInterval(-301))
    }
    // The signer used by the tests and tools makes what the verifier accepts.
    let made = StripeSignature.header(payload: Self.payload, secret: secrets[0], timestamp: 1_764_892_800)
    #expect(made == header)
  }

  static let payfastA = [
    ("m_payment_id", "1234"), ("pf_payment_id", "1221576"), ("payment_status", "COMPLETE"), ("item_name", "Order#123"),
    ("item_description", ""), ("amount_gross", "10.00"), ("amount_fee", "-0.23"), ("amount_net", "9.77"),
    ("custom_str1", ""), ("custom_str2", ""), ("custom_str3", ""), ("custom_str4", ""), ("custom_str5", ""),
    ("custom_int1", ""), ("custom_int2", ""), ("custom_int3", ""), ("custom_int4", ""), ("custom_int5", ""),
    ("name_first", "First"), ("name_last", "Last"), ("email_address", "test@test.com"), ("merchant_id", "10000100"),
  ]
  static let payfastB = [
    ("m_payment_id", "000000020"), ("pf_payment_id", "1579137"), ("payment_status", "COMPLETE"),
    ("item_name", "Order #000000020"), ("item_description", ""), ("amount_gross", "15.00"), ("amount_fee", "-2.30"),
    ("amount_net", "12.70"), ("custom_str1", ""), ("custom_str2", ""), ("custom_str3", ""), ("custom_str4", ""),
    ("custom_str5", ""), ("custom_int1", ""), ("custom_int2", ""), ("custom_int3", ""), ("custom_int4", ""),
    ("custom_int5", ""), ("name_first", "Tom"), ("name_last", "Tom"), ("email_address", "lindley+user1@appinlet.com"),
    ("merchant_id", "10027938"),
  ]

  @Test func payfastPublishedVectors() {
    #expect(PayFastSignature.signature(Self.payfastA, passphrase: "jt7NOE43FZPn") == "ac4c3e993d31b5b9d525dc0087051437")
    #expect(PayFastSignature.signature(Self.payfastA, passphrase: nil) == "6b1f1c46e2c4cef9f841379a8f42bde2")
    #expect(PayFastSignature.signature(Self.payfastB, passphrase: nil) == "4078bca2c8987e0e0c4e7230f2f46323")
    #expect(
      PayFastSignature.parameterString(Self.payfastB).contains(
        "item_name=Order+%23000000020&item_description=&amount_gross=15.00"))
    #expect(PayFastSignature.parameterString(Self.payfastB).contains("email_address=lindley%2Buser1%40appinlet.com"))
  }

  @Test func phpURLEncoding() {
    #expect(PayFastSignature.phpURLEncode("a b~c-d_e.f*") == "a+b%7Ec-d_e.f%2A")
    #expect(PayFastSignature.phpURLEncode("é") == "%C3%A9")
  }

  @Test func payfastAmounts() {
    #expect(PayFastAmount.format(123_450) == "1234.50")
    #expect(PayFastAmount.format(5) == "0.05")
    #expect(PayFastAmount.parse("1234.50") == 123_450)
    #expect(PayFastAmount.parse("10.5") == 1050)
    #expect(PayFastAmount.parse("10") == 1000)
    for bad in ["", "1.234", "-1.00", "+1.00", "1,00", "abc", "1.-5", "99999999999999999999"] {
      #expect(PayFastAmount.parse(bad) == nil, "\(bad)")
    }
  }

  @Test func formsKeepTheirOrderAndBlanks() throws {
    let fields = try #require(FormEncoding.decode("b=2&a=&c=x+y%26z&a=again"))
    #expect(fields.map(\.0) == ["b", "a", "c", "a"])
    #expect(fields.map(\.1) == ["2", "", "x y&z", "again"])
    #expect(FormEncoding.decode("a=%zz") == nil)
  }
}
