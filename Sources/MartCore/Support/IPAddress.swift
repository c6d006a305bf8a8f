import NIOCore

// The mart's one IP address parser, for every place that reads an address from text: the
// gateway's `X-Forwarded-For` and `trustedProxies`, the user service's `x-mart-client-ip` and
// gRPC peer. Parsing and printing are NIO's (`SocketAddress(ipAddress:port:)`, which is
// `inet_pton`, and `ipAddress`, which is `inet_ntop`), so that no hand-written parser can disagree
// with the C library about what an address is.

/// An IPv4 or IPv6 address. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is its IPv4 address:
/// a dual-stack socket reports IPv4 clients that way, and they must count as one client.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
  /// 4 or 16 bytes, in network order.
  public let bytes: [UInt8]
  /// `inet_ntop`'s form: `192.0.2.1`, `2001:db8::1` (RFC 5952, lower case, longest zero run `::`).
  public let description: String

  /// `192.0.2.1`, `2001:db8::1`, `::ffff:192.0.2.1`, `fe80::1%eth0`; nil for anything else
  /// (a port, brackets, white space, leading zeros in IPv4).
  public init?(_ text: some StringProtocol) {
    var text = String(text)
    // A zone names an interface of the host that wrote the address; it does not change which
    // host the address is, and no interface of ours is meant. NIO would look the interface up.
    if let percent = text.firstIndex(of: "%") {
      guard text.contains(":"), text.index(after: percent) != text.endIndex else { return nil }
      text = String(text[..<percent])
    }
    guard let address = try? NIOCore.SocketAddress(ipAddress: text, port: 0) else { return nil }
    self.init(address)
  }

  /// The address of an IP socket address; nil for a Unix domain socket.
  public init?(_ socketAddress: NIOCore.SocketAddress) {
    var bytes: [UInt8]
    switch socketAddress {
    case .v4(let address):
      bytes = withUnsafeBytes(of: address.address.sin_addr) { Array($0) }
    case .v6(let address):
      bytes = withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
      if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
        bytes = Array(bytes[12...])
      }
    case .unixDomainSocket:
      return nil
    }
    self.init(bytes: bytes)
  }

  /// 4 or 16 bytes in network order; nil for any other count.
  public init?(bytes: [UInt8]) {
    guard bytes.count == 4 || bytes.count == 16,
      let printed = try? NIOCore.SocketAddress(packedIPAddress: ByteBuffer(bytes: bytes), port: 0).ipAddress
    else { return nil }
    self.bytes = bytes
    self.description = printed
  }

  /// The address in a grpc-swift peer description (`ipv4:192.0.2.1:5678`, `ipv6:[2001:db8::1]:443`);
  /// nil for another kind of peer (`in-process:…`, `unix:…`).
  public init?(grpcPeer peer: String) {
    for scheme in ["ipv4:", "ipv6:"] where peer.hasPrefix(scheme) {
      guard let address = IPAddress(hostPort: peer.dropFirst(scheme.count)) else { return nil }
      self = address
      return
    }
    return nil
  }

  /// An address with an optional port, as proxies write them in `X-Forwarded-For` and gRPC in its
  /// peer descriptions: `192.0.2.1`, `192.0.2.1:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
  public init?(hostPort text: some StringProtocol) {
    let text = Substring(text)
    if let address = IPAddress(text) {
      self = address
    } else if text.hasPrefix("["), let close = text.firstIndex(of: "]"),
      let address = IPAddress(text.dropFirst()[..<close])
    {
      self = address
    } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon,
      let address = IPAddress(text[..<colon])
    {
      // One colon: IPv4 with a port (an IPv6 address has at least two).
      self = address
    } else {
      return nil
    }
  }

  public var isIPv4: Bool { bytes.count == 4 }
}

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
  /// The block's first address (host bits zero).
  public let address: IPAddress
  public let prefixLength: Int

  /// `10.0.0.0/8`, `2001:db8::/32`, `::1`. Host bits after the prefix are ignored
  /// (`10.1.2.3/8` is `10.0.0.0/8`).
  public init?(_ text: some StringProtocol) {
    let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
    guard let address = IPAddress(parts[0]) else { return nil }
    let bits = address.bytes.count * 8
    var prefixLength = bits
    if parts.count == 2 {
      guard parts[1].utf8.allSatisfy({ (0x30...0x39).contains($0) }), let length = Int(parts[1]),
        (0...bits).contains(length)
      else { return nil }
      prefixLength = length
    }
    self.init(containing: address, prefixLength: prefixLength)
  }

  /// The block of `prefixLength` bits around `address` (clamped to the address's size): an IPv6
  /// client by its /64, which one subscriber usually holds whole.
  public init(containing address: IPAddress, prefixLength: Int) {
    let length = min(max(0, prefixLength), address.bytes.count * 8)
    let masked = zip(address.bytes, Self.mask(length, bytes: address.bytes.count)).map { $0 & $1 }
    self.address = IPAddress(bytes: masked) ?? address
    self.prefixLength = length
  }

  public var description: String { "\(address)/\(prefixLength)" }

  /// What a quota or a throttle keys a client by: an IPv4 address as itself, an IPv6 address as
  /// its /64 (`2001:db8:1:2::/64`), which one subscriber usually holds whole, so that rotating
  /// addresses inside it escapes nothing.
  public static func subscriberKey(_ address: IPAddress) -> String {
    address.isIPv4 ? address.description : IPNetwork(containing: address, prefixLength: 64).description
  }

  /// Whether `candidate` is in the block (never across address families).
  public func contains(_ candidate: IPAddress) -> Bool {
    guard candidate.bytes.count == address.bytes.count else { return false }
    let mask = Self.mask(prefixLength, bytes: address.bytes.count)
    return zip(zip(address.bytes, candidate.bytes), mask).allSatisfy { pair, mask in pair.0 & mask == pair.1 & mask }
  }

  /// `length` one-bits, then zeros, over `bytes` bytes.
  private static func mask(_ length: Int, bytes: Int) -> [UInt8] {
    (0..<bytes).map { index in
      let bits = min(8, max(0, length - index * 8))
      return UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
    }
  }
}
