import AsyncHTTPClient
import Foundation
import GRPCCore
import Hummingbird
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import NIOCore
import Testing

@testable import PaymentService

// Note: no closure literal inside `#expect(...)` in these tests (see InventoryHarness).

/// The real providers' paths against servers on loopback that speak their wire formats:
/// localstripe for Stripe's API, and a PayFast stand-in (written here) for ITN validation.
@Suite(.serialized) struct PaymentProviderTests {
  // MARK: Stripe

  /// A Stripe event, signed as Stripe signs it.
  static func stripeEvent(_ id: String, _ type: String, intent: String, secret: String) -> (Data, String) {
    let body = Data(
      """
      {"id":"\(id)","object":"event","type":"\(type)","data":{"object":{"id":"\(intent)","object":"payment_intent","status":"succeeded","amount":1}}}
      """.utf8)
    let header = StripeSignature.header(
      payload: [UInt8](body), secret: secret, timestamp: Int64(Date().timeIntervalSince1970))
    return (body, header)
  }

  @Test func stripePaymentIsConfirmedByStripeNotByTheWebhooksWord() async throws {
    let stripe = try await LocalStripe.start()
    defer { stripe.process.signal(SIGKILL) }
    let secret = "whsec_test_\(UUID().uuidString)"
    let settings = PaymentSettings(
      sandboxEnabled: false,
      stripe: StripeSettings(
        secretKey: "sk_test_mart", publishableKey: "pk_test_mart", webhookSecrets: ["whsec_old_rotated", secret],
        apiBase: stripe.url),
      providerTimeout: .seconds(10))
    try await OrderHarness.run("pay_stripe", payments: settings) { mart in
      let payments = try #require(mart.payments)
      let order = try await PaymentServiceTests.awaitingOrder(mart, sku: "PAY-STRIPE")
      let created = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "k1", provider: .stripe)
      #expect(created.payment.status == .pending)
      let intent = created.payment.providerPaymentID
      #expect(intent.hasPrefix("pi_"))
      #expect(created.nextAction.stripeConfirm.publishableKey == "pk_test_mart")
      #expect(created.nextAction.stripeConfirm.clientSecret.hasPrefix(intent))
      // A retry with the key answers with the same PaymentIntent and makes none.
      let replayed = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "k1", provider: .stripe)
      #expect(replayed.payment.id == created.payment.id)
      #expect(replayed.nextAction.stripeConfirm.clientSecret == created.nextAction.stripeConfirm.clientSecret)

      func deliver(_ event: (Data, String)) async throws {
        _ = try await payments.stripeWebhook(
          .with {
            $0.httpBody = .with {
              $0.contentType = "application/json"
              $0.data = event.0
            }
            $0.signature = event.1
          })
      }
      func status() async throws -> Mart_Payment_V1_Payment.Status {
        try await payments.getPayment(.with { $0.paymentID = created.payment.id }, metadata: mart.admin).status
      }

      // Signed with a secret that is not ours: refused, body unread.
      let forged = await rpcError {
        try await deliver(Self.stripeEvent("evt_forged", "payment_intent.succeeded", intent: intent, secret: "whsec_x"))
      }
      #expect(forged?.code == .invalidArgument)
      #expect(reason(forged) == "INVALID_WEBHOOK_SIGNATURE")
      // Correctly signed, but the customer has not paid: Stripe, asked again, says so.
      try await deliver(Self.stripeEvent("evt_early", "payment_intent.succeeded", intent: intent, secret: secret))
      #expect(try await status() == .pending)

      // The customer confirms with Stripe (as Stripe.js would), and Stripe's event arrives twice.
      let confirmed = try await stripe.confirmWithTestCard(intent)
      #expect(confirmed["status"] as? String == "succeeded")
      let succeeded = Self.stripeEvent("evt_paid", "payment_intent.succeeded", intent: intent, secret: secret)
      try await deliver(succeeded)
      try await deliver(succeeded)
      #expect(try await status() == .succeeded)
      #expect(try await mart.waitFor(order.id, .paid) == .paid)
      let received = try await mart.timelineKinds(order.id).filter { $0 == .paymentReceived }
      #expect(received.count == 1)

      // One PaymentIntent at Stripe for all of it.
      let intents = try await stripe.call("/v1/payment_intents")
      #expect((intents["data"] as? [Any])?.count == 1)

