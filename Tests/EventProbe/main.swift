import Foundation
import Logging
import MartRuntime
import MartTestSupport
import ServiceLifecycle

// A consumer process: applies OrderPlaced events to the `effects` table of the database named by
// MART_PROBE_DATABASE_URL, over KAFKA_BROKERS, slowly (MART_PROBE_DELAY_MS per event), so that a
// test can SIGKILL it in the middle of a batch and start it again.
let environment = EnvironmentReader()
let process = try ProcessConfiguration(environment: environment)
var logger = Logger(label: "event-probe")
logger.logLevel = process.logLevel
let database = try DatabaseConfiguration(
  variable: "MART_PROBE_DATABASE_URL", url: environment.string("MART_PROBE_DATABASE_URL", default: ""))
let delay = Duration.milliseconds(try environment.positiveInteger("MART_PROBE_DELAY_MS", default: 1))
let client = try database.makeClient(logger: logger)
let events = try EventTransports.make(process, clientID: "event-probe", logger: logger)
let consumer = EventConsumer(
  definition: EventConsumerDefinition(
    name: "probe", topics: [.orders], handlers: EventFixtures.recordingHandlers(delay: delay)),
  service: .inventory, database: client, transport: events.transport, retry: process.retryPolicy, logger: logger)
let group = ServiceGroup(
  configuration: ServiceGroupConfiguration(
    services: (events.services + [client, consumer]).map { .init(service: $0) },
    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
try await group.run()
