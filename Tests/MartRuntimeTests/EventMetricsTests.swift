import Foundation
import MartProto
import MartRuntime
import MartTestSupport
import Metrics
import MetricsTestKit
import Testing

/// The backbone's metrics, read back through swift-metrics' test backend.
@Suite struct EventMetricsTests {
  /// swift-metrics is bootstrapped once per process; every suite's metrics land here, so this
  /// test only reads series labelled with its own consumer.
  static let metrics: TestMetrics = {
    let metrics = TestMetrics()
    MetricsSystem.bootstrap(metrics)
    return metrics
  }()

  @Test func publishedConsumedRetriedDeadLetteredAndLagAreCounted() async throws {
    let metrics = Self.metrics
    try await ScratchDatabase.with("metrics") { database in
      try await withPostgresClient(database.configuration) { client in
        try await EventFixtures.migrate(client)
        let transport = InProcessEventTransport()
        try await EventFixtures.append(
          (1...4).map { EventFixtures.orderPlaced(order: "m", number: $0) }, service: .order, to: client)
        let relay = OutboxRelay(service: .order, database: client, transport: transport, logger: TestBed.logger)
        let consumer = EventConsumer(
          definition: EventConsumerDefinition(
            name: "metrics", topics: [.orders], handlers: EventFixtures.recordingHandlers(poison: ["2"])),
          service: .inventory, database: client, transport: transport,
          retry: RetryPolicy(maximumAttempts: 3, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(10)),
          logger: TestBed.logger)
        try await withServices([relay, consumer]) {
          #expect(await eventually { try await EventFixtures.effects(client).count == 3 })
          #expect(
            await eventually {
              try metrics.expectCounter(
                "mart_events_dead_lettered_total",
                [
                  ("consumer", "inventory.metrics"), ("topic", "mart.orders.v1"),
                ]
              ).totalValue == 1
            })
        }
        let group = [("consumer", "inventory.metrics")]
        #expect(
          try metrics.expectCounter("mart_events_consumed_total", group + [("topic", "mart.orders.v1")]).totalValue
            == 3)
        #expect(try metrics.expectCounter("mart_events_retried_total", group).totalValue == 2)
        #expect(try metrics.expectCounter("mart_events_published_total", [("topic", "mart.orders.v1")]).totalValue >= 4)
        // The first record was taken with three more behind it.
        let lag = try metrics.expectGauge(
          "mart_events_consumer_lag", group + [("topic", "mart.orders.v1"), ("partition", "0")])
        #expect(lag.values.first == 3)
        #expect(lag.lastValue == 0)
      }
    }
  }
}
