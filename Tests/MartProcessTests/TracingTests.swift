import Foundation
import Hummingbird
import Logging
import MartRuntime
import MartTestSupport
import NIOCore
import Synchronization
import Testing

/// One trace per order: a `mart dev` exporting over OTLP/HTTP (JSON) to a receiver in this test
/// places an order and pays it with Stripe (localstripe, whose webhook comes back through the
/// gateway) for a client whose own trace (`traceparent`) both requests carry. The spans must then
/// hang together, parent to child, from the client's span through the gateway, the order service,
/// the saga's ReserveStock, the OrderPlaced publish and its consumption by the notification
/// service, to the payment, its webhook's effects and OrderPaid.
@Suite struct TracingTests {
  @Test func placingAndPayingAnOrderIsOneTraceFromTheGatewayToEveryConsumer() async throws {
    let receiver = OTLPReceiver()
    let stripe = try await LocalStripe.start()
    defer { stripe.process.signal(SIGKILL) }
    let webhookSecret = "whsec_test_\(UUID().uuidString)"
    try await receiver.serving { otlpPort in
      try await withScratchDatabases("traced") { databases in
        var (environment, base, _) = try RunningMart.environment(databases, label: "traced")
        environment["MART_PAYMENT_STRIPE_SECRET_KEY"] = "sk_test_mart"
        environment["MART_PAYMENT_STRIPE_PUBLISHABLE_KEY"] = "pk_test_mart"
        environment["MART_PAYMENT_STRIPE_WEBHOOK_SECRETS"] = webhookSecret
        environment["MART_PAYMENT_STRIPE_API_BASE"] = stripe.url
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:\(otlpPort)"
        environment["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/json"
        // Export every 100 ms rather than every 5 s.
        environment["OTEL_BSP_SCHEDULE_DELAY"] = "100"
        let mart = try ChildProcess.mart(["dev"], environment: environment)
        let ready = await eventually { await httpStatus(base + "/readyz") == 200 }
        #expect(ready, "\(mart.standardError.suffix(2000))")

        let productID = try await RunningMart.stockedProduct(databases)
        let customer = try await RunningMart.customer(base)
        // The client's checkout span: both requests continue it.
        let traceID = String((0..<4).map { _ in String(format: "%08x", UInt32.random(in: 1...UInt32.max)) }.joined())
        let clientSpanID = String(format: "%016llx", UInt64.random(in: 1...UInt64.max))
        let headers = ["traceparent": "00-\(traceID)-\(clientSpanID)-01"]
        let orderID = try await RunningMart.placeOrder(base, productID: productID, token: customer, headers: headers)
        _ = try await stripe.call(
          "/_config/webhooks/mart", form: [("url", base + "/v1/webhooks/stripe"), ("secret", webhookSecret)])
        let created = try await RunningMart.json(
          base, "POST", "/v1/orders/\(orderID)/payments", ["provider": "STRIPE"], token: customer, headers: headers)
        let intent = try #require((created["payment"] as? [String: Any])?["providerPaymentId"] as? String)
        // What Stripe.js does in the customer's browser; localstripe then sends its webhook.
        _ = try await stripe.confirmWithTestCard(intent)

        // Everything up to OrderPaid's consumption by the notification service has been exported.
        let complete = await eventually {
          receiver.trace(traceID).contains {
            $0.name == "consume mart.order.v1.OrderPaid"
              && ($0.attributes["messaging.consumer.group.name"] ?? "").contains("notification")
          }
        }
        #expect(complete, "spans of the trace: \(receiver.trace(traceID).map(\.name).sorted())")
        let trace = SpanTree(receiver.trace(traceID))

        // The order: gateway -> client call -> the order service.
        let placing = try #require(trace.first("POST /v1/orders", kind: .server))
        #expect(placing.parentSpanID == clientSpanID)
        let createClient = try #require(trace.first("mart.order.v1.OrderService/CreateOrder", kind: .client))
        #expect(createClient.parentSpanID == placing.spanID)
        let createServer = try #require(trace.first("mart.order.v1.OrderService/CreateOrder", kind: .server))
        #expect(createServer.parentSpanID == createClient.spanID)

        // Log lines written in a span carry it: the gateway's access log line of the order.
        let accessLog = mart.standardError.split(separator: "\n").filter {
          $0.contains(#""trace_id":"\#(traceID)""#) && $0.contains(#""span_id":"\#(placing.spanID)""#)
        }
        #expect(!accessLog.isEmpty, "\(mart.standardError.suffix(3000))")

        // The saga's reservation, scheduled by CreateOrder, runs later in its own span of the trace.
        let reserve = try #require(trace.first("mart.inventory.v1.InventoryService/ReserveStock", kind: .server))
        #expect(trace.ancestors(of: reserve).map(\.name).contains("saga reserve_stock"))
        #expect(trace.descends(reserve, from: createServer))

        // OrderPlaced: appended by CreateOrder, published by the relay, consumed by notification.
        let placed = try #require(
          trace.spans.first {
            $0.name == "consume mart.order.v1.OrderPlaced"
              && ($0.attributes["messaging.consumer.group.name"] ?? "").contains("notification")
          })
        let publish = try #require(trace.parent(of: placed))
        #expect(publish.name == "publish mart.order.v1.OrderPlaced" && publish.kind == .producer)
        let append = try #require(trace.parent(of: publish))
        #expect(append.name == "outbox append mart.order.v1.OrderPlaced")
        // …in the transaction of CreateOrder that wrote the order.
        let transaction = try #require(trace.parent(of: append))
        #expect(transaction.name.hasPrefix("transaction OrderStore."), "\(transaction.name)")
        #expect(transaction.parentSpanID == createServer.spanID)

        // The payment: Stripe's webhook is a trace of its own (Stripe sends no traceparent), and what
        // it causes continues the payment's trace, linked to the webhook's.
        let paying = try #require(trace.first("POST /v1/orders/{order_id}/payments", kind: .server))
        #expect(paying.parentSpanID == clientSpanID)
        let settled = try #require(trace.first("payment outcome from the provider", kind: .internal))
        #expect(trace.descends(settled, from: paying))
        let webhookTrace = try #require(settled.linkedTraceIDs.first)
        #expect(
          receiver.trace(webhookTrace).contains { $0.name == "POST /v1/webhooks/stripe" && $0.kind == .server },
          "\(receiver.trace(webhookTrace).map(\.name))")
        let succeeded = try #require(trace.first("outbox append mart.payment.v1.PaymentSucceeded", kind: .internal))
        #expect(trace.descends(succeeded, from: settled))

        // Through PaymentSucceeded's consumption and the commit of the stock, to OrderPaid.
        let paid = try #require(trace.first("outbox append mart.order.v1.OrderPaid", kind: .internal))
        let path = trace.ancestors(of: paid).map(\.name)
        #expect(path.contains("consume mart.payment.v1.PaymentSucceeded"), "\(path)")
        #expect(trace.descends(paid, from: settled), "\(path)")

        // Every span is this process's, and none is orphaned outside the client's span.
        #expect(Set(trace.spans.map(\.service)) == ["mart-dev"])
        #expect(trace.spans.allSatisfy { $0.spanID == clientSpanID || trace.descends($0, fromSpanID: clientSpanID) })

        mart.signal(SIGTERM)
        #expect(await mart.waitForExit() == 0)
      }
    }
  }
}

