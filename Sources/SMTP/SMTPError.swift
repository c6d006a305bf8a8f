/// Why a send failed, and whether trying again later may help.
public struct SMTPError: Error, Sendable, CustomStringConvertible {
  public enum Stage: String, Sendable {
    case connect, tls, greeting, ehlo, startTLS, auth, mailFrom, rcptTo, data, message, quit
  }

  public enum Kind: Sendable {
    /// A 4xx reply, a timeout or a lost connection: the same message may go through later.
    case transient
    /// A 5xx reply, a bad address, a server that cannot meet our security requirements, refused
    /// credentials: retrying the same message against the same server will fail again.
    case permanent
  }

  public var kind: Kind
  public var stage: Stage
  /// The reply's three-digit code, when a reply caused the failure.
  public var code: Int?
  /// The RFC 3463 enhanced status code ("5.1.1") when the server sent one.
  public var enhancedCode: String?
  public var message: String

  public var isRetryable: Bool { kind == .transient }

  public init(kind: Kind, stage: Stage, code: Int? = nil, enhancedCode: String? = nil, message: String) {
    self.kind = kind
    self.stage = stage
    self.code = code
    self.enhancedCode = enhancedCode
    self.message = message
  }

  public var description: String {
    var text = "SMTP \(kind == .transient ? "transient" : "permanent") failure at \(stage.rawValue)"
    if let code { text += " (\(code)\(enhancedCode.map { " " + $0 } ?? ""))" }
    return text + ": " + message
  }
}

extension SMTPError {
  /// A refusal: 4xx is transient; 5xx, and any reply the step does not expect, permanent.
  init(reply: SMTPReply, stage: Stage, about subject: String? = nil) {
    self.init(
      kind: (400..<500).contains(reply.code) ? .transient : .permanent, stage: stage, code: reply.code,
      enhancedCode: reply.enhancedCode, message: (subject.map { $0 + ": " } ?? "") + reply.text)
  }
}
