import Foundation
import Gateway
import InventoryService
import MartRuntime
import NotificationService
import OrderService
import PaymentService
import Synchronization
import Testing
import UserService
import Yams

/// deploy/docker-compose.yml against the configuration the mart reads, so that the two cannot
/// drift: every `MART_*` (and `KAFKA_*`) variable compose gives a process is one that process
/// reads, and what compose gives it is enough for it to start (every required variable set, every
/// value well-formed).
@Suite struct DeployConfigurationTests {
  @Test func composeSetsOnlyVariablesTheMartReadsAndEveryOneItNeeds() throws {
    let compose = try Self.compose()
    let services = try #require(compose["services"] as? [String: Any])
    for component in ["user", "product", "inventory", "order", "payment", "notification", "gateway"] {
      let service = try #require(services[component] as? [String: Any], "compose has no \(component)")
      let command = service["command"] as? [String]
      #expect(command == ["serve", component])
      let environment = try #require(service["environment"] as? [String: Any], "\(component) has no environment")
      var values: [String: String] = [:]
      for (name, raw) in environment { values[name] = Self.resolve("\(raw)") }
      // As compose gives it with an empty .env (every optional provider off), then with every
      // provider on (each read only when its provider is configured), and once more with Twilio's
      // other kind of sender.
      var read = try Self.variablesRead(by: component, values: values)
      for variant in Self.providersOn {
        let configured = values.merging(variant.filter { values[$0.key] != nil }) { $1 }
        read.formUnion(try Self.variablesRead(by: component, values: configured))
      }
      let ours = values.keys.filter { $0.hasPrefix("MART_") || $0.hasPrefix("KAFKA_") }
      let unread = ours.filter { !read.contains($0) }.sorted()
      #expect(unread.isEmpty, "compose sets \(unread) for \(component), which it never reads")
    }
  }

  /// The same for the shipped env.example: it names only variables compose passes on.
  @Test func envExampleNamesOnlyVariablesComposeUses() throws {
    let root = Self.repositoryRoot
    let composeText = try String(contentsOf: root.appendingPathComponent("deploy/docker-compose.yml"), encoding: .utf8)
    let example = try String(contentsOf: root.appendingPathComponent("deploy/env.example"), encoding: .utf8)
    let names = example.split(separator: "\n").compactMap { line -> String? in
      guard !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { return nil }
      return String(line[..<equals])
    }
    #expect(!names.isEmpty)
    let unused = names.filter { !composeText.contains("${\($0)") }
    #expect(unused.isEmpty, "env.example sets \(unused), which docker-compose.yml never uses")
  }

