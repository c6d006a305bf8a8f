// `make bench-orders`: the whole order flow through the JSON edge, as customers use it.
//
// Each virtual customer registers once, then, until the time is up: places an order of 1–3
// lines with an Idempotency-Key, watches the order's status stream (NDJSON), pays with the
// sandbox provider as soon as the order awaits payment, and stops watching when it is PAID.
// Closed loop: `--concurrency` customers, each with one order in flight.
//
// Reported: orders placed → PAID per second (only orders that reached PAID count), p50/p99/max
// from the POST of the order to the PAID event, each request type's latency, errors by class.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

struct Options {
  var url = "http://127.0.0.1:8000"
  var productsFile = ""
  var concurrency = 32
  var seconds = 15.0

  init(arguments: [String]) throws {
    var iterator = arguments.dropFirst().makeIterator()
    while let argument = iterator.next() {
      guard let value = iterator.next() else { throw UsageError(argument) }
      switch argument {
      case "--url": url = value
      case "--products": productsFile = value
      case "--concurrency": concurrency = Int(value) ?? concurrency
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
      "usage: OrderFlowBenchmark --products FILE [--url URL] [--concurrency N] [--seconds S] (bad: \(what))"
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
    let (registered, _) = try await call(
      client, "POST", base + "/v1/auth/register",
      json: ["email": email, "password": password, "fullName": "Bench Customer"])
    guard registered == 200 else { throw Failure(description: "register \(registered)") }
    // Register signs nobody in (it answers a taken email as a new one): Login does.
    let (status, body) = try await call(
      client, "POST", base + "/v1/auth/login", json: ["email": email, "password": password])
    guard status == 200, let tokens = body["tokens"] as? [String: Any], let token = tokens["accessToken"] as? String
    else { throw Failure(description: "login \(status)") }
    return Customer(client: client, base: base, token: token, products: products, results: results)
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
    let (placedStatus, placed) = try await timed("create_order") {
      try await Self.call(
        client, "POST", base + "/v1/orders", json: order, token: token,
        headers: ["Idempotency-Key": "\"\(UUID().uuidString)\""])
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
          try await watch(orderID, into: feed)
          feed.finish()
        } catch {
          feed.finish(throwing: error)
        }
      }
      defer { group.cancelAll() }
      for try await status in statuses {
        switch status {
        case "AWAITING_PAYMENT":
          let (paidStatus, payment) = try await timed("create_payment") {
            try await Self.call(
              client, "POST", base + "/v1/orders/\(orderID)/payments", json: ["sandboxOutcome": "SUCCEED"],
              token: token, headers: ["Idempotency-Key": "\"\(UUID().uuidString)\""])
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
  func watch(_ orderID: String, into feed: AsyncThrowingStream<String, any Error>.Continuation) async throws {
    var request = HTTPClientRequest(url: base + "/v1/orders/\(orderID):watch")
    request.headers.add(name: "Authorization", value: "Bearer \(token)")
    request.headers.add(name: "Accept", value: "application/x-ndjson")
    let response = try await client.execute(request, timeout: .seconds(60))
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
        if event["error"] != nil { throw Failure(description: "watch_order stream error") }
        if let status = event["status"] as? String { feed.yield(status) }
      }
    }
  }

  func timed<T>(_ kind: String, _ body: () async throws -> T) async throws -> T {
    let start = ContinuousClock.now
    let value = try await body()
    await results.record(kind, (ContinuousClock.now - start).seconds)
    return value
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
  configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = options.concurrency * 3
  let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
  let results = Results()

  let customers = try await withThrowingTaskGroup(of: Customer.self) { group in
    for _ in 0..<options.concurrency {
      group.addTask {
        try await Customer.register(client: client, base: options.url, products: products, results: results)
      }
    }
    return try await group.reduce(into: [Customer]()) { $0.append($1) }
  }

  let started = ContinuousClock.now
  let deadline = started + .milliseconds(Int64(options.seconds * 1000))
  await withTaskGroup(of: Void.self) { group in
    for customer in customers {
      group.addTask {
        while ContinuousClock.now < deadline {
          do {
            await results.record("placed_to_paid", try await customer.orderAndPay())
          } catch let failure as Failure {
            await results.fail(failure.description)
          } catch {
            await results.fail("transport: \(type(of: error))")
          }
        }
      }
    }
  }
  let elapsed = (ContinuousClock.now - started).seconds
  try await client.shutdown()

  let paid = (await results.latencies["placed_to_paid"] ?? []).sorted()
  print(
    String(
      format: "orders placed -> PAID: %d in %.1f s = %.1f orders/s at concurrency %d", paid.count, elapsed,
      Double(paid.count) / elapsed, options.concurrency))
  print("placed -> PAID: p50 \(milliseconds(percentile(paid, 0.5))), p99 \(milliseconds(percentile(paid, 0.99))), max \(milliseconds(paid.last ?? .nan))")
  for kind in ["create_order", "create_payment"] {
    let latencies = (await results.latencies[kind] ?? []).sorted()
    print("\(kind): \(latencies.count) requests, p50 \(milliseconds(percentile(latencies, 0.5))), p99 \(milliseconds(percentile(latencies, 0.99)))")
  }
  let errors = await results.errors
  print(errors.isEmpty ? "errors: none" : "errors: " + errors.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))
}

try await run()
