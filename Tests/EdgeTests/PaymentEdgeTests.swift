import Foundation
import MartRuntime
import MartTestSupport
import PaymentService
import Testing

// Note: no closure literal inside `#expect(...)` in these tests (see CatalogEdgeTests).

/// A shop selling, as a client meets it: the gateway in front of the real user, product,
/// inventory, order and payment services, in JSON over HTTP.
@Suite struct PaymentEdgeTests {
  /// A product with `onHand` in stock, made by the admin through the edge; its id.
  static func stockedProduct(_ edge: Edge, admin: String, sku: String, price: Int, onHand: Int) async throws -> String {
    let created = try await edge.call(
      "POST", "/v1/products",
      json: ["sku": sku, "name": "Product \(sku)", "price": ["currencyCode": "ZAR", "amountMinor": price]],
      token: admin)
    #expect(created.status == 200, "\(created.text)")
    let productID = try #require(try created.json()["id"] as? String)
    let stocked = await eventually {
      let adjusted = try await edge.call(
        "POST", "/v1/products/\(productID)/stock:adjust", json: ["quantityDelta": onHand, "reason": "RESTOCK"],
        token: admin)
      return adjusted.status == 200
    }
    #expect(stocked)
    return productID
  }

  static func awaitingOrder(_ edge: Edge, customer: String, items: [(String, Int)]) async throws -> String {
    let placed = try await edge.call(
      "POST", "/v1/orders",
      json: [
        "items": items.map { ["productId": $0.0, "quantity": $0.1] },
        "shippingAddress": [
          "recipientName": "Thandi Nkosi", "lines": ["12 Long Street"], "city": "Cape Town", "countryCode": "ZA",
        ],
      ], token: customer, headers: ["Idempotency-Key": "\"\(UUID().uuidString)\""])
    #expect(placed.status == 200, "\(placed.text)")
    let orderID = try #require(try placed.json()["id"] as? String)
    let awaiting = await eventually {
      try await edge.call("GET", "/v1/orders/\(orderID)", token: customer).json()["status"] as? String
        == "AWAITING_PAYMENT"
    }
    #expect(awaiting)
    return orderID
  }

  static func status(_ edge: Edge, _ orderID: String, _ token: String) async throws -> String? {
    try await edge.call("GET", "/v1/orders/\(orderID)", token: token).json()["status"] as? String
  }