/// A span as an OTLP/JSON export carries it.
struct ExportedSpan: Sendable, Equatable {
  enum Kind: Int, Sendable { case unspecified = 0, `internal`, server, client, producer, consumer }
  var traceID: String
  var spanID: String
  var parentSpanID: String
  var name: String
  var kind: Kind
  var service: String
  var attributes: [String: String]
  /// The traces of the spans this one links to.
  var linkedTraceIDs: [String] = []
}

/// The spans of one trace, by parent.
struct SpanTree {
  let spans: [ExportedSpan]
  private let byID: [String: ExportedSpan]

  init(_ spans: [ExportedSpan]) {
    self.spans = spans
    byID = Dictionary(spans.map { ($0.spanID, $0) }, uniquingKeysWith: { first, _ in first })
  }

  func first(_ name: String, kind: ExportedSpan.Kind) -> ExportedSpan? {
    spans.first { $0.name == name && $0.kind == kind }
  }

  func parent(of span: ExportedSpan) -> ExportedSpan? { byID[span.parentSpanID] }

  /// Parent, grandparent… as far as exported spans go.
  func ancestors(of span: ExportedSpan) -> [ExportedSpan] {
    var chain: [ExportedSpan] = []
    var current = span
    while let parent = parent(of: current), !chain.contains(parent) {
      chain.append(parent)
      current = parent
    }
    return chain
  }

