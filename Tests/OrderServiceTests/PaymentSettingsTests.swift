import Foundation
import MartRuntime
import Testing

@testable import PaymentService

/// The payment settings from the environment: secrets only from there, a provider without its
/// secrets disabled, a half-configured one refused at start-up rather than failing at checkout.
@Suite struct PaymentSettingsTests {
  @Test func withoutSecretsEveryProviderIsOffAndTheSandboxToo() throws {
    let settings = try PaymentSettings(environment: EnvironmentReader([:]))
    #expect(!settings.sandboxEnabled)
    #expect(settings.stripe == nil)
    #expect(settings.payfast == nil)
    // Empty values (as compose passes unset ones) are unset.
    let empty = try PaymentSettings(
      environment: EnvironmentReader(["MART_PAYMENT_STRIPE_SECRET_KEY": "", "MART_PAYMENT_PAYFAST_MERCHANT_ID": ""]))
    #expect(empty.stripe == nil)
    #expect(empty.payfast == nil)
  }

  @Test func stripeNeedsAllItsSecretsAndAtMostTwoWebhookSecrets() throws {
    let full = [
      "MART_PAYMENT_STRIPE_SECRET_KEY": "sk_test_1", "MART_PAYMENT_STRIPE_PUBLISHABLE_KEY": "pk_test_1",
      "MART_PAYMENT_STRIPE_WEBHOOK_SECRETS": "whsec_new, whsec_old",
    ]
    let stripe = try #require(try PaymentSettings(environment: EnvironmentReader(full)).stripe)
    #expect(stripe.webhookSecrets == ["whsec_new", "whsec_old"])
    #expect(stripe.apiBase == "https://api.stripe.com")
    #expect(stripe.webhookTolerance == .seconds(300))
    var partial = full
    partial["MART_PAYMENT_STRIPE_WEBHOOK_SECRETS"] = nil
    #expect(throws: ConfigurationError.self) { try PaymentSettings(environment: EnvironmentReader(partial)) }
    var three = full
    three["MART_PAYMENT_STRIPE_WEBHOOK_SECRETS"] = "a,b,c"
    #expect(throws: ConfigurationError.self) { try PaymentSettings(environment: EnvironmentReader(three)) }
  }

  @Test func payfastModesOriginsAndRanges() throws {
    let base = [
      "MART_PAYMENT_PAYFAST_MERCHANT_ID": "10000100", "MART_PAYMENT_PAYFAST_MERCHANT_KEY": "46f0cd694581a",
      "MART_PAYMENT_PAYFAST_NOTIFY_URL": "https://shop.example/v1/webhooks/payfast",
    ]
    let sandbox = try #require(try PaymentSettings(environment: EnvironmentReader(base)).payfast)
    #expect(sandbox.baseURL == "https://sandbox.payfast.co.za")
    #expect(sandbox.passphrase == nil)
    #expect(sandbox.sourceRanges == PayFastSettings.publishedRanges)
    var live = base
    live["MART_PAYMENT_PAYFAST_MODE"] = "live"
    live["MART_PAYMENT_PAYFAST_SOURCE_RANGES"] = "197.97.145.144/28, 203.0.113.9"
    live["MART_PAYMENT_ALLOWED_RETURN_ORIGINS"] = "https://shop.example,http://localhost:3000"
    let settings = try PaymentSettings(environment: EnvironmentReader(live))
    let payfast = try #require(settings.payfast)
    #expect(payfast.baseURL == "https://www.payfast.co.za")
    #expect(payfast.sourceRanges.count == 2)
    let single = try #require(IPAddress("203.0.113.9"))
    let covered = payfast.sourceRanges.contains { $0.contains(single) }
    #expect(covered)
    #expect(settings.allowedReturnOrigins == ["https://shop.example", "http://localhost:3000"])
    var wrong = base
    wrong["MART_PAYMENT_PAYFAST_MODE"] = "production"
    #expect(throws: ConfigurationError.self) { try PaymentSettings(environment: EnvironmentReader(wrong)) }
    var noNotify = base
    noNotify["MART_PAYMENT_PAYFAST_NOTIFY_URL"] = nil
    #expect(throws: ConfigurationError.self) { try PaymentSettings(environment: EnvironmentReader(noNotify)) }
    var badOrigin = base
    badOrigin["MART_PAYMENT_ALLOWED_RETURN_ORIGINS"] = "https://shop.example/path"
    #expect(throws: ConfigurationError.self) { try PaymentSettings(environment: EnvironmentReader(badOrigin)) }
  }
}