  /// What the issue asks of the stack, read from the file so that an edit cannot undo it
  /// unnoticed: third-party images pinned, Kafka in KRaft mode with no ZooKeeper, Kafka UI on
  /// loopback behind a login and read-only, a healthcheck on every process and a start order
  /// that waits for them, nothing else published, and the mart's image running as non-root.
  @Test func theShippedStackIsPinnedHealthCheckedAndLockedDown() throws {
    let services = try #require(try Self.compose()["services"] as? [String: Any])
    #expect(!services.keys.contains { $0.contains("zookeeper") })
    for (name, value) in services {
      let service = try #require(value as? [String: Any])
      let image = try #require(service["image"] as? String, "\(name) has no image")
      if service["build"] == nil {
        let tag = image.split(separator: "@").first.flatMap { $0.split(separator: ":").dropFirst().first }
        #expect(image.contains("@sha256:") || (tag != nil && tag != "latest"), "\(name): \(image) is not pinned")
      }
      let ports = (service["ports"] as? [Any])?.map { "\($0)" } ?? []
      switch name {
      case "gateway": #expect(ports == ["8000:8000"])
      case "kafka-ui": #expect(ports == ["127.0.0.1:8080:8080"], "Kafka UI is for this machine only")
      default: #expect(ports.isEmpty, "\(name) publishes \(ports)")
      }
    }

    let kafka = try #require(services["kafka"] as? [String: Any])
    let kafkaEnvironment = try #require(kafka["environment"] as? [String: Any])
    let roles = Set("\(kafkaEnvironment["KAFKA_PROCESS_ROLES"] ?? "")".split(separator: ",").map(String.init))
    #expect(roles == ["broker", "controller"], "KRaft: the broker is its own controller")
    #expect(kafkaEnvironment["KAFKA_CONTROLLER_QUORUM_VOTERS"] != nil)
    #expect(!kafkaEnvironment.keys.contains { $0.contains("ZOOKEEPER") })

    let kafkaUI = try #require(services["kafka-ui"] as? [String: Any])
    let uiEnvironment = try #require(kafkaUI["environment"] as? [String: Any])
    #expect("\(uiEnvironment["AUTH_TYPE"] ?? "")" == "LOGIN_FORM")
    #expect("\(uiEnvironment["KAFKA_CLUSTERS_0_READONLY"] ?? "")" == "true")
    for credential in ["SPRING_SECURITY_USER_NAME", "SPRING_SECURITY_USER_PASSWORD"] {
      let value = "\(uiEnvironment[credential] ?? "")"
      #expect(value.hasPrefix("${") && value.contains(":?"), "\(credential) must come from .env, required: \(value)")
    }

    let components = ["user", "product", "inventory", "order", "payment", "notification", "gateway"]
    for name in ["postgres", "kafka"] + components {
      let service = try #require(services[name] as? [String: Any])
      let healthcheck = try #require(service["healthcheck"] as? [String: Any], "\(name) has no healthcheck")
      #expect(healthcheck["test"] != nil)
    }
    for name in components {
      let service = try #require(services[name] as? [String: Any])
      let dependencies = try #require(service["depends_on"] as? [String: Any], "\(name) starts in no order")
      // The gateway waits for the six services, which wait for PostgreSQL and Kafka.
      let expected = name == "gateway" ? components.filter { $0 != "gateway" } : ["postgres", "kafka"]
      #expect(Set(dependencies.keys) == Set(expected), "\(name)")
      for (dependency, condition) in dependencies {
        let settings = condition as? [String: Any]
        #expect("\(settings?["condition"] ?? "")" == "service_healthy", "\(name) → \(dependency)")
      }
    }

    let dockerfile = try String(
      contentsOf: Self.repositoryRoot.appendingPathComponent("deploy/Dockerfile"), encoding: .utf8)
    let user = dockerfile.split(separator: "\n").last { $0.hasPrefix("USER ") }
    #expect(user != nil && user != "USER root" && user != "USER 0", "the runtime stage runs as \(user ?? "root")")
  }

  /// deploy/docker-compose.test.yml swaps images and networking and nothing else, so that what
  /// `make deploy-check` proves is the user's stack: the same environment, healthchecks and
  /// start order. Its two documented exceptions: the broker stand-in's command and healthcheck,
  /// and Kafka UI left out (no image of it here).
  @Test func theTestOverrideChangesOnlyImagesAndNetworking() throws {
    let text = try String(
      contentsOf: Self.repositoryRoot.appendingPathComponent("deploy/docker-compose.test.yml"), encoding: .utf8)
    let override = try #require(try Yams.load(yaml: text) as? [String: Any])
    let services = try #require(override["services"] as? [String: Any])
    let shipped = try #require(try Self.compose()["services"] as? [String: Any])
    #expect(Set(services.keys) == Set(shipped.keys), "the override names the stack's services")
    let allowed: Set<String> = ["network_mode", "pull_policy", "extra_hosts", "image", "ports"]
    for (name, value) in services {
      let service = try #require(value as? [String: Any])
      #expect(service["network_mode"] as? String == "host" || name == "kafka-ui", "\(name) without host networking")
      var permitted = allowed
      if name == "kafka" { permitted.formUnion(["command", "healthcheck"]) }
      if name == "kafka-ui" { permitted = ["profiles"] }
      let changed = Set(service.keys).subtracting(permitted)
      #expect(changed.isEmpty, "the override changes \(changed.sorted()) of \(name)")
    }
  }

  // MARK: - Helpers

  static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  static func compose() throws -> [String: Any] {
    let text = try String(
      contentsOf: repositoryRoot.appendingPathComponent("deploy/docker-compose.yml"), encoding: .utf8)
    // Yams resolves the anchors and `<<` merge keys the file shares its service settings with.
    return try #require(try Yams.load(yaml: text) as? [String: Any])
  }

