import Foundation
import Logging
import SMTP

/// Email over SMTP: the batch goes over one session (one TLS handshake and one AUTH for all).
struct SMTPEmailTransport: EmailTransport {
  let client: SMTPClient
  let configuration: SMTPConfiguration
  let from: EmailAddress

  init(configuration: SMTPConfiguration, from: EmailAddress, logger: Logger) {
    self.configuration = configuration
    self.from = from
    self.client = SMTPClient(configuration: configuration, logger: logger)
  }

  var summary: String { "smtp \(configuration.host):\(configuration.port) (\(configuration.security))" }

  func send(_ emails: [OutgoingEmail]) async -> [Result<String, DeliveryFailure>] {
    var messages: [EmailMessage] = []
    var results: [Result<String, DeliveryFailure>?] = []
    for email in emails {
      do {
        messages.append(
          EmailMessage(
            from: from, to: [try EmailAddress(email.to, name: email.toName)], subject: email.subject,
            textBody: email.text, htmlBody: email.html, messageID: email.messageID, date: Date(), headers: []))
        results.append(nil)
      } catch {
        results.append(.failure(.permanent("not an address SMTP can send to: \(error)")))
      }
    }
    var sent: [Result<SMTPSendResult, SMTPError>] = []
    if !messages.isEmpty {
      do {
        sent = try await client.send(messages)
      } catch {
        let failure = Self.failure(error)
        return results.map { $0 ?? .failure(failure) }
      }
    }
    var next = sent.makeIterator()
    return results.map { result in
      if let result { return result }
      switch next.next() {
      case .success(let reply): return .success(reply.serverReply)
      case .failure(let error): return .failure(Self.failure(error))
      case nil: return .failure(.retryable("the SMTP session ended before this message"))
      }
    }
  }

  /// 4xx replies, timeouts and lost connections may pass; 5xx replies will not.
  static func failure(_ error: any Error) -> DeliveryFailure {
    guard let smtp = error as? SMTPError else { return .retryable("\(error)") }
    return DeliveryFailure(retryable: smtp.isRetryable, message: smtp.description)
  }
}

/// The mailbox of `make run` and of a machine without providers: each email an `.eml` file and
/// each text message a `.txt` file, named after the delivery, so that a second attempt of the
/// same delivery rewrites its file rather than adding one.
struct FileMailbox: EmailTransport, SMSTransport {
  let directory: URL
  let from: EmailAddress

  init(directory: String, from: EmailAddress) {
    self.directory = URL(fileURLWithPath: directory, isDirectory: true)
    self.from = from
  }

  var summary: String { "mailbox \(directory.path)" }

  func send(_ emails: [OutgoingEmail]) async -> [Result<String, DeliveryFailure>] {
    emails.map { email in
      Result {
        let message = EmailMessage(
          from: from, to: [try EmailAddress(email.to, name: email.toName)], subject: email.subject,
          textBody: email.text, htmlBody: email.html, messageID: email.messageID, date: Date(), headers: [])
        return try write(MIMEMessage.render(message), name: "\(email.deliveryID.lowercasedString).eml")
      }.mapError { $0 as? DeliveryFailure ?? .permanent("\($0)") }
    }
  }

  func send(_ sms: OutgoingSMS) async throws -> String {
    try write("To: \(sms.to)\n\n\(sms.body)\n", name: "\(sms.deliveryID.lowercasedString).txt")
  }

  /// Writes atomically (a reader never sees half a message); returns the file's path.
  private func write(_ content: String, name: String) throws -> String {
    let file = directory.appendingPathComponent(name)
    do {
      try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
      try Data(content.utf8).write(to: file, options: .atomic)
    } catch {
      throw DeliveryFailure.retryable("could not write \(file.path): \(error.localizedDescription)")
    }
    return file.path
  }
}
