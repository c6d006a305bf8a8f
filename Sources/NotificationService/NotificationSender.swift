import Foundation
import Logging
import MartRuntime
import Metrics
import ServiceLifecycle

/// Works through the delivery log: takes the deliveries that are due, renders each in its
/// recipient's language, hands it to its channel's transport, and records the outcome. A failure
/// that may pass is tried again after an exponential, jittered backoff, up to
/// `maximumAttempts`; a permanent one fails the delivery at once, with the provider's error kept.
///
/// Exactly once, as far as it can be: a delivery is taken under a lease, so two senders never send
/// it together, and its outcome is committed with NotificationSent. A sender that dies after the
/// provider took a message and before that commit leaves the delivery to be taken again when the
/// lease ends, and the message goes out a second time: rare, and detectable, since every attempt
/// of an email carries the delivery's Message-ID (the SMS's SID is recorded with the commit).
///
/// Woken by `NOTIFY` when a transaction that queues a delivery commits, and otherwise looks every
/// `pollInterval`.
struct NotificationSender: Service {
  let store: NotificationStore
  let notifier: Notifier
  let email: any EmailTransport
  let sms: any SMSTransport
  let settings: NotificationSettings
  let logger: Logger
  private let wakeup = Wakeup()

  init(
    store: NotificationStore, notifier: Notifier, email: any EmailTransport, sms: any SMSTransport,
    settings: NotificationSettings, logger: Logger
  ) {
    self.store = store
    self.notifier = notifier
    self.email = email
    self.sms = sms
    self.settings = settings
    var logger = logger
    logger[metadataKey: "component"] = "notification-sender"
    self.logger = logger
  }

  /// On graceful shutdown the sender takes no more deliveries but finishes the batch it has: a
  /// message a provider accepted is recorded, not sent again by the next process.
  func run() async throws {
    logger.info("sending email through \(email.summary) and SMS through \(sms.summary)")
    await withDiscardingTaskGroup { group in
      group.addTask {
        await cancelWhenGracefulShutdown {
          await Wakeup.listen(
            on: NotificationStore.senderChannel, database: store.database, wakeup: wakeup,
            maximumBackoff: .seconds(10), logger: logger)
        }
      }
      group.addTask {
        await withGracefulShutdownHandler {
          await work()
        } onGracefulShutdown: {
          wakeup.signal()
        }
      }
    }
  }

  private func work() async {
    while !Task.isCancelled && !Task.isShuttingDownGracefully {
      var taken = 0
      do {
        taken = try await sendDue()
      } catch {
        if Task.isCancelled { return }
        logger.warning(
          "could not take due deliveries; retrying", metadata: ["error": "\(APIStatus.redactedDescription(of: error))"])
      }
      if taken > 0 { continue }
      await wakeup.wait(upTo: settings.pollInterval)
    }
  }

  /// Takes a batch of due deliveries and sends them; how many were taken.
  @discardableResult
  func sendDue() async throws -> Int {
    let claimed = try await store.claimDue(
      limit: settings.batchSize, lease: settings.sendLease, maximumAttempts: settings.maximumAttempts)
    await send(claimed)
    return claimed.count
  }

  /// Sends deliveries this sender has claimed: the emails over one session, the texts side by
  /// side; each outcome recorded as soon as it is known.
  func send(_ claimed: [ClaimedDelivery]) async {
    var emails: [(ClaimedDelivery, OutgoingEmail)] = []
    var texts: [(ClaimedDelivery, OutgoingSMS)] = []
    for item in claimed {
      let delivery = item.delivery
      if item.resumed {
        Counter(label: "mart_notification_resumed_sends_total", dimensions: [("channel", delivery.channel.rawValue)])
          .increment()
        logger.warning(
          "sending again a delivery whose previous attempt was cut off: the provider may have it twice",
          metadata: ["delivery_id": "\(delivery.id.lowercasedString)", "message_id": "\(delivery.messageID)"])
      }
      // The user's address as it is now (they may have changed it since the event), but for a
      // TEST, whose destination the admin chose.
      let current = delivery.kind == .test ? nil : item.contact?.address(for: delivery.channel)
      guard let recipient = current ?? delivery.recipient else {
        await recordMissingRecipient(item)
        continue
      }
      let message = notifier.render(delivery.kind, values: .fromJSON(delivery.templateData), for: item.contact)
      switch delivery.channel {
      case .email:
        emails.append(
          (
            item,
            OutgoingEmail(
              deliveryID: delivery.id, to: recipient, toName: item.contact?.fullName, subject: message.subject,
              text: message.text, html: message.html, messageID: delivery.messageID)
          ))
      case .sms:
        texts.append(
          (item, OutgoingSMS(deliveryID: delivery.id, to: recipient, body: "\(message.subject)\n\(message.text)")))
      }
    }
    let emailBatch = emails
    let textBatch = texts
    await withDiscardingTaskGroup { group in
      // The emails over a few sessions side by side: one session sends a message at a time, and
      // each waits for several replies, so one alone leaves the server and us mostly idle.
      let sessions = max(1, min(settings.emailSessions, emailBatch.count))
      for session in 0..<sessions {
        let share = stride(from: session, to: emailBatch.count, by: sessions).map { emailBatch[$0] }
        group.addTask {
          var last = ContinuousClock.now
          await email.send(share.map(\.1)) { index, result in
            let now = ContinuousClock.now
            let (item, outgoing) = share[index]
            await record(result, of: item, recipient: outgoing.to, elapsed: now - last)
            last = now
          }
        }
      }
      for (item, outgoing) in textBatch {
        group.addTask {
          let started = ContinuousClock.now
          let result: Result<String, DeliveryFailure>
          do {
            result = .success(try await sms.send(outgoing))
          } catch {
            result = .failure(error as? DeliveryFailure ?? .retryable("\(error)"))
          }
          await record(result, of: item, recipient: outgoing.to, elapsed: ContinuousClock.now - started)
        }
      }
    }
  }

