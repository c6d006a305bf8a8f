import MartRuntime
import NIOCore
import Testing

/// The one IP address parser (NIO's `inet_pton`/`inet_ntop`): what it accepts, how it prints, and
/// CIDR blocks.
@Suite struct IPAddressTests {
  func address(_ text: String) throws -> IPAddress { try #require(IPAddress(text), "\(text)") }

  @Test func parsesAndPrintsIPv4AndIPv6() throws {
    #expect(try address("192.0.2.1").description == "192.0.2.1")
    #expect(try address("192.0.2.1").bytes == [192, 0, 2, 1])
    #expect(try address("192.0.2.1").isIPv4)
    #expect(try address("2001:db8:0:0:0:0:0:1").description == "2001:db8::1", "RFC 5952: the zero run is ::")
    #expect(try address("2001:DB8::A").description == "2001:db8::a", "lower case")
    #expect(try address("::1").description == "::1")
    #expect(try address("::").description == "::")
    #expect(try address("::1").bytes == Array(repeating: 0, count: 15) + [1])
    #expect(try !address("::1").isIPv4)
  }

  @Test func anIPv4MappedAddressIsItsIPv4Address() throws {
    #expect(try address("::ffff:192.0.2.1") == address("192.0.2.1"))
    #expect(try address("::ffff:c000:201").description == "192.0.2.1", "the same, in hex")
    // Only the ::ffff:0:0/96 prefix maps; an IPv4-compatible or NAT64 address stays IPv6.
    #expect(try address("64:ff9b::192.0.2.1").description == "64:ff9b::c000:201")
  }

  @Test func aZoneIsDroppedButOnlyFromIPv6() throws {
    #expect(try address("fe80::1%eth0").description == "fe80::1")
    #expect(try address("fe80::1%no-such-interface") == address("fe80::1"), "no interface is looked up")
    #expect(IPAddress("fe80::1%") == nil, "an empty zone")
    #expect(IPAddress("192.0.2.1%eth0") == nil, "IPv4 has no zones")
  }

  @Test func garbageIsNotAnAddress() {
    let garbage = [
      "", " ", "1.2.3", "1.2.3.256", "01.2.3.4", "1.2.3.4.5", "1:2:3:4:5:6:7:8:9", "::1::", "abc", "1.2.3.4:80",
      "[::1]", " 192.0.2.1", "192.0.2.1 ", "0x7f.0.0.1", "2001:db8::g", "12345::1", "localhost",
    ]
    for text in garbage {
      #expect(IPAddress(text) == nil, "\(text)")
    }
  }

  @Test func anAddressWithAPort() throws {
    let v4 = try address("192.0.2.1")
    let v6 = try address("2001:db8::7")
    #expect(IPAddress(hostPort: "192.0.2.1") == v4)
    #expect(IPAddress(hostPort: "192.0.2.1:4711") == v4)
    #expect(IPAddress(hostPort: "2001:db8::7") == v6)
    #expect(IPAddress(hostPort: "[2001:db8::7]:443") == v6)
    #expect(IPAddress(hostPort: "[::ffff:127.0.0.1]:80")?.description == "127.0.0.1")
    for text in ["", "garbage", "[2001:db8::7", "[garbage]:1", "host:80", "1.2.3.4:80:90"] {
      #expect(IPAddress(hostPort: text) == nil, "\(text)")
    }
  }

  @Test func socketAddressesOfBothFamilies() throws {
    let v4 = try SocketAddress(ipAddress: "127.0.0.1", port: 8000)
    #expect(IPAddress(v4)?.description == "127.0.0.1")
    let mapped = try SocketAddress(ipAddress: "::ffff:10.1.2.3", port: 8000)
    #expect(IPAddress(mapped)?.description == "10.1.2.3")
    let v6 = try SocketAddress(ipAddress: "2001:db8::1", port: 443)
    #expect(IPAddress(v6)?.description == "2001:db8::1")
    let unix = try SocketAddress(unixDomainSocketPath: "/tmp/mart.sock")
    #expect(IPAddress(unix) == nil)
    #expect(IPAddress(bytes: [1, 2, 3]) == nil)
  }

  @Test func networksContainTheirAddresses() throws {
    let ten = try #require(IPNetwork("10.0.0.0/8"))
    #expect(ten.contains(try address("10.200.3.4")))
    #expect(!ten.contains(try address("11.0.0.1")))
    #expect(!ten.contains(try address("::1")), "never across families")
    #expect(ten.contains(try address("::ffff:10.0.0.9")), "an IPv4-mapped client is IPv4")
    let odd = try #require(IPNetwork("192.168.1.128/25"))
    #expect(odd.contains(try address("192.168.1.200")))
    #expect(!odd.contains(try address("192.168.1.127")))
    let v6 = try #require(IPNetwork("fd00::/8"))
    #expect(v6.contains(try address("fd12:3456::1")))
    #expect(!v6.contains(try address("fe80::1")))
    let odd6 = try #require(IPNetwork("2001:db8::/33"))
    #expect(odd6.contains(try address("2001:db8:7fff::1")))
    #expect(!odd6.contains(try address("2001:db8:8000::1")))
    #expect(try #require(IPNetwork("127.0.0.1")).contains(try address("127.0.0.1")))
    #expect(try #require(IPNetwork("0.0.0.0/0")).contains(try address("203.0.113.9")))
    #expect(try #require(IPNetwork("::/0")).contains(try address("2001:db8::1")))
    #expect(IPNetwork("10.1.2.3/8")?.description == "10.0.0.0/8", "host bits are dropped")
    for bad in ["10.0.0.0/33", "10.0.0.0/x", "10.0.0.0/", "10.0.0.0/+8", "::/129", "garbage/8", "/8"] {
      #expect(IPNetwork(bad) == nil, "\(bad)")
    }
  }

  @Test func anIPv6ClientByItsSlash64() throws {
    let block = IPNetwork(containing: try address("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), prefixLength: 64)
    #expect(block.description == "2001:db8:1:2::/64")
    #expect(block.contains(try address("2001:db8:1:2::9")))
    #expect(!block.contains(try address("2001:db8:1:3::9")))
    #expect(IPNetwork(containing: try address("192.0.2.1"), prefixLength: 64).description == "192.0.2.1/32")
  }
}
