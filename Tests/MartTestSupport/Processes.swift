import Foundation
import MartRuntime

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// The `mart` binary built by `swift build` (or the one named by `MART_BINARY`).
public func martBinary() -> URL {
  if let path = ProcessInfo.processInfo.environment["MART_BINARY"], !path.isEmpty {
    return URL(fileURLWithPath: path)
  }
  return TestBed.repositoryRoot.appendingPathComponent(".build/debug/mart")
}

/// A child process whose output is collected, for tests that run `mart` as users do.
public final class ChildProcess: @unchecked Sendable {
  // @unchecked: `process` is only started once and then read; Foundation's Process is thread-safe for that.
  public let process = Process()
  private let output: URL
  private let errors: URL

  /// Starts `executable`; `input`, when given, is its whole standard input (else /dev/null).
  public init(_ executable: URL, _ arguments: [String], environment: [String: String], input: String? = nil) throws {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mart-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    output = scratch.appendingPathComponent("stdout")
    errors = scratch.appendingPathComponent("stderr")
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
    process.executableURL = executable
    process.arguments = arguments
    process.environment = environment
    process.standardOutput = try FileHandle(forWritingTo: output)
    process.standardError = try FileHandle(forWritingTo: errors)
    if let input {
      let inputFile = scratch.appendingPathComponent("stdin")
      try Data(input.utf8).write(to: inputFile)
      process.standardInput = try FileHandle(forReadingFrom: inputFile)
    } else {
      process.standardInput = FileHandle.nullDevice
    }
    try process.run()
  }

  /// Runs `mart` with these arguments and the test's environment plus `environment`. Every
  /// principal's key of `keys` is set too (`environment` may replace any of them), so that
  /// `mart serve` of any service or the gateway starts.
  public static func mart(
    _ arguments: [String], environment: [String: String] = [:], keys: ServiceKeys = testProcessKeys,
    input: String? = nil
  ) throws -> ChildProcess {
    var merged = ProcessInfo.processInfo.environment
    for principal in Principal.all {
      merged.merge(keys.environment(for: principal)) { _, new in new }
    }
    merged.merge(environment) { _, new in new }
    return try ChildProcess(martBinary(), arguments, environment: merged, input: input)
  }

  /// The keys of the `mart` processes a test starts, unless it passes its own.
  public static let testProcessKeys = ServiceKeys.ephemeral()

  public var standardOutput: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }
  public var standardError: String { (try? String(contentsOf: errors, encoding: .utf8)) ?? "" }

  public func signal(_ signal: Int32) {
    kill(process.processIdentifier, signal)
  }

  /// Waits for the process to exit and returns its exit status.
  public func waitForExit() async -> Int32 {
    while process.isRunning {
      try? await Task.sleep(for: .milliseconds(50))
    }
    return process.terminationStatus
  }

  deinit {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
  }
}

/// A TCP port nobody listens on right now (the kernel's choice), for processes under test.
public func freePort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw POSIXError(.EMFILE) }
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_port = 0
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafeMutablePointer(to: &address) { pointer in
    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
    }
  }
  guard bound else { throw POSIXError(.EADDRINUSE) }
  return Int(UInt16(bigEndian: address.sin_port))
}

/// localstripe (PyPI), Stripe's API on a loopback port of its own, for one test: it keeps
/// everything in memory, so each test counts only its own PaymentIntents.
public struct LocalStripe: Sendable {
  public let url: String
  public let process: ChildProcess

  public struct Unavailable: Error, CustomStringConvertible {
    public var description: String
  }

  /// Starts one and waits until it answers.
  public static func start() async throws -> LocalStripe {
    guard let binary = ProcessInfo.processInfo.environment["MART_LOCALSTRIPE_BIN"], !binary.isEmpty else {
      throw Unavailable(description: "MART_LOCALSTRIPE_BIN is not set: run the tests through `make test`")
    }
    let port = try freePort()
    let process = try ChildProcess(
      URL(fileURLWithPath: binary), ["--port", "\(port)", "--from-scratch"],
      environment: ProcessInfo.processInfo.environment)
    let url = "http://127.0.0.1:\(port)"
    for _ in 0..<200 {
      if !process.process.isRunning {
        throw Unavailable(description: "localstripe exited: \(process.standardError.suffix(2000))")
      }
      if await tcpConnects(port: port) { return LocalStripe(url: url, process: process) }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw Unavailable(description: "localstripe does not listen on \(url)")
  }

  /// What Stripe.js does in the customer's browser: a test card as a payment method, attached to
  /// the PaymentIntent `intent`, which is then confirmed. localstripe answers the confirmation
  /// (returned) and sends its webhook.
  public func confirmWithTestCard(_ intent: String) async throws -> [String: Any] {
    let method = try await call(
      "/v1/payment_methods",
      form: [
        ("type", "card"), ("card[number]", "4242424242424242"), ("card[exp_month]", "12"),
        ("card[exp_year]", "2031"), ("card[cvc]", "123"),
      ])
    guard let methodID = method["id"] as? String else { throw Unavailable(description: "no payment method: \(method)") }
    _ = try await call("/v1/payment_intents/\(intent)", form: [("payment_method", methodID)])
    return try await call("/v1/payment_intents/\(intent)/confirm", form: [])
  }

  /// Calls localstripe's API as a Stripe client would (form-encoded, the test secret key): a
  /// POST with `form`, else a GET. The JSON object it answers (empty if it is not one).
  public func call(_ path: String, form: [(String, String)]? = nil) async throws -> [String: Any] {
    guard let target = URL(string: url + path) else { throw Unavailable(description: "bad path \(path)") }
    var request = URLRequest(url: target)
    request.setValue("Bearer sk_test_mart", forHTTPHeaderField: "Authorization")
    if let form {
      var allowed = CharacterSet.alphanumerics
      allowed.insert(charactersIn: "-._~")
      request.httpMethod = "POST"
      request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
      request.httpBody = Data(
        form.map {
          "\($0.0.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")="
            + ($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
        }.joined(separator: "&").utf8)
    }
    let (data, _) = try await URLSession.shared.data(for: request)
    return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
  }

  static func tcpConnects(port: Int) async -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let result = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    return result == 0
  }
}
