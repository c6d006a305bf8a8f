// The reservation leg of the catalog benchmark (`scripts/bench-catalog.sh`, issue 5): ReserveStock
// over gRPC with a service token (as the order service calls it), many concurrent callers, each
// reservation one unit of one product for an order id of its own. Two runs:
//   hot:    every reservation on the same product (all callers queue on one stock row lock);
//   spread: each reservation on a product picked at random from the next 1,000.
// Stock must be large enough never to run out: a short reservation counts as a failure.
//
// Environment: BENCH_TARGET (host:port of the inventory service), BENCH_PRODUCTS_FILE (product
// ids, one a line: the first is the hot product, the others the spread), MART_ORDER_SERVICE_KEY
// (the order service's key, which `mart dev` was started with), BENCH_CONNECTIONS (concurrent callers, default 32),
// BENCH_SECONDS (per run, default 15).
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MartProto
import MartRuntime

@main
struct ReservationBenchmark {
  static func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("\(message)\n".utf8))
    exit(2)
  }

  static func main() async throws {
    let env = ProcessInfo.processInfo.environment
    let target = env["BENCH_TARGET"] ?? "127.0.0.1:8007"
    let callers = Int(env["BENCH_CONNECTIONS"] ?? "") ?? 32
    let seconds = Int(env["BENCH_SECONDS"] ?? "") ?? 15
    let parts = target.split(separator: ":")
    guard parts.count == 2, let port = Int(parts[1]) else { fail("BENCH_TARGET must be host:port") }
    guard let path = env["BENCH_PRODUCTS_FILE"], let text = try? String(contentsOfFile: path, encoding: .utf8) else {
      fail("BENCH_PRODUCTS_FILE must name a file of product ids")
    }
    let products = text.split(whereSeparator: \.isNewline).map { String($0).trimmingCharacters(in: .whitespaces) }
      .filter { !$0.isEmpty }
    guard products.count >= 2 else { fail("BENCH_PRODUCTS_FILE needs a hot product and at least one more") }
    let auth = try AuthConfiguration(environment: EnvironmentReader(), for: nil).with(
      keys: try ServiceKeys.development(environment: EnvironmentReader()))
    guard EnvironmentReader().string(Principal.service(.order).keyVariable) != nil,
      let issuer = ServiceTokenIssuer(.service(.order), configuration: auth)
    else {
      fail("MART_ORDER_SERVICE_KEY is required")
    }
    // A service token lives 5 minutes: one is enough for both runs.
    var metadata = Metadata()
    metadata.addString("Bearer \(try await issuer.token(for: .inventory))", forKey: "authorization")
    let requestMetadata = metadata

    let client = GRPCClient(
      transport: try .http2NIOPosix(
        target: .dns(host: String(parts[0]), port: port), transportSecurity: .plaintext))
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await client.runConnections() }
      let inventory = Mart_Inventory_V1_InventoryService.Client(wrapping: client)
      let hot = products[0]
      let spread = Array(products.dropFirst())
      // Warm the connection and check the token and the stock before timing anything.
      let check = try await inventory.batchGetStock(.with { $0.productIds = [hot] }, metadata: requestMetadata)
      guard let stock = check.stocks.first, stock.available > 0 else {
        fail("the hot product \(hot) has no stock")
      }
      let runs: [(name: String, pick: @Sendable () -> String)] = [
        ("(a1) ReserveStock, one hot product", { hot }),
        ("(a2) ReserveStock, spread over \(spread.count) products", { spread[Int.random(in: 0..<spread.count)] }),
      ]
      for run in runs {
        let result = try await measure(
          inventory: inventory, metadata: requestMetadata, callers: callers, seconds: seconds, pick: run.pick)
        print(result.summary(run.name, callers: callers, seconds: seconds))
      }
      client.beginGracefulShutdown()
      try await group.waitForAll()
    }
  }

  struct Result {
    var latencies: [Double] = []
    var short = 0
    var errors: [String: Int] = [:]

    mutating func merge(_ other: Result) {
      latencies += other.latencies
      short += other.short
      errors.merge(other.errors, uniquingKeysWith: +)
    }

    func summary(_ name: String, callers: Int, seconds: Int) -> String {
      let sorted = latencies.sorted()
      func percentile(_ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
      }
      var line = String(
        format: "%@: %.0f reservations/s, p50 %.2f ms, p99 %.2f ms (%d callers, %d s, %d reserved)", name,
        Double(sorted.count) / Double(seconds), percentile(0.50), percentile(0.99), callers, seconds, sorted.count)
      if short > 0 { line += ", SHORT \(short)" }
      for (code, count) in errors.sorted(by: { $0.key < $1.key }) { line += ", ERROR \(code) ×\(count)" }
      return line
    }
  }

  /// `callers` tasks reserve one unit each, back to back, for `seconds`; latencies of the
  /// reservations that succeeded.
  static func measure(
    inventory: Mart_Inventory_V1_InventoryService.Client<HTTP2ClientTransport.Posix>, metadata: Metadata,
    callers: Int, seconds: Int, pick: @escaping @Sendable () -> String
  ) async throws -> Result {
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(seconds)
    return await withTaskGroup(of: Result.self) { group in
      for _ in 0..<callers {
        group.addTask {
          var result = Result()
          while clock.now < deadline {
            let request = Mart_Inventory_V1_ReserveStockRequest.with {
              $0.orderID = UUID().uuidString.lowercased()
              $0.lines = [
                .with {
                  $0.productID = pick()
                  $0.quantity = 1
                }
              ]
            }
            let start = clock.now
            do {
              let response = try await inventory.reserveStock(request, metadata: metadata)
              let elapsed = clock.now - start
              if case .reservation = response.outcome {
                result.latencies.append(
                  Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
              } else {
                result.short += 1
              }
            } catch let error as RPCError {
              result.errors["\(error.code)", default: 0] += 1
            } catch {
              result.errors["\(type(of: error))", default: 0] += 1
            }
          }
          return result
        }
      }
      var total = Result()
      for await part in group { total.merge(part) }
      return total
    }
  }
}
