// swift-tools-version:6.1
// Mart: an online-mart backend. One package, six services, one gateway, one `mart` command.
import PackageDescription

let strictSwift: [SwiftSetting] = [
  .swiftLanguageMode(.v6),
  .enableUpcomingFeature("ExistentialAny"),
]

/// What a service needs beyond the shared dependencies.
let extraServiceDependencies: [String: [Target.Dependency]] = [
  // ES256 signing keys (Crypto) and scrypt password hashes (CryptoExtras).
  "UserService": [
    .product(name: "Crypto", package: "swift-crypto"),
    .product(name: "CryptoExtras", package: "swift-crypto"),
  ],
  // SHA-256 of a CreateOrder request, bound to its idempotency key; metrics of the saga.
  "OrderService": [
    .product(name: "Crypto", package: "swift-crypto"),
    .product(name: "Metrics", package: "swift-metrics"),
  ],
  // Providers over HTTP with deadlines (AsyncHTTPClient); webhook HMACs and PayFast's MD5
  // (Crypto); metrics of the provider calls.
  "PaymentService": [
    .product(name: "AsyncHTTPClient", package: "async-http-client"),
    .product(name: "Crypto", package: "swift-crypto"),
    .product(name: "Metrics", package: "swift-metrics"),
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
    .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
    // A provider's webhook continues the trace of the payment it settles.
    .product(name: "Tracing", package: "swift-distributed-tracing"),
  ],
  // Email over SMTP (SMTP), SMS through Twilio's HTTP API (AsyncHTTPClient; HMAC-SHA1 of its
  // callbacks with Crypto), the message templates (Mustache), metrics of the sender.
  "NotificationService": [
    "SMTP",
    .product(name: "AsyncHTTPClient", package: "async-http-client"),
    .product(name: "Crypto", package: "swift-crypto"),
    .product(name: "Metrics", package: "swift-metrics"),
    .product(name: "Mustache", package: "swift-mustache"),
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
  ],
]

/// Every service library has the same shape and the same dependencies.
func serviceTarget(_ name: String) -> Target {
  .target(
    name: name,
    dependencies: [
      "MartRuntime",
      "MartProto",
      .product(name: "GRPCCore", package: "grpc-swift-2"),
      .product(name: "PostgresNIO", package: "postgres-nio"),
      .product(name: "Logging", package: "swift-log"),
    ] + extraServiceDependencies[name, default: []],
    resources: [.embedInCode("Migrations")] + (extraServiceResources[name] ?? []),
    swiftSettings: strictSwift
  )
}

/// Files a service embeds beside its migrations.
let extraServiceResources: [String: [Resource]] = [
  // The message templates, checked and compiled at start-up.
  "NotificationService": [.embedInCode("Templates")]
]

/// What the test targets, the test-support executables and the benchmarks build on.
let testDependencies: [Target.Dependency] = [
  "MartRuntime",
  "MartTestSupport",
  "MartProto",
  .product(name: "GRPCCore", package: "grpc-swift-2"),
  .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
  .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
  .product(name: "PostgresNIO", package: "postgres-nio"),
  .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
  .product(name: "Logging", package: "swift-log"),
]

let services = [
  "UserService", "ProductService", "InventoryService", "OrderService", "PaymentService",
  "NotificationService",
]

