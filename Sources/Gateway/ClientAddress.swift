import Foundation
import NIOCore

// Who the client is, by address: the key of anonymous rate limiting, and what the user service
// throttles logins by (`x-mart-client-ip`). The peer of the TCP connection is the client unless it
// is one of our own proxies (`trustedProxies`, CIDR); only then is `X-Forwarded-For` believed, and
// only up to the first hop that is not ours (the right-most untrusted address), since everything
// left of it was written by the client.

/// An IPv4 or IPv6 address (IPv4-mapped IPv6 addresses are IPv4).
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
  /// 4 or 16 bytes.
  public let bytes: [UInt8]

  public init?(_ text: some StringProtocol) {
    let text = String(text)
    if let v4 = Self.parseIPv4(text) {
      bytes = v4
    } else if let v6 = Self.parseIPv6(text) {
      if v6[0..<10].allSatisfy({ $0 == 0 }) && v6[10] == 0xFF && v6[11] == 0xFF {
        bytes = Array(v6[12...])
      } else {
        bytes = v6
      }
    } else {
      return nil
    }
  }

  public var isIPv4: Bool { bytes.count == 4 }

  public var description: String {
    if isIPv4 { return bytes.map(String.init).joined(separator: ".") }
    var groups: [UInt16] = []
    for index in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1])) }
    // RFC 5952: the longest run (≥ 2) of zero groups becomes "::".
    var best: Range<Int>?
    var index = 0
    while index < 8 {
      guard groups[index] == 0 else {
        index += 1
        continue
      }
      var end = index
      while end < 8 && groups[end] == 0 { end += 1 }
      if end - index >= 2 && (best == nil || end - index > (best?.count ?? 0)) { best = index..<end }
      index = end
    }
    let hex = groups.map { String($0, radix: 16) }
    guard let best else { return hex.joined(separator: ":") }
    return hex[..<best.lowerBound].joined(separator: ":") + "::" + hex[best.upperBound...].joined(separator: ":")
  }

  private static func parseIPv4(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 4 else { return nil }
    var bytes: [UInt8] = []
    for part in parts {
      guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
        part.count == 1 || part.first != "0", let value = UInt8(part)
      else { return nil }
      bytes.append(value)
    }
    return bytes
  }

  private static func parseIPv6(_ text: String) -> [UInt8]? {
    var text = Substring(text)
    // A zone (fe80::1%eth0) does not change which host it is.
    if let percent = text.firstIndex(of: "%") { text = text[..<percent] }
    guard text.contains(":") else { return nil }
    let halves = text.components(separatedBy: "::")
    guard halves.count <= 2 else { return nil }
    func groups(_ part: String) -> [UInt8]? {
      guard !part.isEmpty else { return [] }
      var bytes: [UInt8] = []
      let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
      for (index, piece) in pieces.enumerated() {
        if index == pieces.count - 1, piece.contains("."), let v4 = parseIPv4(String(piece)) {
          bytes += v4
          continue
        }
        guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
        bytes += [UInt8(value >> 8), UInt8(value & 0xFF)]
      }
      return bytes
    }
    if halves.count == 1 {
      guard let all = groups(halves[0]), all.count == 16 else { return nil }
      return all
    }
    guard let head = groups(halves[0]), let tail = groups(halves[1]), head.count + tail.count <= 14 else {
      return nil
    }
    return head + Array(repeating: 0, count: 16 - head.count - tail.count) + tail
  }
}

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
  public let address: IPAddress
  public let prefixLength: Int

  public init?(_ text: some StringProtocol) {
    let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
    guard let address = IPAddress(parts[0]) else { return nil }
    let bits = address.bytes.count * 8
    if parts.count == 2 {
      guard let length = Int(parts[1]), (0...bits).contains(length) else { return nil }
      prefixLength = length
    } else {
      prefixLength = bits
    }
    self.address = address
  }

  public var description: String { "\(address)/\(prefixLength)" }

  public func contains(_ candidate: IPAddress) -> Bool {
    guard candidate.bytes.count == address.bytes.count else { return false }
    var remaining = prefixLength
    for (mine, theirs) in zip(address.bytes, candidate.bytes) {
      guard remaining > 0 else { return true }
      let bits = min(8, remaining)
      let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
      guard mine & mask == theirs & mask else { return false }
      remaining -= bits
    }
    return true
  }
}

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
      guard let address = Self.parseHop(hop) else { return current }
      current = address
      if !isTrusted(address) { return address }
    }
    return current
  }

  /// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
  static func parseHop(_ hop: String) -> IPAddress? {
    if let address = IPAddress(hop) { return address }
    if hop.hasPrefix("["), let close = hop.firstIndex(of: "]") {
      return IPAddress(hop[hop.index(after: hop.startIndex)..<close])
    }
    if let colon = hop.lastIndex(of: ":"), hop.firstIndex(of: ":") == colon {
      return IPAddress(hop[..<colon])
    }
    return nil
  }

  static func address(of socketAddress: SocketAddress?) -> IPAddress? {
    socketAddress?.ipAddress.flatMap { IPAddress($0) }
  }
}
