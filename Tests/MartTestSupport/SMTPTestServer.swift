import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A real SMTP server on loopback for one test: aiosmtpd (PyPI) running scripts/smtp-test-server.py,
/// with STARTTLS on a fresh self-signed certificate and AUTH PLAIN/LOGIN with a random password.
/// What it accepts lands in `maildir`; the recipient's local part picks failures (see the script):
/// `tempfail-N+x@…`, `reject+x@…`, `hang+x@…`, `hangrcpt+x@…`.
public struct SMTPTestServer: Sendable {
  public let port: Int
  public let maildir: URL
  /// The PEM certificate the server presents when TLS is on; tests trust it.
  public let certificatePath: String?
  /// The only credentials the server accepts, when it requires AUTH.
  public let credentials: (user: String, password: String)?
  public let process: ChildProcess
  private let scratch: URL

  public struct Unavailable: Error, CustomStringConvertible {
    public var description: String
  }

  /// Starts one and waits until it listens. `requireTLS` (with `tls`): nothing but EHLO, STARTTLS
  /// and QUIT before TLS.
  public static func start(
    tls: Bool = true, requireTLS: Bool = true,
    auth: (user: String, password: String)? = ("mart", randomPassword())
  ) async throws -> SMTPTestServer {
    let environment = ProcessInfo.processInfo.environment
    guard let python = environment["MART_AIOSMTPD_PYTHON"], !python.isEmpty else {
      throw Unavailable(
        description: "MART_AIOSMTPD_PYTHON is not set: run the tests through `make test` (scripts/testbed.sh sets it)")
    }
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mart-smtp-\(UUID().uuidString)")
    let maildir = scratch.appendingPathComponent("maildir")
    try FileManager.default.createDirectory(at: maildir, withIntermediateDirectories: true)
    let script = TestBed.repositoryRoot.appendingPathComponent("scripts/smtp-test-server.py").path
    var arguments = [script, "--port", "0", "--maildir", maildir.path]
    var certificatePath: String?
    if tls {
      let pair = try await makeSelfSignedCertificate(in: scratch)
      certificatePath = pair.certificatePath
      arguments += ["--tls-cert", pair.certificatePath, "--tls-key", pair.keyPath]
      if requireTLS { arguments.append("--require-starttls") }
    }
    if let auth { arguments += ["--auth", "\(auth.user):\(auth.password)"] }
    let process = try ChildProcess(URL(fileURLWithPath: python), arguments, environment: environment)
    for _ in 0..<800 {
      let output = process.standardOutput
      if output.hasPrefix("READY "), let line = output.split(separator: "\n").first, let port = Int(line.dropFirst(6)) {
        return SMTPTestServer(
          port: port, maildir: maildir, certificatePath: certificatePath, credentials: auth, process: process,
          scratch: scratch)
      }
      guard process.process.isRunning else {
        try? FileManager.default.removeItem(at: scratch)
        throw Unavailable(description: "smtp-test-server.py exited: \(process.standardError.suffix(2000))")
      }
      try await Task.sleep(for: .milliseconds(25))
    }
    process.signal(SIGTERM)
    try? FileManager.default.removeItem(at: scratch)
    throw Unavailable(description: "smtp-test-server.py did not report its port: \(process.standardError.suffix(2000))")
  }

  /// Stops the server and removes its files.
  public func stop() {
    process.signal(SIGTERM)
    try? FileManager.default.removeItem(at: scratch)
  }

  /// The messages received so far, in arrival order.
  public func receivedMessages() throws -> [ReceivedEmail] {
    let numbers = try FileManager.default.contentsOfDirectory(atPath: maildir.path)
      .filter { $0.hasSuffix(".eml") && !$0.hasPrefix(".") }
      .compactMap { Int($0.dropLast(4)) }
      .sorted()
    return try numbers.map { number in
      let raw = try String(contentsOf: maildir.appendingPathComponent("\(number).eml"), encoding: .utf8)
      let envelope = try JSONDecoder().decode(
        Envelope.self, from: Data(contentsOf: maildir.appendingPathComponent("\(number).json")))
      return ReceivedEmail(
        raw: raw, mailFrom: envelope.mail_from, recipients: envelope.rcpt_tos, authUser: envelope.auth_user,
        tls: envelope.tls, peer: envelope.peer)
    }
  }

  /// Waits until at least `count` messages have arrived (a bounded number of polls, about 10 s).
  public func waitForMessages(_ count: Int) async throws -> [ReceivedEmail] {
    for _ in 0..<200 {
      let messages = try receivedMessages()
      if messages.count >= count { return messages }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw Unavailable(description: "fewer than \(count) messages arrived: \(try receivedMessages().count)")
  }

  /// Every AUTH attempt so far, as "MECHANISM user ok|refused" (never the password).
  public func authAttempts() throws -> [String] {
    let log = maildir.appendingPathComponent("auth.log")
    guard FileManager.default.fileExists(atPath: log.path) else { return [] }
    return try String(contentsOf: log, encoding: .utf8).split(separator: "\n").map(String.init)
  }

  /// 24 random bytes, hex: a password that exists for one test run only.
  public static func randomPassword() -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
  }

  private struct Envelope: Decodable {
    // The names the script writes.
    var mail_from: String
    var rcpt_tos: [String]
    var auth_user: String?
    var tls: Bool
    var peer: String
  }
}

/// One message as the server received it: the DATA (dot-stuffing undone) and its envelope.
public struct ReceivedEmail: Sendable {
  public var raw: String
  public var mailFrom: String
  public var recipients: [String]
  public var authUser: String?
  public var tls: Bool
  /// The client's address and port: messages from one session share it.
  public var peer: String

  /// The first header field of that name (case-insensitive), unfolded, without the leading space.
  public func header(_ name: String) -> String? {
    mimeHeader(name, in: raw)
  }
}

/// The first header field called `name` (case-insensitive) in a message or a MIME part (the lines
/// before the first empty one), unfolded, without the leading space.
public func mimeHeader(_ name: String, in message: String) -> String? {
  let head = message.components(separatedBy: "\r\n\r\n").first ?? message
  var fields: [String] = []
  for line in head.components(separatedBy: "\r\n") {
    if line.hasPrefix(" ") || line.hasPrefix("\t"), let last = fields.popLast() {
      fields.append(last + line)
    } else {
      fields.append(line)
    }
  }
  for field in fields {
    guard let colon = field.firstIndex(of: ":"), field[..<colon].lowercased() == name.lowercased() else { continue }
    return String(field[field.index(after: colon)...].drop { $0 == " " || $0 == "\t" })
  }
  return nil
}

/// A self-signed certificate for localhost and 127.0.0.1, valid for a day, made with the
/// openssl command (Debian's, /usr/bin/openssl): PEM files `certificate.pem` and `key.pem` in
/// `directory`.
public func makeSelfSignedCertificate(in directory: URL) async throws -> (certificatePath: String, keyPath: String) {
  let certificate = directory.appendingPathComponent("certificate.pem").path
  let key = directory.appendingPathComponent("key.pem").path
  let openssl = try ChildProcess(
    URL(fileURLWithPath: "/usr/bin/openssl"),
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-days", "1", "-keyout", key, "-out", certificate,
    ],
    environment: ProcessInfo.processInfo.environment)
  let status = await openssl.waitForExit()
  guard status == 0 else {
    throw SMTPTestServer.Unavailable(description: "openssl req failed (\(status)): \(openssl.standardError)")
  }
  return (certificate, key)
}
