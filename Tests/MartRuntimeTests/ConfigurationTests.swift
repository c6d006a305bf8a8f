import MartRuntime
import Testing

@Suite struct ConfigurationTests {
  @Test func defaultsFollowTheDocumentedPorts() throws {
    let env = EnvironmentReader([:])
    let ports = try MartService.allCases.map { try ServiceConfiguration($0, environment: env).port }
    #expect(ports == [8006, 8005, 8007, 8008, 8002, 8009])
    let order = try ServiceConfiguration(.order, environment: env)
    #expect(order.database.database == "mart_order")
    #expect(order.database.password == nil)
    #expect(try ServiceDirectory(environment: env)[.payment] == Endpoint(host: "127.0.0.1", port: 8002))
  }

  @Test func aMalformedPortNamesTheVariable() {
    #expect(
      throws: ConfigurationError(variable: "MART_ORDER_PORT", value: "abc", reason: "expected a port number 0-65535")
    ) {
      try ServiceConfiguration(.order, environment: EnvironmentReader(["MART_ORDER_PORT": "abc"]))
    }
    #expect(throws: ConfigurationError.self) {
      try ServiceConfiguration(.user, environment: EnvironmentReader(["MART_USER_PORT": "70000"]))
    }
  }

  @Test(arguments: [
    "not a url at all", "mysql://mart@localhost/db", "postgres://localhost/db", "postgres://mart@localhost",
    "postgres://mart@localhost/db?sslmode=sometimes", "postgres://mart@localhost/db?colour=blue",
  ])
  func aMalformedDatabaseURLNamesTheVariable(url: String) {
    let error = #expect(throws: ConfigurationError.self) {
      try ServiceConfiguration(.product, environment: EnvironmentReader(["MART_PRODUCT_DATABASE_URL": url]))
    }
    #expect(error?.variable == "MART_PRODUCT_DATABASE_URL")
  }

  @Test func databaseURLsParseWithoutLeakingPasswords() throws {
    let config = try DatabaseConfiguration(
      variable: "X", url: "postgresql://shop:s%40cret@db.internal:6543/mart_user?sslmode=require&max_connections=7")
    #expect(config.host == "db.internal")
    #expect(config.port == 6543)
    #expect(config.username == "shop")
    #expect(config.password == "s@cret")
    #expect(config.database == "mart_user")
    #expect(config.tls == .require)
    #expect(config.maximumConnections == 7)
    #expect(!config.description.contains("cret"))

    let error = #expect(throws: ConfigurationError.self) {
      try DatabaseConfiguration(variable: "X", url: "postgres://shop:hunter2@db/x?sslmode=bogus")
    }
    #expect(error?.value.contains("hunter2") == false)
  }

  @Test func durationsBooleansEndpointsAndLevels() throws {
    let env = EnvironmentReader([
      "A": "250ms", "B": "5s", "C": "2m", "D": "soon", "E": "yes", "F": "maybe", "G": "[::1]:9000", "H": "host",
      "I": "DEBUG", "J": "loud",
    ])
    #expect(try env.duration("A", default: .zero) == .milliseconds(250))
    #expect(try env.duration("B", default: .zero) == .seconds(5))
    #expect(try env.duration("C", default: .zero) == .seconds(120))
    #expect(throws: ConfigurationError.self) { try env.duration("D", default: .zero) }
    #expect(try env.bool("E", default: false))
    #expect(throws: ConfigurationError.self) { try env.bool("F", default: false) }
    #expect(try env.endpoint("G", default: Endpoint(host: "x", port: 1)) == Endpoint(host: "::1", port: 9000))
    #expect(throws: ConfigurationError.self) { try env.endpoint("H", default: Endpoint(host: "x", port: 1)) }
    #expect(try env.logLevel("I", default: .info) == .debug)
    #expect(throws: ConfigurationError.self) { try env.logLevel("J", default: .info) }
    #expect(throws: ConfigurationError.self) {
      try ProcessConfiguration(environment: EnvironmentReader(["MART_LOG_FORMAT": "xml"]))
    }
  }
}