  /// The whole path: an admin stocks two products, a customer orders both and pays with the
  /// sandbox; the order is PAID, its stock committed, its timeline complete.
  @Test func aCustomerOrdersTwoLinesAndPaysWithTheSandbox() async throws {
    let settings = PaymentSettings(sandboxEnabled: true)
    try await withEdge(payments: settings) { edge in
      let admin = try await edge.admin()
      let kettle = try await Self.stockedProduct(edge, admin: admin, sku: "KETTLE-1", price: 45_000, onHand: 5)
      let mug = try await Self.stockedProduct(edge, admin: admin, sku: "MUG-1", price: 8_000, onHand: 10)
      let (customer, _) = try await edge.register()
      let orderID = try await Self.awaitingOrder(edge, customer: customer, items: [(kettle, 1), (mug, 4)])

      let (stranger, _) = try await edge.register()
      // The gateway connects to the payment service on its first call, and does not wait for
      // the connection (a call before it is up answers 503).
      let connected = await eventually {
        try await edge.call("GET", "/v1/orders/\(orderID)/payments", token: customer).status == 200
      }
      #expect(connected)
      let foreign = try await edge.call(
        "POST", "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"], token: stranger)
      #expect(foreign.status == 404, "\(foreign.text)")

      let key = "\"\(UUID().uuidString)\""
      let paid = try await edge.call(
        "POST", "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"], token: customer,
        headers: ["Idempotency-Key": key])
      #expect(paid.status == 200, "\(paid.text)")
      let payment = try paid.object("payment")
      #expect(payment["status"] as? String == "SUCCEEDED")
      #expect((payment["amount"] as? [String: Any])?["amountMinor"] as? String == "77000")
      let replayed = try await edge.call(
        "POST", "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"], token: customer,
        headers: ["Idempotency-Key": key])
      #expect(try replayed.object("payment")["id"] as? String == payment["id"] as? String)

      let isPaid = await eventually { try await Self.status(edge, orderID, customer) == "PAID" }
      #expect(isPaid)
      for (product, left) in [(kettle, 4), (mug, 6)] {
        let stock = try await edge.call("GET", "/v1/products/\(product)/stock", token: admin).json()
        #expect(stock["onHand"] as? Int == left, "\(stock)")
        #expect((stock["reserved"] as? Int ?? 0) == 0, "\(stock)")
      }
      let timeline = try await edge.call("GET", "/v1/orders/\(orderID)/timeline", token: customer)
      let kinds = try #require(try timeline.json()["entries"] as? [[String: Any]]).compactMap { $0["kind"] as? String }
      for kind in ["PLACED", "STOCK_RESERVED", "PAYMENT_RECEIVED", "PAID"] {
        #expect(kinds.contains(kind), "\(kinds)")
      }
      let again = try await edge.call(
        "POST", "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"], token: customer)
      #expect(again.status == 400, "\(again.text)")
      try again.expectStatusBody(code: 9)
    }
  }

  /// Stripe end to end: localstripe signs and sends its own webhook to the gateway, which passes
  /// the raw body and the Stripe-Signature header to the payment service.
  @Test func stripeWebhookThroughTheGatewayPaysTheOrder() async throws {
    let stripe = try await LocalStripe.start()
    defer { stripe.process.signal(SIGKILL) }
    let secret = "whsec_test_\(UUID().uuidString)"
    let settings = PaymentSettings(
      sandboxEnabled: false,
      stripe: StripeSettings(
        secretKey: "sk_test_mart", publishableKey: "pk_test_mart", webhookSecrets: [secret], apiBase: stripe.url))
    try await withEdge(payments: settings) { edge in
      _ = try await stripe.call(
        "/_config/webhooks/mart",
        form: [("url", "http://127.0.0.1:\(edge.gatewayPort)/v1/webhooks/stripe"), ("secret", secret)])
      let admin = try await edge.admin()
      let kettle = try await Self.stockedProduct(edge, admin: admin, sku: "KETTLE-S", price: 45_000, onHand: 5)
      let (customer, _) = try await edge.register()
      let orderID = try await Self.awaitingOrder(edge, customer: customer, items: [(kettle, 2)])
      let created = try await edge.call(
        "POST", "/v1/orders/\(orderID)/payments", json: ["provider": "STRIPE"], token: customer)
      #expect(created.status == 200, "\(created.text)")
      let payment = try created.object("payment")
      let intent = try #require(payment["providerPaymentId"] as? String)
      let confirm = try #require(try created.object("nextAction")["stripeConfirm"] as? [String: Any])
      #expect(confirm["publishableKey"] as? String == "pk_test_mart")

      // What Stripe.js does in the customer's browser.
      _ = try await stripe.confirmWithTestCard(intent)

      let isPaid = await eventually { try await Self.status(edge, orderID, customer) == "PAID" }
      #expect(isPaid)
      let read = try await edge.call("GET", "/v1/payments/\(payment["id"] as? String ?? "")", token: customer)
      #expect(try read.json()["status"] as? String == "SUCCEEDED", "\(read.text)")

      // A forged webhook is refused at the edge with a 400 naming the signature.
      let forged = try await edge.call(
        "POST", "/v1/webhooks/stripe", body: Data(#"{"id":"evt_x","type":"payment_intent.succeeded"}"#.utf8),
        contentType: "application/json", headers: ["Stripe-Signature": "t=1,v1=00"])
      #expect(forged.status == 400, "\(forged.text)")
    }
  }
}
