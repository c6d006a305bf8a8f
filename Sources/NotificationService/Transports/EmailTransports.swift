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

  func send(_ emails: [OutgoingEmail], onResult: EmailResultHandler) async {
    var messages: [EmailMessage] = []
    var indices: [Int] = []  // the email each message is
    for (index, email) in emails.enumerated() {
      do {
        messages.append(
          EmailMessage(
            from: from, to: [try EmailAddress(email.to, name: email.toName)], subject: email.subject,
            textBody: email.text, htmlBody: email.html, messageID: email.messageID, date: Date(), headers: []))
        indices.append(index)
      } catch {
        await onResult(index, .failure(.permanent("not an address SMTP can send to: \(error)")))
      }
    }
    guard !messages.isEmpty else { return }
    var answered = 0
    do {
      _ = try await client.send(messages) { position, result in
        answered = position + 1
        await onResult(indices[position], result.map(\.serverReply).mapError(Self.failure))
      }
    } catch {
      // The session could not be set up (connection, TLS, greeting, AUTH): nothing was sent. Even
      // a 5xx there (a refused login, Mailtrap's "too many connections") says nothing about the
      // messages, so they are tried again later rather than failed.
      let failure = DeliveryFailure.retryable("the SMTP session could not be set up: \(Self.failure(error).message)")
      for position in answered..<messages.count { await onResult(indices[position], .failure(failure)) }
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

  func send(_ emails: [OutgoingEmail], onResult: EmailResultHandler) async {
    for (index, email) in emails.enumerated() {
      let result = Result {
        let message = EmailMessage(
          from: from, to: [try EmailAddress(email.to, name: email.toName)], subject: email.subject,
          textBody: email.text, htmlBody: email.html, messageID: email.messageID, date: Date(), headers: [])
        return try write(MIMEMessage.render(message), name: "\(email.deliveryID.lowercasedString).eml")
      }.mapError { $0 as? DeliveryFailure ?? .permanent("\($0)") }
      await onResult(index, result)
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
