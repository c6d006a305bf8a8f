// `make bench-orders`: the whole order flow through the JSON edge, as customers use it.
//
// Accounts register and sign in first (not measured; `--accounts`, shared by the virtual
// customers: scrypt makes each sign-up cost a third of a second of a core). Then, until the time
// is up, each order: browses (lists, searches and reads products), places an order of 1–3 lines
// with an Idempotency-Key, watches the order's status stream (NDJSON), pays with the sandbox
// provider as soon as the order awaits payment, and stops watching when it is PAID.
// Closed loop (`--mode closed`, the default): `--concurrency` virtual customers, each with one
// order in flight. Open loop (`--mode open`): a new order every 1/`--rate` seconds, whether or not
// the earlier ones have finished, as independent customers arrive.
//
// Reported: orders placed → PAID per second (only orders that reached PAID count), p50/p99/max
// from the POST of the order to the PAID event, each request type's latency, errors by class.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

struct Options {
  enum Mode: String { case closed, open }
  var url = "http://127.0.0.1:8000"
  var productsFile = ""
  var mode = Mode.closed
  var concurrency = 32
  /// Orders per second (open loop).
  var rate = 20.0
  /// Accounts the virtual customers share; 0: one per customer up to 100.
  var accounts = 0
  var browse = true
  var seconds = 15.0

  init(arguments: [String]) throws {
    var iterator = arguments.dropFirst().makeIterator()
    while let argument = iterator.next() {
      guard let value = iterator.next() else { throw UsageError(argument) }
      switch argument {
      case "--url": url = value
      case "--products": productsFile = value
      case "--concurrency": concurrency = Int(value) ?? concurrency
      case "--mode":
        guard let parsed = Mode(rawValue: value) else { throw UsageError(argument) }
        mode = parsed
      case "--rate": rate = Double(value) ?? rate
      case "--accounts": accounts = Int(value) ?? accounts
      case "--browse": browse = value != "false"
      case "--seconds": seconds = Double(value) ?? seconds
      default: throw UsageError(argument)
      }
    }
    if productsFile.isEmpty { throw UsageError("--products is required") }
  }
}

struct UsageError: Error, CustomStringConvertible {
  var description: String
  init(_ what: String) {
    description =
      "usage: OrderFlowBenchmark --products FILE [--url URL] [--mode closed|open] [--concurrency N] [--rate R]"
      + " [--accounts N] [--browse true|false] [--seconds S] (bad: \(what))"
  }
}

/// What went wrong, by class (the status of the request that failed, or what the stream said).
struct Failure: Error, CustomStringConvertible {
  var description: String
}

/// Latencies (seconds) of one kind, and the errors by class.
actor Results {
  var latencies: [String: [Double]] = [:]
  var errors: [String: Int] = [:]

  func record(_ kind: String, _ seconds: Double) { latencies[kind, default: []].append(seconds) }
  /// Events that have no latency, by name.
  var counts: [String: Int] = [:]
  func count(_ event: String) { counts[event, default: 0] += 1 }
  func fail(_ kind: String) { errors[kind, default: 0] += 1 }
}

struct Customer: Sendable {
  let client: HTTPClient
  let base: String
  let token: String
  let products: [String]
  let results: Results

  static func register(client: HTTPClient, base: String, products: [String], results: Results) async throws -> Customer {
    let email = "bench-\(UUID().uuidString.lowercased())@example.com"
    let password = "Bench-order-flow-2026!"
    // Sign-ups and sign-ins share a bounded password-hashing queue (scrypt): a burst of them is
    // answered 503 with Retry-After, and a client waits and tries again, as this one does.
    let (registered, _) = try await retryingWhenBusy {
      try await call(
        client, "POST", base + "/v1/auth/register",
        json: ["email": email, "password": password, "fullName": "Bench Customer"])
    }
    guard registered == 200 else { throw Failure(description: "register \(registered)") }
    // Register signs nobody in (it answers a taken email as a new one): Login does.
    let (status, body) = try await retryingWhenBusy {
      try await call(client, "POST", base + "/v1/auth/login", json: ["email": email, "password": password])
    }
    guard status == 200, let tokens = body["tokens"] as? [String: Any], let token = tokens["accessToken"] as? String
    else { throw Failure(description: "login \(status)") }
    return Customer(client: client, base: base, token: token, products: products, results: results)
  }

