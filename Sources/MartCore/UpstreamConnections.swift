import GRPCCore
import Synchronization

/// Several HTTP/2 connections to one service, each a `GRPCClient` of its own, and the choice of
/// one for each call.
///
/// Why more than one: the server side of grpc-swift-nio-transport runs swift-nio-http2 with its
/// default defence against HTTP/2 rapid reset (CVE-2023-44487): a client may send 200 RST_STREAM
/// frames in 30 s on one connection, and the next one closes the connection with GOAWAY
/// ENHANCE_YOUR_CALM, failing every stream still on it. The limit is per connection and the
/// transport does not let a server change it. Every call its caller gives up on is one
/// RST_STREAM: a watch whose HTTP client left once the order was paid, a deadline that passed.
/// At a thousand customers the gateway gives up on far more than 6.7 calls a second to the order
/// service, so one connection was closed again and again under the watches of everyone else.
///
/// So a caller that gives up on many calls (the gateway) spreads them: each call goes to the
/// connection with the least load, where load is the calls open on it plus the calls given up on
/// it within the server's window. A connection's load bounds what it can be sent in RST_STREAMs
/// over the next 30 s, and the least loaded of `count` connections stays far under the limit
/// until the whole group nears `count` × 200.
public final class UpstreamConnections<Transport: ClientTransport>: Sendable {
  /// One connection and what is known of its load.
  struct Member: Sendable {
    let client: GRPCClient<Transport>
    let load: ConnectionLoad
  }

  let members: [Member]
  private let nextTie = Atomic<Int>(0)

  init(_ clients: [GRPCClient<Transport>]) {
    precondition(!clients.isEmpty, "a service needs at least one connection")
    self.members = clients.map { Member(client: $0, load: ConnectionLoad()) }
  }

  var clients: [GRPCClient<Transport>] { members.map(\.client) }

  /// The least loaded connection; among equals, the next one in turn.
  func leastLoaded(now: ContinuousClock.Instant = .now) -> Member {
    if members.count == 1 { return members[0] }
    let start = nextTie.wrappingAdd(1, ordering: .relaxed).oldValue
    var best = members[Int(UInt(bitPattern: start) % UInt(members.count))]
    var bestLoad = best.load.current(now: now)
    for offset in 1..<members.count {
      let member = members[Int(UInt(bitPattern: start &+ offset) % UInt(members.count))]
      let load = member.load.current(now: now)
      if load < bestLoad {
        best = member
        bestLoad = load
      }
    }
    return best
  }
}

/// The calls open on one connection, and when calls on it were given up (each an RST_STREAM the
/// server counts), kept for the server's window.
final class ConnectionLoad: Sendable {
  /// swift-nio-http2's window for RST_STREAM frames (`DOSHeuristics`), with a margin for the
  /// two ends' clocks.
  static let resetWindow = Duration.seconds(35)

  private struct State {
    var open = 0
    /// When each recent give-up happened, oldest first.
    var resets: [ContinuousClock.Instant] = []
    var firstLive = 0

    mutating func prune(now: ContinuousClock.Instant) {
      while firstLive < resets.count, now - resets[firstLive] > ConnectionLoad.resetWindow { firstLive += 1 }
      // Compact now and then rather than on every call.
      if firstLive > 256 && firstLive * 2 > resets.count {
        resets.removeFirst(firstLive)
        firstLive = 0
      }
    }
  }

  private let state = Mutex(State())

  /// Open calls plus recent give-ups.
  func current(now: ContinuousClock.Instant) -> Int {
    state.withLock { state in
      state.prune(now: now)
      return state.open + state.resets.count - state.firstLive
    }
  }

  /// Give-ups within the window: what the server has counted of this connection, at most.
  func recentResets(now: ContinuousClock.Instant = .now) -> Int {
    state.withLock { state in
      state.prune(now: now)
      return state.resets.count - state.firstLive
    }
  }

  func opened() {
    state.withLock { $0.open += 1 }
  }

  func closed(gaveUp: Bool, now: ContinuousClock.Instant = .now) {
    state.withLock { state in
      state.open -= 1
      if gaveUp {
        state.prune(now: now)
        state.resets.append(now)
      }
    }
  }

  /// Whether a call that ended this way made its client reset the stream: the caller stopped
  /// (cancelled, or left the response unread), or a deadline ended it. A status the server sent
  /// ended the stream from its side; counting the rare server-sent CANCELLED or
  /// DEADLINE_EXCEEDED too only errs towards spreading more.
  static func gaveUp(after error: (any Error)?) -> Bool {
    if Task.isCancelled { return true }
    guard let error else { return false }
    guard let rpcError = error as? RPCError else { return true }
    return rpcError.code == .cancelled || rpcError.code == .deadlineExceeded
  }
}
