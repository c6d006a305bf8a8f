import Foundation
import MartRuntime
import MartTestSupport
import Testing

// Note: no closure literal inside `#expect(...)` in these tests (see CatalogEdgeTests).

/// Orders as a client meets them: the gateway in front of the real user, product, inventory and
/// order services, in JSON over HTTP.
@Suite struct OrderEdgeTests {
  @Test func anOrderIsPlacedWithAnIdempotencyKeyAndOnlyItsOwnerSeesIt() async throws {
    try await withEdge(orders: true) { edge in
      let admin = try await edge.admin()
      let created = try await edge.call(
        "POST", "/v1/products",
        json: ["sku": "TEAPOT-1", "name": "Teapot", "price": ["currencyCode": "ZAR", "amountMinor": 19_900]],
        token: admin)
      #expect(created.status == 200, "\(created.text)")
      let productID = try #require(try created.json()["id"] as? String)
      // The stock row comes with the catalogue's ProductCreated event.
      let stocked = await eventually {
        let adjusted = try await edge.call(
          "POST", "/v1/products/\(productID)/stock:adjust", json: ["quantityDelta": 5, "reason": "RESTOCK"],
          token: admin)
        return adjusted.status == 200
      }
      #expect(stocked)

      let (customer, _) = try await edge.register()
      let order: [String: Any] = [
        "items": [["productId": productID, "quantity": 2]],
        "shippingAddress": [
          "recipientName": "Thandi Nkosi", "lines": ["12 Long Street"], "city": "Cape Town", "countryCode": "ZA",
        ],
        // A client cannot set a price: the field does not exist, and is refused by name.
      ]
      let key = "\"\(UUID().uuidString)\""
      let placed = try await edge.call(
        "POST", "/v1/orders", json: order, token: customer, headers: ["Idempotency-Key": key])
      #expect(placed.status == 200, "\(placed.text)")
      let orderID = try #require(try placed.json()["id"] as? String)
      #expect(try placed.object("total")["amountMinor"] as? String == "39800")

      let replayed = try await edge.call(
        "POST", "/v1/orders", json: order, token: customer, headers: ["Idempotency-Key": key])
      #expect(replayed.status == 200, "\(replayed.text)")
      #expect(try replayed.json()["id"] as? String == orderID)

      var other = order
      other["items"] = [["productId": productID, "quantity": 1]]
      let reused = try await edge.call(
        "POST", "/v1/orders", json: other, token: customer, headers: ["Idempotency-Key": key])
      #expect(reused.status == 422, "\(reused.text)")
      try reused.expectStatusBody(code: 6)

      var priced = order
      priced["total"] = ["currencyCode": "ZAR", "amountMinor": 1]
      let withPrice = try await edge.call("POST", "/v1/orders", json: priced, token: customer)
      #expect(withPrice.status == 400, "\(withPrice.text)")

      let mine = try await edge.call("GET", "/v1/orders/\(orderID)", token: customer)
      #expect(mine.status == 200, "\(mine.text)")
      let (stranger, _) = try await edge.register()
      let theirs = try await edge.call("GET", "/v1/orders/\(orderID)", token: stranger)
      #expect(theirs.status == 404, "\(theirs.text)")
      try theirs.expectStatusBody(code: 5)
      let anonymous = try await edge.call("GET", "/v1/orders/\(orderID)")
      #expect(anonymous.status == 401)

      let awaiting = await eventually {
        let read = try await edge.call("GET", "/v1/orders/\(orderID)", token: customer)
        return try read.json()["status"] as? String == "AWAITING_PAYMENT"
      }
      #expect(awaiting)
      let cancelled = try await edge.call(
        "POST", "/v1/orders/\(orderID):cancel", json: ["note": "wrong colour"], token: customer)
      #expect(cancelled.status == 200, "\(cancelled.text)")
      #expect(try cancelled.json()["status"] as? String == "CANCELLED")
      let timeline = try await edge.call("GET", "/v1/orders/\(orderID)/timeline", token: customer)
      #expect(timeline.status == 200, "\(timeline.text)")
      let kinds = (try timeline.json()["entries"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String }
      #expect(kinds.prefix(3) == ["PLACED", "STOCK_RESERVED", "CANCELLED"])
    }
  }

  /// The live status stream as Server-Sent Events: each change as it happens with its id, a
  /// comment while idle, the end after a final status; a reconnect with Last-Event-ID resumes;
  /// NDJSON for a client that does not ask for events; someone else's order is 404.
  @Test func theOrderStatusStreamIsServerSentEventsAndResumes() async throws {
    try await withEdge(orders: true) { edge in
      let admin = try await edge.admin()
      let created = try await edge.call(
        "POST", "/v1/products",
        json: ["sku": "SSE-1", "name": "Streamed", "price": ["currencyCode": "ZAR", "amountMinor": 500]], token: admin)
      let productID = try #require(try created.json()["id"] as? String)
      let stocked = await eventually {
        try await edge.call(
          "POST", "/v1/products/\(productID)/stock:adjust", json: ["quantityDelta": 5, "reason": "RESTOCK"],
          token: admin
        ).status == 200
      }
      #expect(stocked)
      let (customer, _) = try await edge.register()
      let placed = try await edge.call(
        "POST", "/v1/orders",
        json: [
          "items": [["productId": productID, "quantity": 1]],
          "shippingAddress": ["recipientName": "R", "lines": ["1 Main Road"], "city": "Durban", "countryCode": "ZA"],
        ], token: customer)
      let orderID = try #require(try placed.json()["id"] as? String)
      let awaiting = await eventually {
        try await edge.call("GET", "/v1/orders/\(orderID)", token: customer).json()["status"] as? String
          == "AWAITING_PAYMENT"
      }
      #expect(awaiting)

      // Open while the order waits for payment; it is cancelled meanwhile, which ends the stream.
      let watching = Task {
        try await edge.call(
          "GET", "/v1/orders/\(orderID):watch", token: customer, headers: ["Accept": "text/event-stream"])
      }
      // Long enough for the stream to open and idle through a few heartbeats (50 ms here).
      try await Task.sleep(for: .milliseconds(700))
      let cancelled = try await edge.call("POST", "/v1/orders/\(orderID):cancel", json: [:], token: customer)
      #expect(cancelled.status == 200, "\(cancelled.text)")
      let stream = try await watching.value
      #expect(stream.status == 200)
      #expect(stream.headers["content-type"] == "text/event-stream")
      let events = Self.events(stream.text)
      #expect(events.map(\.status) == ["PENDING", "AWAITING_PAYMENT", "CANCELLED"])
      #expect(stream.text.contains(": keep-alive"))
      let second = try #require(events.dropFirst().first?.id)

      let resumed = try await edge.call(
        "GET", "/v1/orders/\(orderID):watch", token: customer,
        headers: ["Accept": "text/event-stream", "Last-Event-ID": second])
      #expect(Self.events(resumed.text).map(\.status) == ["CANCELLED"])

      let lines = try await edge.call("GET", "/v1/orders/\(orderID):watch", token: customer)
      #expect(lines.headers["content-type"] == "application/x-ndjson")
      let statuses = lines.text.split(separator: "\n").compactMap { line in
        (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["status"] as? String
      }
      #expect(statuses == ["PENDING", "AWAITING_PAYMENT", "CANCELLED"])

      let (stranger, _) = try await edge.register()
      let theirs = try await edge.call(
        "GET", "/v1/orders/\(orderID):watch", token: stranger, headers: ["Accept": "text/event-stream"])
      #expect(theirs.status == 404, "\(theirs.text)")
      try theirs.expectStatusBody(code: 5)
    }
  }

  /// The `id:` and the status of each SSE event (comments skipped).
  static func events(_ text: String) -> [(id: String, status: String)] {
    text.components(separatedBy: "\n\n").compactMap { block in
      var id = ""
      var status: String?
      for line in block.split(separator: "\n") {
        if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
        if line.hasPrefix("data: "),
          let object = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
        {
          status = object["status"] as? String
        }
      }
      return status.map { (id, $0) }
    }
  }
}
