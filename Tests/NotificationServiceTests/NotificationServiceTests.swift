import Foundation
import GRPCCore
import MartProto
import MartRuntime
import MartTestKit
import MartTestSupport
import PostgresNIO
import SMTP
import Testing

@testable import NotificationService

// Note: no closure literal inside `#expect(...)` in these tests (see InventoryHarness).

@Suite("Notification templates")
struct NotificationTemplateTests {
  /// Every kind in every locale renders with sample values: a one-line subject, text, and an HTML
  /// document in the layout, with the values in it.
  @Test func everyTemplateRendersWithSampleData() throws {
    let templates = try NotificationTemplates()
    #expect(templates.locales == ["en", "de"])
    let values: [String: Any] = [
      "name": "Thandi", "shop_name": "Mart", "email": "t@example.com", "order_number": "M-1",
      "order_id": "5b0c", "amount": "ZAR 10.00", "total": "ZAR 12.00", "subtotal": "ZAR 10.00",
      "shipping_fee": "ZAR 2.00",
      "lines": [
        [
          "name": "Tea", "quantity": "2", "unit_price": "ZAR 5.00",
          "line_total": "ZAR 10.00",
        ]
      ], "reason": ["out_of_stock": true], "was_paid": true, "carrier": "DHL",
      "tracking_number": "JD0001", "refunded_total": "ZAR 10.00", "fully_refunded": true, "product_id": "p-1",
      "available": "2", "threshold": "5", "message": "hello", "channel": "email", "roles": "customer, admin",
      "admin_granted": true,
    ]
    for locale in ["en", "de"] {
      for kind in NotificationKind.allCases {
        let message = templates.render(kind, locale: locale, values: values)
        #expect(!message.subject.isEmpty && !message.subject.contains("\n"), "\(kind) \(locale) subject")
        #expect(!message.text.isEmpty, "\(kind) \(locale) text")
        #expect(message.html.contains("<html lang=\"\(locale)\""), "\(kind) \(locale) layout")
        #expect(!message.html.contains("{{") && !message.text.contains("{{"), "\(kind) \(locale) leftovers")
      }
    }
    let placed = templates.render(.orderPlaced, locale: "en", values: values)
    #expect(placed.text.contains("Tea") && placed.text.contains("ZAR 12.00") && placed.subject.contains("M-1"))
    let cancelled = templates.render(.orderCancelled, locale: "de", values: values)
    #expect(cancelled.text.contains("M-1"))
  }

  @Test func htmlEscapesValuesAndTextDoesNot() throws {
    let templates = try NotificationTemplates()
    let message = templates.render(
      .welcome, locale: "en", values: ["name": "<script>alert(1)</script> & Co", "shop_name": "Mart"])
    #expect(message.html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"))
    #expect(!message.html.contains("<script>"))
    #expect(message.text.contains("<script>alert(1)</script> & Co"))
  }

  @Test func aLocaleFallsBackToItsLanguageThenToEnglish() throws {
    let templates = try NotificationTemplates()
    #expect(templates.locale(for: "de-CH") == "de")
    #expect(templates.locale(for: "de") == "de")
    #expect(templates.locale(for: "fr-FR") == "en")
    #expect(templates.locale(for: "") == "en")
  }

  /// A broken template stops start-up, naming itself.
  @Test func aBrokenOrMissingTemplateIsRefusedAtStartUp() throws {
    var files = NotificationTemplates.embedded
    files["order_paid.de"] = Array("{{! subject }}\nPaid {{#order_number}}\n{{! text }}\nx\n{{! html }}\n<p>x</p>".utf8)
    #expect(throws: NotificationTemplates.Broken.self) { try NotificationTemplates(files: files) }
    files = NotificationTemplates.embedded
    files["welcome.de"] = Array("{{! subject }}\nWillkommen\n{{! text }}\nHallo".utf8)
    #expect(throws: NotificationTemplates.Broken.self) { try NotificationTemplates(files: files) }
    files = NotificationTemplates.embedded
    files.removeValue(forKey: "low_stock.de")
    #expect(throws: NotificationTemplates.Broken.self) { try NotificationTemplates(files: files) }
  }
}

