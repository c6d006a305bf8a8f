import Foundation
import MartCore
import NIOCore

// Who the client is, by address: the key of anonymous rate limiting, and what the user service
// throttles logins by (`x-mart-client-ip`). The peer of the TCP connection is the client unless it
// is one of our own proxies (`trustedProxies`, CIDR); only then is `X-Forwarded-For` believed, and
// only up to the first hop that is not ours (the right-most untrusted address), since everything
// left of it was written by the client. Addresses are parsed by MartRuntime's `IPAddress` (NIO's
// parser), the same one the user service uses.

/// Finds the client's address from the connection's peer and `X-Forwarded-For`.
struct ClientAddressResolver: Sendable {
  var trustedProxies: [IPNetwork]

  func isTrusted(_ address: IPAddress) -> Bool {
    trustedProxies.contains { $0.contains(address) }
  }

  /// The client's address; nil when the peer is unknown (not a socket, as in router tests).
  func clientAddress(peer: IPAddress?, forwardedFor: [String]) -> IPAddress? {
    guard var current = peer else { return nil }
    guard isTrusted(current) else { return current }
    let hops = forwardedFor.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
    for hop in hops.reversed() {
      // A hop that is not an address ends the trail: the last proxy is all we can vouch for.
      guard let address = IPAddress(hostPort: hop) else { return current }
      current = address
      if !isTrusted(address) { return address }
    }
    return current
  }

  static func address(of socketAddress: NIOCore.SocketAddress?) -> IPAddress? {
    socketAddress.flatMap { IPAddress($0) }
  }
}