      // Refunded through Stripe, with the refund recorded.
      let refund = try await payments.refundPayment(
        .with {
          $0.paymentID = created.payment.id
          $0.reason = "customer changed their mind"
        }, metadata: mart.admin)
      #expect(refund.refund.status == .succeeded)
      #expect(refund.refund.providerRefundID.hasPrefix("re_"))
      #expect(refund.payment.status == .refunded)
      #expect(try await mart.waitFor(order.id, .refunded) == .refunded)
    }
  }

  /// Stripe's idempotency layer in front of localstripe, which lacks it: a request with an
  /// Idempotency-Key seen before gets the first answer again (docs.stripe.com/api/idempotent_requests),
  /// and the first PaymentIntent creation answers only after `delay`, after our client gave up.
  actor IdempotentStripe {
    let upstream: String
    let delay: Duration
    var answers: [String: (UInt, Data)] = [:]
    var createKeys: [String] = []
    var delayed = false

    init(upstream: String, delay: Duration) {
      self.upstream = upstream
      self.delay = delay
    }

    func handle(method: HTTPRequest.Method, path: String, key: String?, body: ByteBuffer) async throws -> (UInt, Data) {
      let creates = method == .post && path == "/v1/payment_intents"
      if creates { createKeys.append(key ?? "") }
      if let key, let earlier = answers[key] { return earlier }
      var request = HTTPClientRequest(url: upstream + path)
      request.method = method == .post ? .POST : .GET
      request.headers.add(name: "Authorization", value: "Bearer sk_test_mart")
      request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
      if method == .post { request.body = .bytes(body) }
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
      let answer = (response.status.code, Data(buffer: try await response.body.collect(upTo: 1 << 20)))
      if let key { answers[key] = answer }
      if creates, !delayed {
        delayed = true
        try await Task.sleep(for: delay)
      }
      return answer
    }
  }

  @Test func stripeTimeoutLeavesThePaymentPendingAndTheRetryChargesOnce() async throws {
    let stripe = try await LocalStripe.start()
    defer { stripe.process.signal(SIGKILL) }
    let standIn = IdempotentStripe(upstream: stripe.url, delay: .seconds(3))
    let router = Router()
    router.post("**") { request, _ -> Response in try await Self.forward(request, to: standIn) }
    router.get("**") { request, _ -> Response in try await Self.forward(request, to: standIn) }
    try await Self.withLoopbackServer(router) { port in
      let settings = PaymentSettings(
        sandboxEnabled: false,
        stripe: StripeSettings(
          secretKey: "sk_test_mart", publishableKey: "pk_test_mart", webhookSecrets: ["whsec_test"],
          apiBase: "http://127.0.0.1:\(port)"),
        providerTimeout: .seconds(1), maximumRetryBackoff: .seconds(1))
      try await OrderHarness.run("pay_stripe_timeout", payments: settings) { mart in
        let order = try await PaymentServiceTests.awaitingOrder(mart, sku: "PAY-STRIPE-T")
        let timedOut = await rpcError {
          _ = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "t1", provider: .stripe)
        }
        #expect(timedOut?.code == .unavailable)
        #expect(reason(timedOut) == "PAYMENT_PROVIDER_UNAVAILABLE")
        // The order is not failed by it.
        #expect(try await mart.order(order.id).status == .awaitingPayment)
        let payments = try #require(mart.payments)
        let listed = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.customer)
        #expect(listed.payments.map(\.status) == [.pending])

        // The client's retry (and the worker's) carry the same key: one PaymentIntent.
        var retried: Mart_Payment_V1_CreatePaymentResponse?
        _ = await eventually {
          retried = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "t1", provider: .stripe)
          return true
        }
        let answer = try #require(retried)
        #expect(answer.payment.id == listed.payments.first?.id)
        #expect(answer.payment.providerPaymentID.hasPrefix("pi_"))
        #expect(!answer.nextAction.stripeConfirm.clientSecret.isEmpty)
        let keys = await standIn.createKeys
        #expect(keys.count >= 2)
        #expect(Set(keys) == ["mart-payment-\(answer.payment.id)-create"])
        let intents = try await stripe.call("/v1/payment_intents")
        #expect((intents["data"] as? [Any])?.count == 1)
      }
    }
  }

  static func forward(_ request: Request, to standIn: IdempotentStripe) async throws -> Response {
    let body = try await request.body.collect(upTo: 1 << 16)
    let (status, data) = try await standIn.handle(
      method: request.method, path: request.uri.path,
      key: request.headers.first { $0.name.canonicalName == "idempotency-key" }?.value, body: body)
    return Response(
      status: .init(code: Int(status)), headers: [.contentType: "application/json"],
      body: .init(byteBuffer: ByteBuffer(data: data)))
  }

  /// Stripe's API as a script: PaymentIntents whose status the test sets, and refunds that stay
  /// pending until the test says otherwise (localstripe's refunds succeed at once and it sends no
  /// refund events, so this is how a refund confirmed later by its webhook is exercised).
  actor ScriptedStripe {
    struct Intent {
      var amount: String
      var currency: String
      var paymentID: String
      var status = "requires_payment_method"
      var failure: String?
    }
    var intents: [String: Intent] = [:]
    var refunds: [String: (intent: String, amount: String, status: String)] = [:]

    func setIntent(_ id: String, status: String, failure: String? = nil) {
      intents[id]?.status = status
      intents[id]?.failure = failure
    }
    func setRefund(_ id: String, status: String) { refunds[id]?.status = status }
    func status(of intent: String) -> String? { intents[intent]?.status }

    func handle(post: Bool, path: String, body: String) -> (Int, String) {
      let form = Dictionary(FormEncoding.decode(body) ?? [], uniquingKeysWith: { first, _ in first })
      let parts = path.split(separator: "/").map(String.init)
      switch (post, parts.count > 1 ? parts[1] : "", parts.count) {
      case (true, "payment_intents", 2):
        let id = "pi_scripted\(intents.count + 1)"
        intents[id] = Intent(
          amount: form["amount"] ?? "0", currency: form["currency"] ?? "", paymentID: form["metadata[payment_id]"] ?? ""
        )
        return (200, intentJSON(id))
      case (false, "payment_intents", 3):
        return intents[parts[2]] == nil ? (404, #"{"error":{"code":"resource_missing"}}"#) : (200, intentJSON(parts[2]))
      case (true, "payment_intents", 4) where parts[3] == "cancel":
        intents[parts[2]]?.status = "canceled"
        return (200, intentJSON(parts[2]))
      case (true, "refunds", 2):
        let id = "re_scripted\(refunds.count + 1)"
        refunds[id] = (form["payment_intent"] ?? "", form["amount"] ?? "0", "pending")
        return (200, refundJSON(id))
      case (false, "refunds", 3):
        return refunds[parts[2]] == nil ? (404, #"{"error":{"code":"resource_missing"}}"#) : (200, refundJSON(parts[2]))
      default:
        return (404, #"{"error":{"code":"resource_missing"}}"#)
      }
    }

    func intentJSON(_ id: String) -> String {
      guard let intent = intents[id] else { return "{}" }
      let error =
        intent.failure.map {
          #","last_payment_error":{"code":"card_declined","decline_code":"\#($0)","message":"Declined"}"#
        }
        ?? ""
      return """
        {"id":"\(id)","object":"payment_intent","status":"\(intent.status)","amount":\(intent.amount),\
        "currency":"\(intent.currency)","client_secret":"\(id)_secret_x",\
        "metadata":{"payment_id":"\(intent.paymentID)"}\(error)}
        """
    }

    func refundJSON(_ id: String) -> String {
      guard let refund = refunds[id] else { return "{}" }
      return """
        {"id":"\(id)","object":"refund","status":"\(refund.status)","amount":\(refund.amount),\
        "payment_intent":"\(refund.intent)"}
        """
    }
  }

  /// A signed Stripe event naming an object (the service re-reads it from Stripe).
  static func signedEvent(_ id: String, _ type: String, object: String, kind: String, secret: String) -> (Data, String)
  {
    let body = Data(
      #"{"id":"\#(id)","object":"event","type":"\#(type)","data":{"object":{"id":"\#(object)","object":"\#(kind)"}}}"#
        .utf8)
    return (
      body,
      StripeSignature.header(payload: [UInt8](body), secret: secret, timestamp: Int64(Date().timeIntervalSince1970))
    )
  }

  @Test func stripeFailuresLateEventsAndARefundConfirmedByItsWebhook() async throws {
    let stripe = ScriptedStripe()
    let router = Router()
    router.post("**") { request, _ -> Response in
      let body = String(buffer: try await request.body.collect(upTo: 1 << 16))
      let (status, json) = await stripe.handle(post: true, path: request.uri.path, body: body)
      return Response(
        status: .init(code: status), headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(string: json)))
    }
    router.get("**") { request, _ -> Response in
      let (status, json) = await stripe.handle(post: false, path: request.uri.path, body: "")
      return Response(
        status: .init(code: status), headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(string: json)))
    }
    let secret = "whsec_scripted"
    try await Self.withLoopbackServer(router) { port in
      let settings = PaymentSettings(
        sandboxEnabled: false,
        stripe: StripeSettings(
          secretKey: "sk_test_mart", publishableKey: "pk_test_mart", webhookSecrets: [secret],
          apiBase: "http://127.0.0.1:\(port)"))
      try await OrderHarness.run("pay_stripe_script", payments: settings) { mart in
        let payments = try #require(mart.payments)
        func deliver(_ event: (Data, String)) async throws {
          _ = try await payments.stripeWebhook(
            .with {
              $0.httpBody = .with {
                $0.contentType = "application/json"
                $0.data = event.0
              }
              $0.signature = event.1
            })
        }
        func payment(_ id: String) async throws -> Mart_Payment_V1_Payment {
          try await payments.getPayment(.with { $0.paymentID = id }, metadata: mart.admin)
        }
        let order = try await PaymentServiceTests.awaitingOrder(mart, sku: "PAY-SCRIPT")

        // A checkout superseded by a new one is withdrawn at Stripe, so it can no longer be paid.
        let abandoned = try await PaymentServiceTests.pay(
          mart, order, outcome: .unspecified, key: "s0", provider: .stripe)

        // Declined: FAILED, with the decline code; the order still awaits payment.
        let first = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "s1", provider: .stripe)
        let firstIntent = first.payment.providerPaymentID
        #expect(try await payment(abandoned.payment.id).status == .cancelled)
        let withdrawn = await eventually {
          await stripe.status(of: abandoned.payment.providerPaymentID) == "canceled"
        }
        #expect(withdrawn)
        await stripe.setIntent(firstIntent, status: "requires_payment_method", failure: "insufficient_funds")
        try await deliver(
          Self.signedEvent(
            "evt_f1", "payment_intent.payment_failed", object: firstIntent, kind: "payment_intent", secret: secret))
        let failed = try await payment(first.payment.id)
        #expect(failed.status == .failed)
        #expect(failed.failureCode == "insufficient_funds")
        _ = await eventually { try await mart.timelineKinds(order.id).contains(.paymentFailed) }
        #expect(try await mart.order(order.id).status == .awaitingPayment)

        // Retried, and paid.
        let second = try await PaymentServiceTests.pay(mart, order, outcome: .unspecified, key: "s2", provider: .stripe)
        let secondIntent = second.payment.providerPaymentID
        #expect(secondIntent != firstIntent)
        await stripe.setIntent(secondIntent, status: "succeeded")
        try await deliver(
          Self.signedEvent(
            "evt_s2", "payment_intent.succeeded", object: secondIntent, kind: "payment_intent", secret: secret))
        #expect(try await payment(second.payment.id).status == .succeeded)
        #expect(try await mart.waitFor(order.id, .paid) == .paid)

        // Late and reordered events change nothing: Stripe, asked again, says succeeded.
        try await deliver(
          Self.signedEvent(
            "evt_late", "payment_intent.payment_failed", object: secondIntent, kind: "payment_intent", secret: secret))
        try await deliver(
          Self.signedEvent(
            "evt_cancel", "payment_intent.canceled", object: firstIntent, kind: "payment_intent", secret: secret))
        #expect(try await payment(second.payment.id).status == .succeeded)
        #expect(try await payment(first.payment.id).status == .failed)

        // A refund Stripe takes time over: PENDING until its webhook; then REFUNDED, and the order.
        let refund = try await payments.refundPayment(.with { $0.paymentID = second.payment.id }, metadata: mart.admin)
        #expect(refund.refund.status == .pending)
        #expect(refund.payment.status == .succeeded)
        let refundID = refund.refund.providerRefundID
        #expect(refundID.hasPrefix("re_scripted"))
        await stripe.setRefund(refundID, status: "succeeded")
        try await deliver(
          Self.signedEvent("evt_r1", "refund.updated", object: refundID, kind: "refund", secret: secret))
        let refunded = try await payment(second.payment.id)
        #expect(refunded.status == .refunded)
        #expect(refunded.refunds.map(\.status) == [.succeeded])
        #expect(try await mart.waitFor(order.id, .refunded) == .refunded)
      }
    }
  }

  // MARK: PayFast

  /// PayFast's validation endpoint: answers `verdict` and remembers what it was asked.
  actor FakePayFast {
    var verdict = "VALID"
    var asked: [String] = []
    func answer(_ body: String) -> String {
      asked.append(body)
      return verdict
    }
    func set(_ verdict: String) { self.verdict = verdict }
  }

  static func withFakePayFast(_ body: (FakePayFast, Int) async throws -> Void) async throws {
    let fake = FakePayFast()
    let router = Router()
    router.post("/eng/query/validate") { request, _ -> String in
      let body = try await request.body.collect(upTo: 1 << 16)
      return await fake.answer(String(buffer: body))
    }
    try await withLoopbackServer(router) { port in try await body(fake, port) }
  }

  /// Serves `router` on a free loopback port while `body` runs with that port.
  static func withLoopbackServer(_ router: Router<BasicRequestContext>, _ body: (Int) async throws -> Void)
    async throws
  {
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
      try await body(port)
    }
  }

  static let passphrase = "jt7NOE43FZPn"

  /// An ITN as PayFast posts it, signed (blanks included, in this order).
  static func itn(
    _ payment: Mart_Payment_V1_Payment, pfPaymentID: String = "1221576", status: String = "COMPLETE",
    gross: String? = nil, merchant: String = "10000100"
  ) -> [(String, String)] {
    let amount = gross ?? PayFastAmount.format(payment.amount.amountMinor)
    var fields: [(String, String)] = [
      ("m_payment_id", payment.id), ("pf_payment_id", pfPaymentID), ("payment_status", status),
      ("item_name", "Order #1"), ("item_description", ""), ("amount_gross", amount), ("amount_fee", "-2.30"),
      ("amount_net", amount), ("custom_str1", payment.orderID), ("custom_str2", ""), ("custom_int1", ""),
      ("name_first", "Thandi"), ("name_last", "Nkosi"), ("email_address", "thandi+shop@example.com"),
      ("merchant_id", merchant),
    ]
    fields.append(("signature", PayFastSignature.signature(fields, passphrase: passphrase)))
    return fields
  }

  @Test func payfastITNChangesNothingUntilAllFourChecksPass() async throws {
    try await Self.withFakePayFast { fake, port in
      let settings = PaymentSettings(
        sandboxEnabled: false,
        payfast: PayFastSettings(
          merchantID: "10000100", merchantKey: "46f0cd694581a", passphrase: Self.passphrase,
          baseURL: "http://127.0.0.1:\(port)",
          notifyURL: "https://shop.example/v1/webhooks/payfast"),
        allowedReturnOrigins: ["https://shop.example"])
      try await OrderHarness.run("pay_payfast", payments: settings) { mart in
        let payments = try #require(mart.payments)
        let order = try await PaymentServiceTests.awaitingOrder(mart, sku: "PAY-PF")
        let created = try await payments.createPayment(
          .with {
            $0.orderID = order.id
            $0.provider = .payfast
            $0.returnURL = "https://shop.example/paid"
            $0.cancelURL = "https://shop.example/cancelled"
          }, metadata: mart.customer)
        let form = created.nextAction.redirectForm
        #expect(form.redirectURL == "http://127.0.0.1:\(port)/eng/process")
        let names = form.formFields.map(\.name)
        #expect(
          names == [
            "merchant_id", "merchant_key", "return_url", "cancel_url", "notify_url", "name_first", "name_last",
            "m_payment_id", "amount", "item_name", "custom_str1", "signature",
          ])
        let formFields = form.formFields.dropLast().map { ($0.name, $0.value) }
        #expect(form.formFields.last?.value == PayFastSignature.signature(formFields, passphrase: Self.passphrase))
        let amount = formFields.first { $0.0 == "amount" }?.1
        #expect(amount == PayFastAmount.format(order.total.amountMinor))

        let payment = created.payment
        // Through the gateway, which vouches for the address it saw with its signed token.
        let auth = mart.users.auth
        func deliver(_ fields: [(String, String)], from address: String = "197.97.145.145") async throws {
          let viaGateway = try await auth.fromGateway(to: .payment, clientAddress: address)
          _ = try await payments.payfastWebhook(
            .with {
              $0.httpBody = .with {
                $0.contentType = "application/x-www-form-urlencoded"
                $0.data = Data(PayFastSignature.parameterString(fields).utf8)
              }
              $0.sourceIp = address
            }, metadata: viaGateway)
        }
        func status() async throws -> Mart_Payment_V1_Payment.Status {
          try await payments.getPayment(.with { $0.paymentID = payment.id }, metadata: mart.admin).status
        }

        // 1. A field changed after signing.
        var tampered = Self.itn(payment)
        tampered[2].1 = "COMPLETE "
        #expect(reason(await rpcError { try await deliver(tampered) }) == "INVALID_WEBHOOK_SIGNATURE")
        // 2. From outside PayFast's ranges.
        let foreign = await rpcError { try await deliver(Self.itn(payment), from: "203.0.113.7") }
        #expect(foreign?.code == .permissionDenied)
        // 2b. A direct caller naming PayFast's address, in the request and in the gateway's header,
        //     without the gateway's token: its own address is what counts.
        var spoofed = Metadata()
        spoofed.addString("197.97.145.145", forKey: ForwardedClient.addressKey)
        spoofed.addString("197.97.145.145", forKey: "x-forwarded-for")
        let spoofedRequest = Mart_Payment_V1_PayfastWebhookRequest.with {
          $0.httpBody = .with {
            $0.contentType = "application/x-www-form-urlencoded"
            $0.data = Data(PayFastSignature.parameterString(Self.itn(payment)).utf8)
          }
          $0.sourceIp = "197.97.145.145"
        }
        let direct = await rpcError { _ = try await payments.payfastWebhook(spoofedRequest, metadata: spoofed) }
        #expect(direct?.code == .permissionDenied)
        // 2c. A gateway token made with a key that is not the gateway's: refused.
        let forgedMetadata = try await AuthConfiguration.ephemeral().fromGateway(
          to: .payment, clientAddress: "197.97.145.145")
        let forged = await rpcError { _ = try await payments.payfastWebhook(spoofedRequest, metadata: forgedMetadata) }
        #expect(forged?.code == .unauthenticated)
        // 3. Signed, but for another amount.
        let wrongAmount = await rpcError { try await deliver(Self.itn(payment, gross: "1.00")) }
        #expect(fields(wrongAmount) == ["amount_gross"])
        // 4. PayFast does not confirm it.
        await fake.set("INVALID")
        #expect(reason(await rpcError { try await deliver(Self.itn(payment)) }) == "INVALID_WEBHOOK_SIGNATURE")
        #expect(try await status() == .pending)

        // All four pass: paid, once, however often PayFast sends it.
        await fake.set("VALID")
        try await deliver(Self.itn(payment))
        try await deliver(Self.itn(payment))
        #expect(try await status() == .succeeded)
        #expect(try await mart.waitFor(order.id, .paid) == .paid)
        let read = try await payments.getPayment(.with { $0.paymentID = payment.id }, metadata: mart.admin)
        #expect(read.providerPaymentID == "1221576")
        // What was validated is the parameter string PayFast posted, without the passphrase.
        let asked = await fake.asked
        #expect(asked.last == PayFastSignature.parameterString(Array(Self.itn(payment).dropLast())))
        #expect(asked.allSatisfy { !$0.contains("passphrase") })
        let received = try await mart.timelineKinds(order.id).filter { $0 == .paymentReceived }
        #expect(received.count == 1)
        // The same checkout paid a second time (another pf_payment_id): recorded as a payment of
        // its own, and its automatic refund, which PayFast cannot take from us, FAILED for a person.
        try await deliver(Self.itn(payment, pfPaymentID: "1221577"))
        let both = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.admin).payments
        #expect(both.count == 2)
        let second = both.first { $0.providerPaymentID == "1221577" }
        #expect(second?.status == .succeeded)
        let secondRefundFailed = await eventually {
          let all = try await payments.listOrderPayments(.with { $0.orderID = order.id }, metadata: mart.admin)
          return all.payments.first { $0.providerPaymentID == "1221577" }?.refunds.map(\.status) == [.failed]
        }
        #expect(secondRefundFailed)
        #expect(try await mart.order(order.id).status == .paid)
        // PayFast's refunds are made in its dashboard; the mart says so rather than pretending.
        let refund = await rpcError {
          _ = try await payments.refundPayment(.with { $0.paymentID = payment.id }, metadata: mart.admin)
        }
        #expect(refund?.code == .failedPrecondition)
        #expect(reason(refund) == "REFUND_NOT_ALLOWED")
      }
    }
  }
}