@Suite("Notification settings")
struct NotificationSettingsTests {
  /// With only a username, SMTP is Mailtrap's sandbox with STARTTLS; a half or wrong
  /// configuration stops start-up naming the variable; nothing set means the file mailbox.
  @Test func smtpDefaultsToMailtrapsSandboxAndRefusesHalfConfigurations() throws {
    let mailtrap = try NotificationSettings(
      environment: EnvironmentReader([
        "MART_SMTP_USERNAME": "inbox-user", "MART_SMTP_PASSWORD": "inbox-pass",
        "MART_NOTIFICATION_EMAIL_FROM": "Shop <orders@shop.example>",
      ]))
    let smtp = try #require(mailtrap.smtp)
    #expect(smtp.host == "sandbox.smtp.mailtrap.io" && smtp.port == 2525 && smtp.security == .startTLS)
    #expect(smtp.credentials?.username == "inbox-user" && smtp.heloName == "shop.example")
    #expect(!"\(smtp.credentials.map { "\($0)" } ?? "")".contains("inbox-pass"))
    #expect(mailtrap.emailFrom.name == "Shop" && mailtrap.messageDomain == "shop.example")

    let none = try NotificationSettings(environment: EnvironmentReader([:]))
    #expect(none.smtp == nil && none.mailboxDirectory == ".mart/mail")

    for (environment, variable) in [
      (["MART_SMTP_PASSWORD": "x"], "MART_SMTP_PASSWORD"),
      (["MART_SMTP_USERNAME": "u"], "MART_SMTP_PASSWORD"),
      (["MART_SMTP_HOST": "mail.example", "MART_SMTP_SECURITY": "ssl3"], "MART_SMTP_SECURITY"),
      (["MART_NOTIFICATION_EMAIL_FROM": "not an address"], "MART_NOTIFICATION_EMAIL_FROM"),
      (["MART_NOTIFICATION_MAX_EVENT_AGE": "forever"], "MART_NOTIFICATION_MAX_EVENT_AGE"),
    ] {
      #expect(throws: ConfigurationError.self, "\(variable)") {
        try NotificationSettings(environment: EnvironmentReader(environment))
      }
      do {
        _ = try NotificationSettings(environment: EnvironmentReader(environment))
      } catch let error as ConfigurationError {
        #expect(error.variable == variable)
      }
    }
  }
}

