import Foundation
import GRPCCore
import GRPCProtobuf
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import ProductService
import Testing

/// The product service while its database is stopped: calls are answered at once, UNAVAILABLE
/// with a RetryInfo, not held until the database is back or the caller's deadline passes; and it
/// serves again once the database is back. On a private cluster, stopped and started by the test.
@Suite(.enabled(if: PrivateCluster.testsEnabled, PrivateCluster.whyApart))
struct DatabaseOutageTests {
  @Test func callsAreRefusedWithRetryInfoWhileTheDatabaseIsDownAndServedAfter() async throws {
    let users = try TestUsers()
    try await PrivateCluster.with { cluster in
      // The production defaults for the periodic check (5 s) and the wait (1 s): the outage is
      // noticed by the calls that wait, not by the next periodic check.
      let configuration = ServiceConfiguration(service: .product, port: 0, database: cluster.configuration)
      try await withHost(
        users.withTestKeys(ProductServiceModule.definition), configuration: configuration, auth: users.auth
      ) { host, grpc in
        let client = Mart_Product_V1_ProductService.Client(wrapping: grpc)
        let admin = try users.bearer(roles: ["customer", "admin"])
        let product = try await client.createProduct(
          .with {
            $0.sku = "OUTAGE-1"
            $0.name = "Outage lamp"
            $0.price = .with {
              $0.currencyCode = "ZAR"
              $0.amountMinor = 1000
            }
          }, metadata: admin)
        let id = product.id
        // A deadline the gateway's would be: an answer must come well before it.
        var options = CallOptions.defaults
        options.timeout = .seconds(10)
        let get: @Sendable () async throws -> Void = { [options] in
          _ = try await client.getProduct(.with { $0.productID = id }, options: options)
        }
        try await get()

        try await cluster.stopServer()
        // The first call waits up to the wait (1 s) and a probe; the rest are refused at once.
        for attempt in 1...5 {
          let started = ContinuousClock.now
          let error = await rpcError(get)
          let elapsed = ContinuousClock.now - started
          print("call \(attempt) during the outage answered \(String(describing: error?.code)) after \(elapsed)")
          #expect(error?.code == .unavailable, "call \(attempt): \(String(describing: error))")
          let status = error.flatMap { try? $0.unpackGoogleRPCStatus() }
          let delays = status?.details.compactMap(\.retryInfo) ?? []
          #expect(delays.count == 1, "call \(attempt) has no RetryInfo: \(String(describing: error))")
        }
        #expect(host.health.status(for: MartService.product.grpcServiceName) == .notServing)

        try await cluster.startServer()
        #expect(await eventually(attempts: 600) { (try? await get()) != nil })
      }
    }
  }
}