let package = Package(
  name: "Mart",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "mart", targets: ["mart"])
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
    // Already in the graph through hummingbird: the HTTP request parts the gateway's slow-client
    // timeouts watch (NIOHTTPTypes).
    .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    // Already in the graph through postgres-nio: ES256 tokens (Crypto) and scrypt (CryptoExtras).
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    // The payment providers' HTTP APIs (Stripe, PayFast's validation call).
    .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    // Tests only: reading deploy/docker-compose.yml, to check it against the configuration the
    // mart reads.
    .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    // The notification templates (subject, text and HTML per kind and locale).
    .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    // Spans (already in the graph through hummingbird), and their export over OTLP/HTTP when an
    // endpoint is configured; OTLP/gRPC is left out (the OTLPGRPC trait), since http/protobuf
    // reaches every collector.
    .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
    .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
  ],
  targets: [
    // Generated by `make proto` from proto/ and committed; never edited by hand.
    .target(
      name: "MartProto",
      dependencies: [
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      swiftSettings: [.swiftLanguageMode(.v6)]
    ),
    // librdkafka's C API (Debian librdkafka-dev; found with pkg-config).
    .systemLibrary(
      name: "CRdKafka",
      pkgConfig: "rdkafka",
      providers: [.apt(["librdkafka-dev"])]
    ),
    // A small Swift API over librdkafka: producer with delivery reports, consumer group as an
    // AsyncSequence, topic administration. Knows nothing of Mart.
    .target(
      name: "Kafka",
      dependencies: [
        "CRdKafka",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSwift
    ),
    // A small SMTP client over SwiftNIO: EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA, MIME messages,
    // deadlines at every step, and replies classified as transient or permanent. Knows nothing of Mart.
    .target(
      name: "SMTP",
      dependencies: [
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSwift
    ),
    // The runtime core, for every process including the gateway: configuration, logging, tokens,
    // gRPC clients and serving, health, statuses and validation. No PostgreSQL, no librdkafka.
    .target(
      name: "MartCore",
      dependencies: [
        "MartProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      swiftSettings: strictSwift
    ),
    // Persistence, over the core: the connection pool, the supervisor that waits out an
    // unreachable database, migrations, and the interceptor that maps database errors to statuses.
    .target(
      name: "MartDatabase",
      dependencies: [
        "MartCore",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "Metrics", package: "swift-metrics"),
      ],
      swiftSettings: strictSwift
    ),
    // Domain events, over persistence: the outbox written in the caller's transaction, the relay,
    // idempotent consumers with their inbox, and the Kafka and in-process transports.
    .target(
      name: "MartEvents",
      dependencies: [
        "MartCore",
        "MartDatabase",
        "MartProto",
        "Kafka",
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      resources: [.embedInCode("event_tables.sql")],
      swiftSettings: strictSwift
    ),
    // What a service runs on: the ServiceHost that puts the core, persistence and events together
    // in one process. A service imports this module alone (it re-exports the three below it).
    .target(
      name: "MartRuntime",
      dependencies: [
        "MartCore",
        "MartDatabase",
        "MartEvents",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
      ],
      swiftSettings: strictSwift
    ),
    .target(
      name: "Gateway",
      dependencies: [
        "MartCore",
        "MartProto",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdCore", package: "hummingbird"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      // Generated/openapi.json: written by protoc-gen-mart-gateway next to the route table, and
      // served at /openapi.json (PackageResources.openapi_json).
      resources: [.embedInCode("Generated/openapi.json")],
      swiftSettings: strictSwift
    ),
    // The protoc plugin behind `make proto`'s route table, access policies and OpenAPI document
    // (scripts/gen-proto.sh builds it in release). Its Generated/ (the google.api and
    // mart.api.v1 options it reads) is generated by `make proto` too.
    .executableTarget(
      name: "protoc-gen-mart-gateway",
      dependencies: [
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "SwiftProtobufPluginLibrary", package: "swift-protobuf"),
      ],
      swiftSettings: strictSwift
    ),
    .executableTarget(
      name: "mart",
      dependencies: [
        "MartRuntime",
        "Gateway",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        // `mart health`, the containers' healthcheck: grpc.health.v1 and the gateway's /readyz.
        "MartProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        // Spans exported over OTLP when configured (ProcessTracing).
        .product(name: "OTel", package: "swift-otel"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ] + services.map { .target(name: $0) },
      swiftSettings: strictSwift
    ),
    // Helpers shared by the test targets: scratch databases, processes, gRPC clients.
    .target(
      name: "MartTestSupport",
      dependencies: [
        "MartRuntime",
        "MartProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Tests/MartTestSupport",
      swiftSettings: strictSwift
    ),
    // Helpers for the test targets alone: they record issues with Swift Testing, which the
    // executables that link MartTestSupport (EventProbe, the benchmarks) must not link.
    .target(
      name: "MartTestKit",
      dependencies: [
        "MartTestSupport",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      path: "Tests/MartTestKit",
      swiftSettings: strictSwift
    ),
    .testTarget(
      name: "MartRuntimeTests",
      dependencies: testDependencies + [
        .product(name: "MetricsTestKit", package: "swift-metrics"), .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      swiftSettings: strictSwift),
    // The event backbone over the real broker: round trip, broker down, crash, poison, rebalance.
    .testTarget(name: "MartEventTests", dependencies: testDependencies, swiftSettings: strictSwift),
    // The `mart` command as a process, every service's schema, and deploy/'s configuration.
    .testTarget(
      name: "MartProcessTests",
      dependencies: testDependencies + services.map { .target(name: $0) } + [
        "Gateway", .product(name: "Yams", package: "Yams"),
        // The OTLP receiver of the tracing test.
        .product(name: "Hummingbird", package: "hummingbird"), .product(name: "NIOCore", package: "swift-nio"),
      ],
      swiftSettings: strictSwift),
    // A consumer process for the test that kills one (SIGKILL) mid-batch.
    .executableTarget(
      name: "EventProbe", dependencies: testDependencies, path: "Tests/EventProbe", swiftSettings: strictSwift),
    // The user service in-process over gRPC: accounts, tokens, refresh rotation, roles, keys.
    .testTarget(
      name: "UserServiceTests", dependencies: testDependencies + ["UserService", "MartTestKit"],
      swiftSettings: strictSwift),
    // The catalogue in-process over gRPC: admin CRUD, access, versions, field masks, search, pagination.
    .testTarget(
      name: "ProductServiceTests",
      dependencies: testDependencies + [
        "ProductService", "MartTestKit", .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      swiftSettings: strictSwift),
    // Stock, movements, reservations under concurrency, the sweeper, ProductCreated end to end, and
    // user tokens checked against the user service in-process.
    .testTarget(
      name: "InventoryServiceTests",
      dependencies: testDependencies + [
        "InventoryService", "ProductService", "UserService", "MartTestKit",
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      swiftSettings: strictSwift),
    // Orders and their payments in-process with the real catalogue and inventory: pricing,
    // idempotency, the saga (reservation, payment, deadline, cancellation), ownership, the schemas'
    // checks; the payment providers against local servers that speak their wire formats.
    .testTarget(
      name: "OrderServiceTests",
      dependencies: testDependencies + [
        "OrderService", "InventoryService", "ProductService", "PaymentService", "MartTestKit",
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
      ],
      swiftSettings: strictSwift),
    // The generated route table, access policies and OpenAPI document.
    .testTarget(
      name: "GatewayTests",
      dependencies: testDependencies + [
        "Gateway",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdTesting", package: "hummingbird"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ],
      swiftSettings: strictSwift
    ),
    // The edge end to end: the gateway in front of the real user, product and inventory services,
    // in JSON over HTTP.
    .testTarget(
      name: "EdgeTests",
      dependencies: testDependencies + [
        "Gateway", "UserService", "ProductService", "InventoryService", "OrderService", "PaymentService",
        "NotificationService", "SMTP", .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: strictSwift),
    // The SMTP client against a real SMTP server on loopback (aiosmtpd with STARTTLS and AUTH).
    .testTarget(
      name: "SMTPTests",
      dependencies: [
        "SMTP", "MartTestSupport", .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ],
      swiftSettings: strictSwift
    ),
    // The notification service in-process: the user projection, every notification kind, templates,
    // preferences, the inbox, deliveries exactly once per event and channel over SMTP and a local
    // Twilio, retries, and ownership.
    .testTarget(
      name: "NotificationServiceTests",
      dependencies: testDependencies + [
        "NotificationService", "UserService", "SMTP", "MartTestKit",
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: strictSwift),
    .testTarget(
      name: "KafkaTests",
      dependencies: ["Kafka", "MartTestSupport", .product(name: "Logging", package: "swift-log")],
      swiftSettings: strictSwift
    ),
    // `make bench`: events per second and latency through outbox → broker → consumer with inbox.
    // `scripts/bench-gateway.sh`: the same read as the gateway benchmark, straight over gRPC.
    .executableTarget(
      name: "GRPCReadBenchmark",
      dependencies: [
        "MartProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
      ],
      path: "Benchmarks/GRPCRead", swiftSettings: strictSwift),
    // `scripts/bench-catalog.sh`: ReserveStock per second over gRPC, one hot product and spread.
    .executableTarget(
      name: "ReservationBenchmark",
      dependencies: [
        "MartProto",
        "MartRuntime",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
      ],
      path: "Benchmarks/Reservations", swiftSettings: strictSwift),
    // `make bench-orders`: orders placed -> PAID per second through the JSON edge (sandbox payments).
    .executableTarget(
      name: "OrderFlowBenchmark",
      dependencies: [
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOFoundationCompat", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ],
      path: "Benchmarks/OrderFlow", swiftSettings: strictSwift),
    // `make bench-notifications`: emails/s to a local SMTP server, and event -> SMTP latency.
    .executableTarget(
      name: "NotificationDeliveryBenchmark",
      dependencies: testDependencies + [
        "NotificationService", "SMTP", .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ],
      path: "Benchmarks/NotificationDelivery", swiftSettings: strictSwift),
    .executableTarget(
      name: "EventBackboneBenchmark", dependencies: testDependencies + ["Kafka"], path: "Benchmarks/EventBackbone",
      swiftSettings: strictSwift),
  ] + services.map(serviceTarget)
)