  /// No address or number: wait a while for the user's details (their registration can arrive
  /// after an order's event, on another topic), then skip.
  private func recordMissingRecipient(_ item: ClaimedDelivery) async {
    let delivery = item.delivery
    do {
      if item.contact == nil, Date().timeIntervalSince(delivery.createdAt) < settings.unknownUserGrace.timeInterval {
        try await store.postpone(
          delivery, reason: "the user's details are not known yet",
          until: Date().addingTimeInterval(settings.retryDelay(afterAttempt: 1).timeInterval))
        return
      }
      let reason =
        item.contact == nil
        ? "the user is not known"
        : delivery.channel == .email ? "the user has no email address" : "the user has no phone number"
      try await store.recordSkipped(delivery, reason: reason)
      Counter(
        label: "mart_notification_deliveries_total",
        dimensions: [("channel", delivery.channel.rawValue), ("outcome", "skipped")]
      ).increment()
    } catch {
      logger.error(
        "could not put off a delivery without an address",
        metadata: [
          "delivery_id": "\(delivery.id.lowercasedString)", "error": "\(APIStatus.redactedDescription(of: error))",
        ])
    }
  }

  private func record(
    _ result: Result<String, DeliveryFailure>, of item: ClaimedDelivery, recipient: String, elapsed: Duration
  ) async {
    let delivery = item.delivery
    let channel = delivery.channel.rawValue
    Timer(label: "mart_notification_send_duration_seconds", dimensions: [("channel", channel)])
      .recordNanoseconds(elapsed.microseconds * 1000)
    do {
      let outcome: String
      switch result {
      case .success(let providerID):
        let recorded = try await store.recordSent(delivery, recipient: recipient, providerMessageID: providerID)
        outcome = recorded ? "sent" : "sent_unrecorded"
        if !recorded {
          logger.warning(
            "a provider took a message whose delivery another sender had taken over (its lease ran out)",
            metadata: ["delivery_id": "\(delivery.id.lowercasedString)", "message_id": "\(delivery.messageID)"])
        }
      case .failure(let failure):
        let retryAt =
          failure.retryable && delivery.attemptCount < settings.maximumAttempts
          ? Date().addingTimeInterval(settings.retryDelay(afterAttempt: delivery.attemptCount).timeInterval) : nil
        guard try await store.recordFailure(delivery, recipient: recipient, error: failure.message, retryAt: retryAt)
        else { return }
        outcome = retryAt == nil ? "failed" : "retrying"
        logger.log(
          level: retryAt == nil ? .warning : .info,
          retryAt == nil ? "delivery failed" : "delivery will be retried",
          metadata: [
            "delivery_id": "\(delivery.id.lowercasedString)", "channel": "\(channel)",
            "attempt": "\(delivery.attemptCount)", "error": "\(failure.message)",
          ])
      }
      Counter(label: "mart_notification_deliveries_total", dimensions: [("channel", channel), ("outcome", outcome)])
        .increment()
    } catch {
      // The lease brings it back: the worst case is the duplicate the type's comment describes.
      logger.error(
        "could not record a delivery's outcome",
        metadata: [
          "delivery_id": "\(delivery.id.lowercasedString)", "error": "\(APIStatus.redactedDescription(of: error))",
        ])
    }
  }
}