  /// What a shopper does before ordering: a page of the catalogue, a search, one product.
  func browse() async throws {
    for (kind, path) in [
      ("list_products", "/v1/products?pageSize=20"), ("search_products", "/v1/products?query=product&pageSize=10"),
      ("get_product", "/v1/products/\(products.randomElement() ?? "")"),
    ] {
      let status = try await timed(kind, status: { $0 }) { try await Self.get(client, base + path, token: token) }
      guard status == 200 else { throw Failure(description: "\(kind) \(status)") }
    }
  }

  /// One order, from its POST to PAID; the seconds that took.
  func orderAndPay() async throws -> Double {
    let start = ContinuousClock.now
    let lines = Array(products.shuffled().prefix(Int.random(in: 1...3))).map { ["productId": $0, "quantity": 1] }
    let order: [String: Any] = [
      "items": lines,
      "shippingAddress": [
        "recipientName": "Bench Customer", "lines": ["1 Long Street"], "city": "Cape Town", "countryCode": "ZA",
      ],
    ]
    let idempotencyKey = "\"\(UUID().uuidString)\""
    let (placedStatus, placed) = try await timed("create_order", status: \.0) {
      try await Self.call(
        client, "POST", base + "/v1/orders", json: order, token: token, headers: ["Idempotency-Key": idempotencyKey])
    }
    guard placedStatus == 200, let orderID = placed["id"] as? String else {
      throw Failure(description: "create_order \(placedStatus)")
    }
    // Watch the order's status stream (in a child task, cancelled once the order is PAID, which
    // closes the request: a stream left open would hold its upstream call); pay when the order
    // awaits payment.
    let (statuses, feed) = AsyncThrowingStream.makeStream(of: String.self)
    return try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask {
        do {
          // A watch ends at the gateway's deadline for the call (10 s by default); a client that
          // still waits opens it again, as one would, within its patience.
          let giveUp = ContinuousClock.now + Self.patience
          while try await watch(orderID, into: feed), ContinuousClock.now < giveUp {
            await results.count("watch_order reopened")
          }
          feed.finish()
        } catch {
          feed.finish(throwing: error)
        }
      }
      defer { group.cancelAll() }
      var paying = false
      for try await status in statuses {
        switch status {
        case "AWAITING_PAYMENT":
          // A reopened watch says AWAITING_PAYMENT again: pay once.
          guard !paying else { break }
          paying = true
          let paymentKey = "\"\(UUID().uuidString)\""
          let (paidStatus, payment) = try await timed("create_payment", status: \.0) {
            try await Self.call(
              client, "POST", base + "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"],
              token: token, headers: ["Idempotency-Key": paymentKey])
          }
          guard paidStatus == 200, (payment["payment"] as? [String: Any])?["status"] as? String == "SUCCEEDED" else {
            throw Failure(description: "create_payment \(paidStatus)")
          }
        case "PAID":
          return (ContinuousClock.now - start).seconds
        case "CANCELLED":
          throw Failure(description: "order cancelled")
        default:
          break
        }
      }
      throw Failure(description: "watch_order ended before PAID")
    }
  }

  /// The order's statuses as its NDJSON stream sends them (empty keep-alive lines skipped).
  /// - Returns: true when the stream ended at its deadline (DEADLINE_EXCEEDED), to be reopened.
  func watch(_ orderID: String, into feed: AsyncThrowingStream<String, any Error>.Continuation) async throws -> Bool {
    var request = HTTPClientRequest(url: base + "/v1/orders/\(orderID):watch")
    request.headers.add(name: "Authorization", value: "Bearer \(token)")
    request.headers.add(name: "Accept", value: "application/x-ndjson")
    let response = try await timed("watch_order", status: { $0.status.code }) {
      try await client.execute(request, timeout: .seconds(60))
    }
    guard response.status == .ok else { throw Failure(description: "watch_order \(response.status.code)") }
    var buffer = ByteBuffer()
    for try await var chunk in response.body {
      buffer.writeBuffer(&chunk)
      while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
        let length = newline - buffer.readerIndex
        guard let line = buffer.readData(length: length) else { break }
        buffer.moveReaderIndex(forwardBy: 1)
        guard !line.isEmpty else { continue }
        let event = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any] ?? [:]
        if let error = event["error"] as? [String: Any] {
          if error["code"] as? Int == 4 { return true }  // DEADLINE_EXCEEDED
          throw Failure(description: "watch_order stream error \(error["code"] ?? "?")")
        }
        if let status = event["status"] as? String { feed.yield(status) }
      }
    }
    return false
  }

  /// Sends a request as a client that honours shedding does: a 503 (the mart refusing what it
  /// cannot serve in time, with Retry-After) is counted as shed and sent again after a jittered
  /// pause of about a second, the same request (an order keeps its Idempotency-Key), for up to
  /// `patience`; then the 503 stands as an error. The latency of every answer is recorded, the
  /// shed ones under their own name, so that the requests that were let in show their own latency.
  ///
  /// Patience, not a number of attempts: with a thousand customers against a shop that serves
  /// twenty orders a second, a customer waits about fifty seconds at the door whatever the
  /// design (Little's law); a limit of attempts would turn that wait into errors at random.
  func timed<T>(_ kind: String, status: (T) -> UInt, _ body: () async throws -> T) async throws -> T {
    let giveUp = ContinuousClock.now + Self.patience
    while true {
      let start = ContinuousClock.now
      let value = try await body()
      let seconds = (ContinuousClock.now - start).seconds
      guard status(value) == 503, ContinuousClock.now < giveUp else {
        await results.record(kind, seconds)
        return value
      }
      await results.record(kind + " shed", seconds)
      try await Task.sleep(for: .milliseconds(Int64.random(in: 500...1500)))
    }
  }

  /// How long a customer keeps sending a shed request again.
  static let patience = Duration.seconds(300)

  static func get(_ client: HTTPClient, _ url: String, token: String) async throws -> UInt {
    var request = HTTPClientRequest(url: url)
    request.headers.add(name: "Authorization", value: "Bearer \(token)")
    let response = try await client.execute(request, timeout: .seconds(30))
    _ = try await response.body.collect(upTo: 1 << 22)
    return response.status.code
  }

  static func call(
    _ client: HTTPClient, _ method: String, _ url: String, json: [String: Any], token: String? = nil,
    headers: [String: String] = [:]
  ) async throws -> (UInt, [String: Any]) {
    var request = HTTPClientRequest(url: url)
    request.method = HTTPMethod(rawValue: method)
    request.headers.add(name: "Content-Type", value: "application/json")
    if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
    for (name, value) in headers { request.headers.add(name: name, value: value) }
    request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: json)))
    let response = try await client.execute(request, timeout: .seconds(30))
    let body = try await response.body.collect(upTo: 1 << 20)
    let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
    return (response.status.code, object)
  }
}

