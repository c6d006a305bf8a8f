import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOPosix
import Testing

@testable import Gateway

/// Slow clients (slowloris) against the live gateway over real sockets: whatever a client holds a
/// connection with, a head that never ends, nothing at all, or a body that trickles, the server
/// closes it once its timeout has passed. The timeouts are short here; no test asserts how fast
/// the close comes, only that it comes before a generous give-up (which only a gateway without the
/// timeout reaches).
@Suite struct SlowClientTests {
  static let never: Duration = .seconds(3600)
  static let short: Duration = .milliseconds(300)

  @Test func aRequestHeadSentAByteAtATimeIsCutOffAfterTheHeaderTimeout() async throws {
    var timeouts = ConnectionTimeouts()
    (timeouts.header, timeouts.idle, timeouts.body) = (Self.short, Self.never, Self.never)
    try await withGateway(.live, timeouts: timeouts) { _, client in
      // An ordinary request on the same server is answered as always.
      #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok)
      let port = try #require(client.port)
      let closed = try await serverCloses(
        port: port, sending: "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", thenEveryTenthOfASecond: "a")
      #expect(closed, "the server still holds a connection whose head never ends")
    }
  }

  @Test func aConnectionThatSendsNothingIsClosedAfterTheIdleTimeout() async throws {
    var timeouts = ConnectionTimeouts()
    (timeouts.header, timeouts.idle, timeouts.body) = (Self.never, Self.short, Self.never)
    try await withGateway(.live, timeouts: timeouts) { _, client in
      let port = try #require(client.port)
      #expect(try await serverCloses(port: port, sending: "", thenEveryTenthOfASecond: nil))
    }
  }

  @Test func aBodySentAByteAtATimeIsCutOffAfterTheBodyTimeout() async throws {
    var timeouts = ConnectionTimeouts()
    (timeouts.header, timeouts.idle, timeouts.body) = (Self.never, Self.never, Self.short)
    try await withGateway(.live, timeouts: timeouts) { _, client in
      let port = try #require(client.port)
      let head =
        "POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + "Content-Length: 1000\r\n\r\n{"
      // Each byte is a body part of its own, which is what keeps the idle timeout from firing.
      #expect(try await serverCloses(port: port, sending: head, thenEveryTenthOfASecond: " "))
    }
  }
}

/// Connects to the gateway on loopback, sends `opening`, then `trickle` every 100 ms; true once
/// the server ends the connection (whatever it sends first), false if it still holds it after a
/// minute.
private func serverCloses(port: Int, sending opening: String, thenEveryTenthOfASecond trickle: String?)
  async throws -> Bool
{
  let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
    .connect(host: "localhost", port: port) { channel in
      channel.eventLoop.makeCompletedFuture {
        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
      }
    }
  return try await channel.executeThenClose { inbound, outbound in
    if !opening.isEmpty { try await outbound.write(ByteBuffer(string: opening)) }
    return await withTaskGroup(of: Bool.self) { group in
      group.addTask {
        // The stream ends, or fails (a reset), only when the server lets go of the connection.
        do { for try await _ in inbound {} } catch {}
        return true
      }
      group.addTask {
        let giveUp = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < giveUp {
          guard (try? await Task.sleep(for: .milliseconds(100))) != nil else { return false }
          // A write after the server closed may fail; the reader above notices the close.
          if let trickle { try? await outbound.write(ByteBuffer(string: trickle)) }
        }
        return false
      }
      let first = await group.next() ?? false
      group.cancelAll()
      return first
    }
  }
}
