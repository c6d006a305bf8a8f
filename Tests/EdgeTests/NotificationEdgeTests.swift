import Foundation
import MartTestSupport
import NotificationService
import SMTP
import Testing

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// The notification routes as a JSON client meets them: the gateway in front of the real user and
/// notification services (a registration through the edge is a welcome item in the inbox).
@Suite struct NotificationEdgeTests {
  static func settings() throws -> NotificationSettings {
    NotificationSettings(
      emailFrom: try EmailAddress("shop@mart.test"),
      mailboxDirectory: FileManager.default.temporaryDirectory.appendingPathComponent("edge-mail-\(UUID())").path,
      pollInterval: .milliseconds(200))
  }

  @Test func inboxPreferencesAndMarkReadThroughTheJSONAPI() async throws {
    try await withEdge(notifications: try Self.settings()) { edge in
      let (token, _) = try await edge.register()
      var inbox: [[String: Any]] = []
      let welcomed = await eventually {
        let response = try await edge.call("GET", "/v1/notifications", token: token)
        inbox = (try response.json()["notifications"] as? [[String: Any]]) ?? []
        return response.status == 200 && !inbox.isEmpty
      }
      #expect(welcomed)
      let welcome = try #require(inbox.first)
      #expect(welcome["kind"] as? String == "WELCOME")
      let id = try #require(welcome["id"] as? String)

      let read = try await edge.call("POST", "/v1/notifications/\(id):markRead", json: [:], token: token)
      #expect(read.status == 200, "\(read.text)")
      #expect(try read.json()["readTime"] != nil)
      let unread = try await edge.call("GET", "/v1/notifications?unread_only=true", token: token)
      #expect(unread.status == 200)
      #expect((try unread.json()["notifications"] as? [Any])?.isEmpty ?? true)

      let preferences = try await edge.call(
        "PATCH", "/v1/notifications/preferences?update_mask=orders.sms", json: ["orders": ["sms": true]], token: token)
      #expect(preferences.status == 200, "\(preferences.text)")
      #expect(try preferences.object("orders")["sms"] as? Bool == true)
      let fetched = try await edge.call("GET", "/v1/notifications/preferences", token: token)
      #expect(try fetched.object("orders")["email"] as? Bool == true)
      #expect(try fetched.object("marketing")["email"] as? Bool == false)

      let badPath = try await edge.call(
        "PATCH", "/v1/notifications/preferences?update_mask=security", json: ["orders": ["sms": true]], token: token)
      #expect(badPath.status == 400)
      try badPath.expectStatusBody(code: 3, naming: "update_mask")
      let notMine = try await edge.call("POST", "/v1/notifications/\(UUID()):markRead", json: [:], token: token)
      #expect(notMine.status == 404)
      let deliveries = try await edge.call("GET", "/v1/deliveries", token: token)
      #expect(deliveries.status == 403)
      let anonymous = try await edge.call("GET", "/v1/notifications")
      #expect(anonymous.status == 401)
    }
  }
}
