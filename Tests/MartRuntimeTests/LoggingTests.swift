import Foundation
import Logging
import MartRuntime
import Synchronization
import Testing

@Suite struct LoggingTests {
  @Test func oneJSONObjectPerLineWithServiceAndRequestID() throws {
    let lines = Mutex<[String]>([])
    let sink = TextOutputStreamSink { line in lines.withLock { $0.append(line) } }
    let logger = Logger(label: "mart.test") { label in
      JSONLogHandler(label: label, service: "order", level: .info, stream: sink)
    }
    RequestContext.$requestID.withValue("req-42") {
      logger.info("order \"placed\"\nnext line", metadata: ["order_id": "o-1", "lines": ["a", "b"]])
    }
    logger.debug("not at this level")
    let written = lines.withLock { $0 }
    #expect(written.count == 1)
    let line = try #require(written.first)
    #expect(line.hasSuffix("}\n"))
    #expect(line.filter { $0 == "\n" }.count == 1)
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    #expect(object["service"] as? String == "order")
    #expect(object["level"] as? String == "info")
    #expect(object["msg"] as? String == "order \"placed\"\nnext line")
    #expect(object["request_id"] as? String == "req-42")
    #expect(object["order_id"] as? String == "o-1")
    #expect(object["lines"] as? [String] == ["a", "b"])
    #expect(object["ts"] is String)
  }

  @Test func traceIDsComeFromValidTraceparentsOnly() {
    #expect(
      RequestContext.traceID(fromTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        == "4bf92f3577b34da6a3ce929d0e0e4736")
    #expect(RequestContext.traceID(fromTraceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01") == nil)
    #expect(RequestContext.traceID(fromTraceparent: "garbage") == nil)
  }

  /// Only a W3C-valid traceparent is passed on into calls, events and log lines.
  @Test func onlyValidTraceparentsArePassedOn() {
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    #expect(RequestContext.validTraceparent(valid) == valid)
    // A later version may add fields after the flags.
    #expect(RequestContext.validTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x") != nil)
    for invalid in [
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // trace id all zeros
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // parent id all zeros
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // version 00 with more
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  // short parent id
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  // short flags
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  // no flags
      "garbage",
    ] {
      #expect(RequestContext.validTraceparent(invalid) == nil, "\(invalid)")
    }
  }
}
