import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MartProto
import MartRuntime
import MartTestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Stopping `mart` while its database goes away: real processes on a private PostgreSQL cluster
/// (the test bed's cluster is never stopped).
@Suite(.enabled(if: PrivateCluster.testsEnabled, PrivateCluster.whyApart))
struct ShutdownUnderFaultTests {
  /// The drain limit `runUntilSignalled` sets.
  static let drainLimit: Duration = .seconds(30)

  /// `mart serve product` on `cluster`, SERVING, with `environment` added.
  static func withServingProduct(
    _ cluster: PrivateCluster, environment: [String: String] = [:], _ body: (ChildProcess, Int) async throws -> Void
  ) async throws {
    let port = try freePort()
    let mart = try ChildProcess.mart(
      ["serve", "product"],
      environment: [
        "MART_PRODUCT_DATABASE_URL": cluster.url, "MART_PRODUCT_PORT": "\(port)", "KAFKA_BROKERS": "",
        "MART_DATABASE_CHECK_INTERVAL": "500ms",
      ].merging(environment) { _, new in new })
    let serving = await eventually(attempts: 600) {
      await healthStatus(port: port, service: MartService.product.grpcServiceName) == .serving
    }
    try #require(serving, "never SERVING: \(mart.standardError.suffix(2000))")
    try await body(mart, port)
    if mart.process.isRunning { mart.signal(SIGKILL) }
  }

  /// Light load: calls that need the database, one after another, until cancelled.
  static func load(port: Int, timeout: Duration = .seconds(5)) async {
    try? await withGRPCClient(
      transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
    ) { grpc in
      let client = Mart_Product_V1_ProductService.Client(wrapping: grpc)
      while !Task.isCancelled {
        var options = CallOptions.defaults
        options.timeout = timeout
        _ = try? await client.listProducts(.with { $0.pageSize = 5 }, options: options)
        try? await Task.sleep(for: .milliseconds(20))
      }
    }
  }

  /// Waits for `mart` to exit, killing it after `limit`; how long it took, nil if it was killed.
  static func exitTime(of mart: ChildProcess, since start: ContinuousClock.Instant, limit: Duration) async -> Duration?
  {
    while mart.process.isRunning {
      if ContinuousClock.now - start > limit {
        mart.signal(SIGKILL)
        _ = await mart.waitForExit()
        return nil
      }
      try? await Task.sleep(for: .milliseconds(50))
    }
    return ContinuousClock.now - start
  }

  static func describe(_ elapsed: Duration?) -> String {
    elapsed.map { "\($0)" } ?? "never (killed after 90 s)"
  }

  /// PostgreSQL is stopped as the signal arrives, under light load.
  @Test func sigtermWhileTheDatabaseStopsExitsWithinTheDrainLimit() async throws {
    try await PrivateCluster.with { cluster in
      try await Self.withServingProduct(cluster) { mart, port in
        let load = Task { await Self.load(port: port) }
        defer { load.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        let stopping = Task { try await cluster.stopServer(mode: "fast") }
        let start = ContinuousClock.now
        mart.signal(SIGTERM)
        try await stopping.value
        let elapsed = await Self.exitTime(of: mart, since: start, limit: .seconds(90))
        print("mart serve product exited \(Self.describe(elapsed)) after SIGTERM (database stopping)")
        let within = elapsed.map { $0 < Self.drainLimit } ?? false
        #expect(within, "took \(Self.describe(elapsed)); stderr: \(mart.standardError.suffix(3000))")
        #expect(mart.process.terminationStatus == 0, "\(mart.standardError.suffix(3000))")
      }
    }
  }

  /// The database hangs (frozen: connections are accepted by the kernel, nothing answers) with
  /// calls in flight: they cannot finish, and used to hold the drain for its whole 30 s limit.
  @Test func sigtermWhileTheDatabaseHangsExitsWellWithinTheDrainLimit() async throws {
    try await PrivateCluster.with { cluster in
      try await Self.withServingProduct(cluster) { mart, port in
        try await cluster.freeze()
        // Calls that will be in flight, stuck on the frozen database, when the signal comes.
        let load = Task { await Self.load(port: port, timeout: .seconds(60)) }
        defer { load.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        let start = ContinuousClock.now
        mart.signal(SIGTERM)
        let elapsed = await Self.exitTime(of: mart, since: start, limit: .seconds(90))
        try await cluster.thaw()
        print("mart serve product exited \(Self.describe(elapsed)) after SIGTERM (hung database)")
        // Generously: about the database wait (1 s) plus the drain; before, the whole 30 s.
        let within = elapsed.map { $0 < Self.drainLimit / 2 } ?? false
        #expect(within, "took \(Self.describe(elapsed)); stderr: \(mart.standardError.suffix(3000))")
        #expect(mart.process.terminationStatus == 0, "\(mart.standardError.suffix(3000))")
      }
    }
  }

  /// A drain held up (a long MART_DATABASE_WAIT keeps the service from giving up on the hung
  /// database) ends at a second SIGTERM.
  @Test func aSecondSigtermStopsAtOnce() async throws {
    try await PrivateCluster.with { cluster in
      try await Self.withServingProduct(cluster, environment: ["MART_DATABASE_WAIT": "60s"]) { mart, port in
        try await cluster.freeze()
        let load = Task { await Self.load(port: port, timeout: .seconds(60)) }
        defer { load.cancel() }
        // Long enough, on a loaded machine, for calls to be stuck on the frozen database: they
        // are what holds the drain up.
        try await Task.sleep(for: .milliseconds(1500))
        mart.signal(SIGTERM)
        try await Task.sleep(for: .seconds(1))
        try #require(mart.process.isRunning, "the drain was not held up: \(mart.standardError.suffix(3000))")
        let start = ContinuousClock.now
        mart.signal(SIGTERM)
        let elapsed = await Self.exitTime(of: mart, since: start, limit: .seconds(90))
        try await cluster.thaw()
        print("mart serve product exited \(Self.describe(elapsed)) after a second SIGTERM")
        // At once: a small fraction of the drain limit, however loaded the machine.
        let atOnce = elapsed.map { $0 < Self.drainLimit / 3 } ?? false
        #expect(atOnce, "took \(Self.describe(elapsed)); stderr: \(mart.standardError.suffix(3000))")
        #expect(mart.process.terminationStatus != 0)
        #expect(mart.standardError.contains("received again"))
      }
    }
  }
}
