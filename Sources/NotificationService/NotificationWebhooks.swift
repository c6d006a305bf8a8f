import Foundation
import GRPCCore
import MartProto
import MartRuntime

/// Twilio's status callback: what became of a text after Twilio took it. Verified before it
/// changes anything: the X-Twilio-Signature header must be Twilio's HMAC over the callback URL we
/// gave it and the form's parameters.
extension NotificationRPCService {
  func twilioStatusCallback(
    request: Mart_Notification_V1_TwilioStatusCallbackRequest, context: ServerContext
  ) async throws -> Mart_Notification_V1_TwilioStatusCallbackResponse {
    guard let twilio, let callbackURL = twilio.statusCallbackURL else {
      throw APIStatus.status(
        .failedPrecondition, "Twilio status callbacks are not configured (MART_TWILIO_STATUS_CALLBACK_URL)",
        reason: "WEBHOOK_NOT_CONFIGURED")
    }
    guard let fields = FormEncoding.decode(String(decoding: request.httpBody.data, as: UTF8.self)) else {
      throw APIStatus.invalid("http_body", "is not a form (application/x-www-form-urlencoded)")
    }
    guard TwilioSignature.isValid(request.signature, url: callbackURL, parameters: fields, authToken: twilio.authToken)
    else {
      logger.warning("refused a Twilio status callback: its signature does not verify")
      throw APIStatus.status(
        .invalidArgument, "the X-Twilio-Signature header does not verify", reason: "INVALID_WEBHOOK_SIGNATURE",
        metadata: ["field": "signature"],
        extra: [.badRequest(violations: [.init(field: "signature", description: "does not verify")])])
    }
    let form = Dictionary(fields, uniquingKeysWith: { first, _ in first })
    guard let sid = form["MessageSid"] ?? form["SmsSid"], !sid.isEmpty,
      let status = form["MessageStatus"] ?? form["SmsStatus"], !status.isEmpty
    else {
      throw APIStatus.invalid("http_body", "lacks MessageSid or MessageStatus")
    }
    let code = form["ErrorCode"].flatMap { $0.isEmpty ? nil : $0 }
    let said = String((code.map { "\(status) (\($0))" } ?? status).prefix(200))
    // A SID we do not know (another application on the account) is acknowledged all the same:
    // Twilio would only retry it.
    if try await !store.recordProviderStatus(sid: sid, status: said) {
      logger.info("a Twilio status callback for a message that is not ours", metadata: ["sid": "\(sid)"])
    }
    return .init()
  }
}