  /// A value as compose would make it from a filled-in deploy/.env: `${NAME:?…}` (required) gets
  /// a well-formed value for NAME, `${NAME:-default}` its default (what an empty .env gives).
  static func resolve(_ raw: String) -> String {
    var result = ""
    var rest = Substring(raw)
    while let start = rest.range(of: "${") {
      result += rest[..<start.lowerBound]
      guard let end = rest[start.upperBound...].firstIndex(of: "}") else { break }
      let expression = rest[start.upperBound..<end]
      if let split = expression.range(of: ":-") {
        result += expression[split.upperBound...]
      } else {
        let name = expression.range(of: ":?").map { String(expression[..<$0.lowerBound]) } ?? String(expression)
        result += sample[name] ?? "sample-\(name.lowercased())"
      }
      rest = rest[rest.index(after: end)...]
    }
    return result + rest
  }

  /// Required values that must be well-formed: a whole key set, as `mart keys services` prints it,
  /// and a key-encryption key.
  static let sample: [String: String] = {
    var values: [String: String] = [:]
    for line in ServiceKeys.newSetText().split(separator: "\n") {
      let parts = line.split(separator: "=", maxSplits: 1)
      if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
    }
    values["MART_USER_KEY_ENCRYPTION_KEYS"] = "k1:" + Data(repeating: 7, count: 32).base64EncodedString()
    return values
  }()

  /// A filled-in deploy/.env's optional providers: Stripe, PayFast, SMTP and Twilio (a sender
  /// number, or a messaging service).
  static let providersOn: [[String: String]] = {
    let payments = [
      "MART_PAYMENT_SANDBOX_ENABLED": "true", "MART_PAYMENT_ALLOWED_RETURN_ORIGINS": "https://shop.example",
      "MART_PAYMENT_STRIPE_SECRET_KEY": "sk_test_sample", "MART_PAYMENT_STRIPE_PUBLISHABLE_KEY": "pk_test_sample",
      "MART_PAYMENT_STRIPE_WEBHOOK_SECRETS": "whsec_sample", "MART_PAYMENT_PAYFAST_MERCHANT_ID": "10000100",
      "MART_PAYMENT_PAYFAST_MERCHANT_KEY": "46f0cd694581a", "MART_PAYMENT_PAYFAST_PASSPHRASE": "a passphrase",
      "MART_PAYMENT_PAYFAST_MODE": "sandbox",
      "MART_PAYMENT_PAYFAST_NOTIFY_URL": "https://shop.example/v1/webhooks/payfast",
    ]
    let notifications = [
      "MART_NOTIFICATION_EMAIL_FROM": "Shop <shop@example.com>", "MART_NOTIFICATION_SHOP_NAME": "Shop",
      "MART_NOTIFICATION_VERIFY_EMAIL_URL": "https://shop.example/verify",
      "MART_NOTIFICATION_RESET_PASSWORD_URL": "https://shop.example/reset", "MART_SMTP_HOST": "smtp.example.com",
      "MART_SMTP_PORT": "2525", "MART_SMTP_SECURITY": "starttls", "MART_SMTP_USERNAME": "user",
      "MART_SMTP_PASSWORD": "password", "MART_TWILIO_ACCOUNT_SID": "AC" + String(repeating: "0", count: 32),
      "MART_TWILIO_AUTH_TOKEN": "token",
    ]
    let common = payments.merging(notifications) { $1 }
    return [
      common.merging(["MART_TWILIO_FROM": "+15005550006"]) { $1 },
      common.merging(["MART_TWILIO_MESSAGING_SERVICE_SID": "MG" + String(repeating: "0", count: 32)]) { $1 },
    ]
  }()

  /// Builds what `mart serve <component>` builds from its environment, and returns the names of
  /// the variables that read. Throws the ConfigurationError `mart serve` would exit 2 with.
  static func variablesRead(by component: String, values: [String: String]) throws -> Set<String> {
    let read = Mutex<Set<String>>([])
    var environment = EnvironmentReader(values)
    environment.onRead = { name in read.withLock { _ = $0.insert(name) } }
    _ = try ProcessConfiguration(environment: environment)
    if let service = MartService(rawValue: component) {
      _ = try ServiceConfiguration(service, environment: environment)
      _ = try ServiceDirectory(environment: environment)
      _ = try AuthConfiguration(environment: environment, for: .service(service))
      switch service {
      case .user: _ = try UserServiceOptions(environment: environment)
      case .product: break
      case .inventory: _ = try InventorySettings(environment: environment)
      case .order: _ = try OrderSettings(environment: environment)
      case .payment: _ = try PaymentSettings(environment: environment)
      case .notification: _ = try NotificationSettings(environment: environment)
      }
    } else {
      _ = try GatewayConfiguration(environment: environment)
    }
    return read.withLock { $0 }
  }
}