@Suite("Notification service", .serialized)
struct NotificationServiceTests {
  /// A registration is a welcome email over real SMTP (STARTTLS, AUTH), with both MIME parts, our
  /// Message-ID, and NotificationSent; and an in-app item.
  @Test func welcomeEmailOverSMTPAndAnInboxItem() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let settings = try NotificationHarness.settings(smtp: NotificationHarness.smtp(server))
    try await NotificationHarness.run("notify_welcome", settings: settings) { mart in
      let (userID, auth) = try await mart.register("thandi@example.com", name: "Thandi Nkosi")
      let rows = try await mart.settledDeliveries(of: userID, count: 1)
      #expect(rows.map(\.status) == ["sent"])
      #expect(rows.first?.kind == "welcome" && rows.first?.recipient == "thandi@example.com")
      let received = try await server.waitForMessages(1)
      let email = try #require(received.first)
      #expect(email.recipients == ["thandi@example.com"])
      #expect(email.tls && email.authUser != nil)
      #expect(email.header("Message-ID") == rows.first?.messageID)
      #expect(email.header("From")?.contains("shop@mart.test") == true)
      #expect(email.header("Content-Type")?.contains("multipart/alternative") == true)
      #expect(email.raw.contains("text/plain") && email.raw.contains("text/html"))
      #expect(email.raw.contains("Thandi Nkosi"))
      #expect(try await mart.outboxCount(type: "mart.notification.v1.NotificationSent") == 1)

      let inbox = try await mart.notifications.listMyNotifications(.init(), metadata: auth)
      #expect(inbox.notifications.map(\.kind) == [.welcome])
      #expect(inbox.unreadCount == 1)
      #expect(inbox.notifications.first?.title.contains("Mart Test") == true)
    }
  }

  /// The welcome email carries the link that verifies the address, and the link works; the in-app
  /// item never shows it. Registering a taken email mails its owner a security notice, and a
  /// resend is an email of its own.
  @Test func theWelcomeEmailVerifiesTheAddressAndATakenEmailWarnsItsOwner() async throws {
    let mailbox = FileManager.default.temporaryDirectory.appendingPathComponent("mart-mail-\(UUID())")
    var settings = try NotificationHarness.settings(mailbox: mailbox.path)
    settings.verifyEmailURL = "https://shop.example/verify-email"
    try await NotificationHarness.run("notify_verify", settings: settings) { mart in
      let (userID, auth) = try await mart.register("nia@example.com", name: "Nia")
      let welcome = try await mart.settledDeliveries(of: userID, count: 1)
      #expect(welcome.map(\.kind) == ["welcome"])
      // The messages as text, quoted-printable undone where it matters here (soft line breaks
      // and the "=" of the query).
      func mails() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: mailbox.path).filter { $0.hasSuffix(".eml") }.sorted()
          .map { try String(contentsOf: mailbox.appendingPathComponent($0), encoding: .utf8) }
          .map {
            $0.replacingOccurrences(of: "=\r\n", with: "").replacingOccurrences(of: "=\n", with: "")
              .replacingOccurrences(of: "=3D", with: "=")
          }
      }
      let text = try #require(try mails().first)
      let prefix = "https://shop.example/verify-email?token="
      let start = try #require(text.range(of: prefix))
      let token = String(text[start.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
      #expect(token.count == 43)
      let inbox = try await mart.notifications.listMyNotifications(.init(), metadata: auth)
      #expect(inbox.notifications.map(\.kind) == [.welcome])
      #expect(inbox.notifications.allSatisfy { !$0.body.contains(token) && !$0.title.contains(token) })
      let verified = try await mart.userService.verifyEmail(.with { $0.token = token })
      #expect(verified.user.emailVerified)

      _ = try await mart.userService.register(
        .with {
          $0.email = "NIA@example.com"
          $0.password = "someone else's password"
          $0.fullName = "Not Nia"
        })
      _ = try await mart.userService.resendVerificationEmail(.with { $0.email = "nia@example.com" })
      let all = try await mart.settledDeliveries(of: userID, count: 2)
      // Verified already: the resend sends nothing; the stranger's attempt is the owner's notice.
      #expect(all.map(\.kind) == ["welcome", "registration_attempted"])
      #expect(all.allSatisfy { $0.status == "sent" && $0.recipient == "nia@example.com" })
      let notice = try #require(try mails().first { $0.contains("tried to register") })
      #expect(notice.contains("nia@example.com"))
    }
  }

  /// The password-reset email carries a link that works (the in-app item never shows it), and the
  /// change it makes is a security notice of its own.
  @Test func thePasswordResetEmailWorksAndTheChangeIsNoticed() async throws {
    let mailbox = FileManager.default.temporaryDirectory.appendingPathComponent("mart-mail-\(UUID())")
    var settings = try NotificationHarness.settings(mailbox: mailbox.path)
    settings.resetPasswordURL = "https://shop.example/reset-password"
    try await NotificationHarness.run("notify_reset", settings: settings) { mart in
      let (userID, auth) = try await mart.register("pia@example.com", name: "Pia")
      _ = try await mart.settledDeliveries(of: userID, count: 1)
      _ = try await mart.userService.requestPasswordReset(.with { $0.email = "pia@example.com" })
      let sent = try await mart.settledDeliveries(of: userID, count: 2)
      #expect(sent.map(\.kind) == ["welcome", "password_reset"])
      let mails = try FileManager.default.contentsOfDirectory(atPath: mailbox.path).filter { $0.hasSuffix(".eml") }
        .map { try String(contentsOf: mailbox.appendingPathComponent($0), encoding: .utf8) }
        .map {
          $0.replacingOccurrences(of: "=\r\n", with: "").replacingOccurrences(of: "=\n", with: "")
            .replacingOccurrences(of: "=3D", with: "=")
        }
      let text = try #require(mails.first { $0.contains("https://shop.example/reset-password?token=") })
      let start = try #require(text.range(of: "https://shop.example/reset-password?token="))
      let token = String(text[start.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
      #expect(token.count == 43)
      let inbox = try await mart.notifications.listMyNotifications(.init(), metadata: auth)
      #expect(inbox.notifications.contains { $0.kind == .passwordReset })
      #expect(inbox.notifications.allSatisfy { !$0.body.contains(token) && !$0.title.contains(token) })

      _ = try await mart.userService.resetPassword(
        .with {
          $0.token = token
          $0.newPassword = "pia's new password"
        })
      let all = try await mart.settledDeliveries(of: userID, count: 3)
      #expect(all.map(\.kind) == ["welcome", "password_reset", "password_changed"])
      #expect(all.allSatisfy { $0.status == "sent" && $0.recipient == "pia@example.com" })
    }
  }

  /// The same OrderPaid delivered three times, then once more later, sends one email.
  @Test func aRedeliveredEventSendsNothingTwice() async throws {
    let mailbox = FileManager.default.temporaryDirectory.appendingPathComponent("mart-mail-\(UUID())")
    let settings = try NotificationHarness.settings(mailbox: mailbox.path)
    try await NotificationHarness.run("notify_redelivered", settings: settings) { mart in
      let (userID, _) = try await mart.register("ayanda@example.com")
      try await mart.waitUntilKnown(userID)
      let paid = NotificationHarness.orderPaid(userID)
      let eventID = UUID()
      try await mart.publish(paid, id: eventID, subject: paid.orderID, times: 3)
      _ = try await mart.settledDeliveries(of: userID, count: 2)
      try await mart.publish(paid, id: eventID, subject: paid.orderID)
      let rows = try await mart.settledDeliveries(of: userID, count: 2)
      #expect(rows.map(\.kind) == ["welcome", "order_paid"])
      #expect(rows.allSatisfy { $0.status == "sent" && $0.attempts == 1 })
      let files = try FileManager.default.contentsOfDirectory(atPath: mailbox.path).filter { $0.hasSuffix(".eml") }
      #expect(files.count == 2)
      let paidMail = try files.map { try String(contentsOf: mailbox.appendingPathComponent($0), encoding: .utf8) }
        .filter { $0.contains("M-2026-000042") }
      #expect(paidMail.count == 1)
      #expect(paidMail.first?.contains("ZAR 1234.50") == true)
    }
  }

  /// 4xx: retried, then sent. 5xx: failed at once, not retried. A server that hangs: a timeout,
  /// and a retry.
  @Test func smtpFailuresAreRetriedOrFailedByTheirClass() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let settings = try NotificationHarness.settings(smtp: NotificationHarness.smtp(server, dataTimeout: .seconds(1)))
    try await NotificationHarness.run("notify_smtp_failures", settings: settings) { mart in
      let (tempfail, _) = try await mart.register("tempfail-2+a@example.com")
      let (reject, _) = try await mart.register("reject+b@example.com")
      let retried = try await mart.settledDeliveries(of: tempfail, count: 1)
      #expect(retried.map(\.status) == ["sent"])
      #expect(retried.first?.attempts == 3)
      let rejected = try await mart.settledDeliveries(of: reject, count: 1)
      #expect(rejected.map(\.status) == ["failed"])
      #expect(rejected.first?.attempts == 1)
      #expect(rejected.first?.lastError?.contains("550") == true)

      let (hang, _) = try await mart.register("hang+c@example.com")
      let timedOut = await eventually {
        let rows = try await mart.deliveries(of: hang)
        return rows.first.map { $0.attempts >= 2 && ($0.lastError ?? "").contains("timed out") } ?? false
      }
      let hangRows = try await mart.deliveries(of: hang)
      #expect(timedOut, "\(hangRows)")
      let received = try server.receivedMessages().flatMap(\.recipients)
      #expect(received.filter { $0 == "tempfail-2+a@example.com" }.count == 1)
      #expect(!received.contains("reject+b@example.com"))
    }
  }

  /// Orders' SMS is off by default; turned on, the SMS goes too; turned off again, only the email.
  @Test func preferencesTurnChannelsOffPerCategory() async throws {
    let mailbox = FileManager.default.temporaryDirectory.appendingPathComponent("mart-mail-\(UUID())")
    let settings = try NotificationHarness.settings(mailbox: mailbox.path)
    try await NotificationHarness.run("notify_preferences", settings: settings) { mart in
      let (userID, auth) = try await mart.register("sipho@example.com", phone: "+27821234567")
      try await mart.waitUntilKnown(userID)
      let defaults = try await mart.notifications.getMyPreferences(.init(), metadata: auth)
      #expect(defaults.orders.email && !defaults.orders.sms && !defaults.marketing.email)
      #expect(!defaults.hasUpdateTime)

      let smsOn = try await mart.notifications.updateMyPreferences(
        .with {
          $0.preferences.orders.sms = true
          $0.updateMask.paths = ["orders.sms"]
        }, metadata: auth)
      #expect(smsOn.orders.sms && smsOn.orders.email && smsOn.hasUpdateTime)
      let first = NotificationHarness.orderPaid(userID, number: "M-1")
      try await mart.publish(first, subject: first.orderID)
      var rows = try await mart.settledDeliveries(of: userID, count: 3)
      #expect(rows.map { "\($0.kind)/\($0.channel)" } == ["welcome/email", "order_paid/email", "order_paid/sms"])
      #expect(rows.allSatisfy { $0.status == "sent" })

      _ = try await mart.notifications.updateMyPreferences(
        .with {
          $0.preferences.orders.sms = false
          $0.updateMask.paths = ["orders.sms"]
        }, metadata: auth)
      let second = NotificationHarness.orderPaid(userID, number: "M-2")
      try await mart.publish(second, subject: second.orderID)
      rows = try await mart.settledDeliveries(of: userID, count: 4)
      #expect(rows.map { "\($0.kind)/\($0.channel)" }.suffix(1) == ["order_paid/email"])
      let texts = try FileManager.default.contentsOfDirectory(atPath: mailbox.path).filter { $0.hasSuffix(".txt") }
      #expect(texts.count == 1)

      // Bad paths and missing values name the field.
      let unknown = await rpcError {
        _ = try await mart.notifications.updateMyPreferences(
          .with { $0.updateMask.paths = ["security.email"] }, metadata: auth)
      }
      #expect(fields(unknown) == ["update_mask"])
      let missing = await rpcError {
        _ = try await mart.notifications.updateMyPreferences(
          .with { $0.updateMask.paths = ["marketing"] }, metadata: auth)
      }
      #expect(fields(missing) == ["preferences.marketing.email", "preferences.marketing.sms"])
    }
  }

  /// One user cannot see or mark another's notifications; the inbox pages and counts unread ones.
  @Test func theInboxIsTheCallersOwn() async throws {
    let settings = try NotificationHarness.settings()
    try await NotificationHarness.run("notify_inbox", settings: settings) { mart in
      let (alice, aliceAuth) = try await mart.register("alice@example.com")
      let (bob, bobAuth) = try await mart.register("bob@example.com")
      try await mart.waitUntilKnown(alice)
      try await mart.waitUntilKnown(bob)
      for number in 1...3 {
        let paid = NotificationHarness.orderPaid(alice, number: "M-\(number)")
        try await mart.publish(paid, subject: paid.orderID)
      }
      _ = try await mart.settledDeliveries(of: alice, count: 4)
      let page = try await mart.notifications.listMyNotifications(.with { $0.pageSize = 2 }, metadata: aliceAuth)
      #expect(page.notifications.count == 2 && !page.nextPageToken.isEmpty && page.unreadCount == 4)
      let rest = try await mart.notifications.listMyNotifications(
        .with {
          $0.pageSize = 2
          $0.pageToken = page.nextPageToken
        }, metadata: aliceAuth)
      #expect(rest.notifications.count == 2 && rest.nextPageToken.isEmpty)
      let newest = try #require(page.notifications.first)
      // Newest first across the pages (the three events are handled side by side, in any order).
      let times = (page.notifications + rest.notifications).map { $0.createTime.date }
      #expect(times == times.sorted(by: >))
      #expect(Set((page.notifications + rest.notifications).map(\.kind)) == [.orderPaid, .welcome])

      let bobs = try await mart.notifications.listMyNotifications(.init(), metadata: bobAuth)
      #expect(bobs.notifications.map(\.kind) == [.welcome])
      #expect(bobs.notifications.allSatisfy { $0.userID == bob.lowercasedString })
      let notHis = await rpcError {
        _ = try await mart.notifications.markNotificationRead(
          .with { $0.notificationID = newest.id }, metadata: bobAuth)
      }
      #expect(notHis?.code == .notFound)

      let read = try await mart.notifications.markNotificationRead(
        .with { $0.notificationID = newest.id }, metadata: aliceAuth)
      #expect(read.hasReadTime)
      let again = try await mart.notifications.markNotificationRead(
        .with { $0.notificationID = newest.id }, metadata: aliceAuth)
      #expect(again.readTime == read.readTime)
      let unread = try await mart.notifications.listMyNotifications(.with { $0.unreadOnly = true }, metadata: aliceAuth)
      #expect(unread.unreadCount == 3 && !unread.notifications.map(\.id).contains(newest.id))
      let badSize = await rpcError {
        _ = try await mart.notifications.listMyNotifications(.with { $0.pageSize = -1 }, metadata: aliceAuth)
      }
      #expect(fields(badSize) == ["page_size"])
    }
  }

  /// Low stock goes to every admin; an admin learns their roles changed (a security notice that
  /// preferences cannot turn off); the delivery log filters and pages; customers cannot read it.
  @Test func lowStockReachesEveryAdminAndTheLogIsAdminOnly() async throws {
    let settings = try NotificationHarness.settings()
    try await NotificationHarness.run("notify_admins", settings: settings) { mart in
      let (first, _) = try await mart.register("ops1@example.com")
      let (second, _) = try await mart.register("ops2@example.com", locale: "de")
      let (customer, customerAuth) = try await mart.register("c@example.com")
      for admin in [first, second] {
        _ = try await mart.userService.setRoles(
          .with {
            $0.userID = admin.lowercasedString
            $0.roles = [.customer, .admin]
          }, metadata: mart.admin)
        try await mart.waitUntilKnown(admin, version: 2)
      }
      let lowStock = Mart_Inventory_V1_LowStock.with {
        $0.productID = UUID().lowercasedString
        $0.available = 2
        $0.lowStockThreshold = 5
      }
      try await mart.publish(lowStock, subject: lowStock.productID, times: 2)
      for admin in [first, second] {
        let rows = try await mart.settledDeliveries(of: admin, count: 3)
        #expect(rows.map(\.kind) == ["welcome", "roles_changed", "low_stock"])
        #expect(rows.allSatisfy { $0.status == "sent" })
      }
      #expect(try await mart.deliveries(of: customer).map(\.kind) == ["welcome"])

      let german = try await mart.notifications.listMyNotifications(
        .init(), metadata: try mart.users.bearer(roles: ["customer", "admin"], subject: second))
      #expect(german.notifications.first?.kind == .lowStock)

      let sent = try await mart.notifications.listDeliveries(
        .with {
          $0.status = .sent
          $0.channel = .email
          $0.userID = first.lowercasedString
        }, metadata: mart.admin)
      #expect(sent.deliveries.map(\.kind) == [.lowStock, .rolesChanged, .welcome])
      #expect(sent.deliveries.first?.destination == "o***@example.com")
      let paged = try await mart.notifications.listDeliveries(.with { $0.pageSize = 4 }, metadata: mart.admin)
      #expect(paged.deliveries.count == 4 && !paged.nextPageToken.isEmpty)
      let next = try await mart.notifications.listDeliveries(
        .with {
          $0.pageSize = 4
          $0.pageToken = paged.nextPageToken
        }, metadata: mart.admin)
      #expect(next.deliveries.count == 3)
      let denied = await rpcError { _ = try await mart.notifications.listDeliveries(.init(), metadata: customerAuth) }
      #expect(denied?.code == .permissionDenied)
      let badFilter = await rpcError {
        _ = try await mart.notifications.listDeliveries(.with { $0.channel = .inApp }, metadata: mart.admin)
      }
      #expect(fields(badFilter) == ["channel"])
    }
  }

  /// An order's event can overtake the user's registration: the email waits for the address.
  @Test func anEventBeforeTheUserIsKnownWaitsForTheAddress() async throws {
    let settings = try NotificationHarness.settings()
    try await NotificationHarness.run("notify_early", settings: settings) { mart in
      let userID = UUID()
      let paid = NotificationHarness.orderPaid(userID)
      try await mart.publish(paid, subject: paid.orderID)
      // Put off, not tried: it stays queued, and waiting uses none of its attempts.
      let waiting = await eventually {
        let row = try await mart.deliveries(of: userID).first
        return row?.status == "queued" && row?.attempts == 0 && row?.lastError?.contains("not known yet") == true
      }
      #expect(waiting)
      let registered = Mart_User_V1_UserRegistered.with {
        $0.userID = userID.lowercasedString
        $0.email = "late@example.com"
        $0.fullName = "Late Comer"
        $0.roles = [.customer]
        $0.version = 1
      }
      try await mart.publish(registered, subject: registered.userID)
      let rows = try await mart.settledDeliveries(of: userID, count: 2)
      #expect(rows.allSatisfy { $0.status == "sent" && $0.recipient == "late@example.com" && $0.attempts == 1 })
      // An older version of the account changes nothing.
      var stale = Mart_User_V1_UserUpdated.with {
        $0.userID = userID.lowercasedString
        $0.email = "old@example.com"
        $0.roles = [.customer]
        $0.version = 1
      }
      try await mart.publish(stale, subject: stale.userID)
      stale.version = 2
      stale.email = "new@example.com"
      try await mart.publish(stale, subject: stale.userID)
      _ = await eventually {
        let rows = try await mart.database.query(
          "SELECT email FROM users WHERE user_id = \(userID)", logger: TestBed.logger)
        for try await email in rows.decode(String.self) { return email == "new@example.com" }
        return false
      }
      let rows2 = try await mart.database.query(
        "SELECT email, version FROM users WHERE user_id = \(userID)", logger: TestBed.logger)
      for try await (email, version) in rows2.decode((String, Int64).self) {
        #expect(email == "new@example.com" && version == 2)
      }
    }
  }

  /// A consumer that starts from a topic's beginning (a new deployment) files old events in the
  /// inbox and mails nobody about them.
  @Test func anOldEventGoesToTheInboxOnly() async throws {
    let settings = try NotificationHarness.settings()
    try await NotificationHarness.run("notify_old_event", settings: settings) { mart in
      let (userID, auth) = try await mart.register("old@example.com")
      _ = try await mart.settledDeliveries(of: userID, count: 1)
      let paid = NotificationHarness.orderPaid(userID, number: "M-OLD")
      try await mart.publish(paid, subject: paid.orderID, time: Date().addingTimeInterval(-3 * 86_400))
      let filed = await eventually {
        try await mart.notifications.listMyNotifications(.init(), metadata: auth).notifications.count == 2
      }
      #expect(filed)
      #expect(try await mart.deliveries(of: userID).map(\.kind) == ["welcome"])
    }
  }

  /// The lease's fencing token: a sender whose lease ran out cannot overwrite the sender that took
  /// the delivery over; and a delivery cut off at every attempt is given up, not sent for ever.
  @Test func aLateSenderCannotOverwriteTheOneThatTookOver() async throws {
    // The schema alone, no service: the test is the only sender.
    try await ScratchDatabase.with("notify_fencing") { scratch in
      try await withPostgresClient(scratch.configuration) { database in
        try await fencing(database)
      }
    }
  }

  private func fencing(_ database: PostgresClient) async throws {
    do {
      _ = try await MigrationRunner(migrations: NotificationServiceModule.definition.migrations, logger: TestBed.logger)
        .migrate(database)
      let store = NotificationStore(database: database, outbox: Outbox(service: .notification), logger: TestBed.logger)
      let mart = (database: database, store: store)
      let userID = UUID()
      try await mart.database.query(
        "INSERT INTO users (user_id, email, version) VALUES (\(userID), 'fence@example.com', 1)",
        logger: TestBed.logger)
      let id = UUID()
      try await mart.database.query(
        """
        INSERT INTO deliveries (id, user_id, kind, channel, recipient, message_id, next_attempt_at)
        VALUES (\(id), \(userID), 'test', 'email', 'fence@example.com', '<f@mart.test>', now() - interval '1 second')
        """, logger: TestBed.logger)
      let first = try #require(try await store.claimDue(limit: 10, lease: .zero, maximumAttempts: 3).first)
      // Its lease is over at once: a second sender takes it over.
      let second = try #require(try await store.claimDue(limit: 10, lease: .seconds(60), maximumAttempts: 3).first)
      #expect(second.resumed && second.delivery.attemptCount == 2)
      #expect(!(try await store.recordFailure(first.delivery, recipient: nil, error: "late 451", retryAt: nil)))
      #expect(try await store.recordSent(second.delivery, recipient: "fence@example.com", providerMessageID: "250 ok"))
      #expect(!(try await store.recordSent(first.delivery, recipient: "fence@example.com", providerMessageID: "late")))
      let sent = try #require(try await store.delivery(id))
      #expect(sent.status == .sent && sent.providerMessageID == "250 ok")

      // Cut off at every attempt: given up after the last.
      let doomed = UUID()
      try await mart.database.query(
        """
        INSERT INTO deliveries (id, user_id, kind, channel, recipient, message_id, status, attempt_count,
                                next_attempt_at)
        VALUES (\(doomed), \(userID), 'test', 'email', 'fence@example.com', '<d@mart.test>', 'sending', 3,
                now() - interval '1 second')
        """, logger: TestBed.logger)
      #expect(try await store.claimDue(limit: 10, lease: .seconds(60), maximumAttempts: 3).isEmpty)
      let given = try #require(try await store.delivery(doomed))
      #expect(given.status == .failed && given.lastError?.contains("cut off") == true)
    }
  }

  /// Twilio's status callback, signed over the callback URL, records a text's later fate; an
  /// unsigned or mis-signed one changes nothing.
  @Test func twilioStatusCallbacksAreVerifiedThenRecorded() async throws {
    var settings = try NotificationHarness.settings()
    let token = "test-auth-token-\(UUID().uuidString)"
    let callbackURL = "https://shop.example/v1/webhooks/twilio/status"
    var twilio = TwilioSettings(
      accountSID: "AC" + String(repeating: "0", count: 32), authToken: token, sender: .from("+14155550100"),
      baseURL: "http://127.0.0.1:9")
    twilio.statusCallbackURL = callbackURL
    settings.twilio = twilio
    try await NotificationHarness.run("notify_twilio_status", settings: settings) { mart in
      let userID = UUID()
      let sid = "SM" + String(repeating: "a", count: 32)
      try await mart.database.query(
        """
        INSERT INTO deliveries (user_id, kind, channel, recipient, message_id, status, attempt_count,
                                provider_message_id, sent_at)
        VALUES (\(userID), 'order_paid', 'sms', '+27821234567', '<s@mart.test>', 'sent', 1, \(sid), now())
        """, logger: TestBed.logger)
      let form = [
        ("MessageSid", sid), ("MessageStatus", "undelivered"), ("ErrorCode", "30003"),
        ("AccountSid", twilio.accountSID), ("To", "+27821234567"),
      ]
      func callback(signature: String) -> Mart_Notification_V1_TwilioStatusCallbackRequest {
        .with {
          $0.httpBody.contentType = "application/x-www-form-urlencoded"
          $0.httpBody.data = Data(FormEncoding.encode(form).utf8)
          $0.signature = signature
        }
      }
      let forged = await rpcError {
        _ = try await mart.notifications.twilioStatusCallback(
          callback(signature: TwilioSignature.compute(url: callbackURL, parameters: form, authToken: "guess")))
      }
      #expect(forged?.code == .invalidArgument && fields(forged) == ["signature"])
      var logged = try await mart.notifications.listDeliveries(.with { $0.channel = .sms }, metadata: mart.admin)
      #expect(logged.deliveries.first?.providerStatus == "")

      _ = try await mart.notifications.twilioStatusCallback(
        callback(signature: TwilioSignature.compute(url: callbackURL, parameters: form, authToken: token)))
      logged = try await mart.notifications.listDeliveries(.with { $0.channel = .sms }, metadata: mart.admin)
      #expect(logged.deliveries.first?.providerStatus == "undelivered (30003)")
      #expect(logged.deliveries.first?.status == .sent)
    }
  }

  /// SendTestNotification sends before answering, and names a bad destination.
  @Test func sendTestNotificationChecksAChannel() async throws {
    let server = try await SMTPTestServer.start()
    defer { server.stop() }
    let settings = try NotificationHarness.settings(smtp: NotificationHarness.smtp(server))
    try await NotificationHarness.run("notify_test_send", settings: settings) { mart in
      let response = try await mart.notifications.sendTestNotification(
        .with {
          $0.channel = .email
          $0.destination = "ops@example.com"
          $0.message = "Is the mail working?"
        }, metadata: mart.admin)
      #expect(response.delivery.status == .sent && response.notification.kind == .test)
      let received = try await server.waitForMessages(1)
      #expect(received.first?.recipients == ["ops@example.com"])
      #expect(received.first?.raw.contains("Is the mail working?") == true)

      let badNumber = await rpcError {
        _ = try await mart.notifications.sendTestNotification(
          .with {
            $0.channel = .sms
            $0.destination = "0821234567"
          }, metadata: mart.admin)
      }
      #expect(fields(badNumber) == ["destination"])
      let noChannel = await rpcError {
        _ = try await mart.notifications.sendTestNotification(.init(), metadata: mart.admin)
      }
      #expect(fields(noChannel) == ["channel"])
      let customer = try mart.users.bearer(roles: ["customer"])
      let denied = await rpcError {
        _ = try await mart.notifications.sendTestNotification(.with { $0.channel = .email }, metadata: customer)
      }
      #expect(denied?.code == .permissionDenied)
    }
  }
}