  func descends(_ span: ExportedSpan, from ancestor: ExportedSpan) -> Bool {
    ancestors(of: span).contains(ancestor)
  }

  /// Whether the chain of `span`'s parents reaches `spanID` (a span not exported, such as the
  /// client's own).
  func descends(_ span: ExportedSpan, fromSpanID spanID: String) -> Bool {
    span.parentSpanID == spanID || ancestors(of: span).contains { $0.parentSpanID == spanID }
  }
}

/// An OTLP/HTTP receiver for traces in JSON (`POST /v1/traces`), on a free loopback port.
final class OTLPReceiver: Sendable {
  private let received = Mutex<[ExportedSpan]>([])

  /// The spans received so far of the trace `traceID` (32 hex digits).
  func trace(_ traceID: String) -> [ExportedSpan] {
    received.withLock { $0.filter { $0.traceID == traceID } }
  }

  /// Runs the receiver while `body` runs, handing it the port.
  func serving(_ body: (Int) async throws -> Void) async throws {
    let router = Router()
    router.post("/v1/traces") { request, _ -> Response in
      let bytes = try await request.body.collect(upTo: 64 << 20)
      self.receive(Data(buffer: bytes))
      return Response(
        status: .ok, headers: [.contentType: "application/json"],
        body: ResponseBody(byteBuffer: ByteBuffer(string: "{}")))
    }
    let (ports, port) = AsyncStream.makeStream(of: Int.self)
    // Stopped by cancellation at the end, which Hummingbird logs as an error: not one here.
    var logger = Logger(label: "otlp-receiver")
    logger.logLevel = .critical
    let app = Application(
      router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
      onServerRunning: { channel in
        port.yield(channel.localAddress?.port ?? 0)
        port.finish()
      }, logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await app.run() }
      var iterator = ports.makeAsyncIterator()
      let listening = try #require(await iterator.next())
      try await body(listening)
      group.cancelAll()
    }
  }

  /// One export request: resourceSpans[].scopeSpans[].spans[], with the resource's service.name.
  private func receive(_ data: Data) {
    guard let export = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return }
    var spans: [ExportedSpan] = []
    for resourceSpans in export["resourceSpans"] as? [[String: Any]] ?? [] {
      let resource = Self.attributes((resourceSpans["resource"] as? [String: Any])?["attributes"])
      for scopeSpans in resourceSpans["scopeSpans"] as? [[String: Any]] ?? [] {
        for span in scopeSpans["spans"] as? [[String: Any]] ?? [] {
          spans.append(
            ExportedSpan(
              traceID: Self.hexID(span["traceId"]), spanID: Self.hexID(span["spanId"]),
              parentSpanID: Self.hexID(span["parentSpanId"]), name: span["name"] as? String ?? "",
              kind: ExportedSpan.Kind(rawValue: (span["kind"] as? Int) ?? 0) ?? .unspecified,
              service: resource["service.name"] ?? "", attributes: Self.attributes(span["attributes"]),
              linkedTraceIDs: (span["links"] as? [[String: Any]] ?? []).map { Self.hexID($0["traceId"]) }))
        }
      }
    }
    received.withLock { $0 += spans }
  }

  /// An id in lower-case hex: OTLP/JSON says hex, but protobuf's JSON mapping (which swift-otel
  /// uses) writes bytes in base64, so both are read.
  static func hexID(_ value: Any?) -> String {
    guard let text = value as? String, !text.isEmpty else { return "" }
    if (text.count == 32 || text.count == 16), text.allSatisfy(\.isHexDigit) { return text.lowercased() }
    guard let bytes = Data(base64Encoded: text) else { return text }
    return bytes.map { String(format: "%02x", $0) }.joined()
  }

  /// `[{"key": k, "value": {"stringValue": v}}]` (other value kinds as their JSON text).
  static func attributes(_ value: Any?) -> [String: String] {
    var attributes: [String: String] = [:]
    for attribute in value as? [[String: Any]] ?? [] {
      guard let key = attribute["key"] as? String, let value = attribute["value"] as? [String: Any] else { continue }
      if let string = value["stringValue"] as? String {
        attributes[key] = string
      } else if let other = value.values.first {
        attributes[key] = "\(other)"
      }
    }
    return attributes
  }
}