/// Calls `request` again while it answers 503 (the mart shedding load), after a jittered pause.
/// A sign-up or sign-in sent again while the mart answers 503 (its hashing queue is full) or 429
/// (the user service counts sign-ins in flight per client address before it hashes, and every
/// customer here comes from one address), as a client that honours Retry-After does.
func retryingWhenBusy(_ request: () async throws -> (UInt, [String: Any])) async throws -> (UInt, [String: Any]) {
  for _ in 0..<60 {
    let answer = try await request()
    guard answer.0 == 503 || answer.0 == 429 else { return answer }
    try await Task.sleep(for: .milliseconds(Int64.random(in: 500...1500)))
  }
  return try await request()
}

extension Duration {
  var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
  guard !sorted.isEmpty else { return .nan }
  return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
}

func milliseconds(_ seconds: Double) -> String { String(format: "%.0f ms", seconds * 1000) }

/// Runs the benchmark (nonisolated: the customers run side by side).
func run() async throws {
  let options = try Options(arguments: CommandLine.arguments)
  let products = try String(contentsOfFile: options.productsFile, encoding: .utf8)
    .split(whereSeparator: \.isNewline).map(String.init).filter { !$0.isEmpty }
  var configuration = HTTPClient.Configuration()
  let expectedInFlight = options.mode == .closed ? options.concurrency : Int(options.rate * 4) + 16
  configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = expectedInFlight * 3
  let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
  let results = Results()

  let accountCount =
    options.accounts > 0 ? options.accounts : min(options.mode == .closed ? options.concurrency : 50, 100)
  let customers = try await withThrowingTaskGroup(of: Customer.self) { group in
    for _ in 0..<accountCount {
      group.addTask {
        try await Customer.register(client: client, base: options.url, products: products, results: results)
      }
    }
    return try await group.reduce(into: [Customer]()) { $0.append($1) }
  }

  /// One shopper's visit: browse, order, pay; its outcome recorded.
  @Sendable func visit(_ customer: Customer) async {
    do {
      if options.browse { try await customer.browse() }
      await results.record("placed_to_paid", try await customer.orderAndPay())
    } catch let failure as Failure {
      await results.fail(failure.description)
    } catch {
      await results.fail("transport: \(type(of: error))")
    }
  }

  let started = ContinuousClock.now
  let deadline = started + .milliseconds(Int64(options.seconds * 1000))
  switch options.mode {
  case .closed:
    await withTaskGroup(of: Void.self) { group in
      for index in 0..<options.concurrency {
        let customer = customers[index % customers.count]
        group.addTask {
          while ContinuousClock.now < deadline { await visit(customer) }
        }
      }
    }
  case .open:
    // Arrivals on a fixed schedule (not "after the last one finished"): a slow mart does not
    // slow the arrivals down, which is what makes the latency honest under load.
    let interval = Duration.milliseconds(Int64(1000 / options.rate))
    await withTaskGroup(of: Void.self) { group in
      var next = started
      var index = 0
      while next < deadline {
        let customer = customers[index % customers.count]
        index += 1
        group.addTask { await visit(customer) }
        next += interval
        try? await Task.sleep(until: next, clock: .continuous)
      }
    }
  }
  let elapsed = (ContinuousClock.now - started).seconds
  try await client.shutdown()

  let paid = (await results.latencies["placed_to_paid"] ?? []).sorted()
  let load =
    options.mode == .closed
    ? "concurrency \(options.concurrency)" : String(format: "arrivals %.1f orders/s (open loop)", options.rate)
  let rate = String(format: "%.1f", Double(paid.count) / elapsed)
  print(
    "orders placed -> PAID: \(paid.count) in \(String(format: "%.1f", elapsed)) s = \(rate) orders/s at \(load),"
      + " \(customers.count) accounts")
  print("placed -> PAID: p50 \(milliseconds(percentile(paid, 0.5))), p99 \(milliseconds(percentile(paid, 0.99))), max \(milliseconds(paid.last ?? .nan))")
  if let reopened = await results.counts["watch_order reopened"] {
    print("watch_order reopened after its deadline: \(reopened)")
  }
  for kind in ["list_products", "search_products", "get_product", "create_order", "watch_order", "create_payment"] {
    let latencies = (await results.latencies[kind] ?? []).sorted()
    guard !latencies.isEmpty else { continue }
    print("\(kind): \(latencies.count) requests, p50 \(milliseconds(percentile(latencies, 0.5))), p99 \(milliseconds(percentile(latencies, 0.99)))")
    let shed = (await results.latencies[kind + " shed"] ?? []).sorted()
    if !shed.isEmpty {
      print("  \(kind) shed (503, sent again): \(shed.count), answered in p50 \(milliseconds(percentile(shed, 0.5))), p99 \(milliseconds(percentile(shed, 0.99)))")
    }
  }
  let errors = await results.errors
  print(errors.isEmpty ? "errors: none" : "errors: " + errors.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))
}

try await run()
