import Testing

@testable import Gateway

@Suite struct ClientAddressTests {
  func address(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }

  @Test func parsesAndPrintsAddresses() throws {
    #expect(try address("192.0.2.1").description == "192.0.2.1")
    #expect(try address("2001:db8:0:0:0:0:0:1").description == "2001:db8::1")
    #expect(try address("::1").description == "::1")
    #expect(try address("::ffff:192.0.2.1").description == "192.0.2.1", "IPv4-mapped is IPv4")
    #expect(try address("fe80::1%eth0").description == "fe80::1")
    for bad in ["", "1.2.3", "1.2.3.256", "01.2.3.4", "1:2:3:4:5:6:7:8:9", "::1::", "abc", "1.2.3.4:80"] {
      #expect(IPAddress(bad) == nil, "\(bad)")
    }
  }

  @Test func networksContainTheirAddresses() throws {
    let ten = try #require(IPNetwork("10.0.0.0/8"))
    #expect(ten.contains(try address("10.200.3.4")))
    #expect(!ten.contains(try address("11.0.0.1")))
    #expect(!ten.contains(try address("::1")))
    let odd = try #require(IPNetwork("192.168.1.128/25"))
    #expect(odd.contains(try address("192.168.1.200")))
    #expect(!odd.contains(try address("192.168.1.127")))
    let v6 = try #require(IPNetwork("fd00::/8"))
    #expect(v6.contains(try address("fd12:3456::1")))
    #expect(try #require(IPNetwork("127.0.0.1")).contains(try address("127.0.0.1")))
    #expect(IPNetwork("10.0.0.0/33") == nil)
    #expect(IPNetwork("10.0.0.0/x") == nil)
  }

  @Test func forwardedForIsBelievedOnlyFromTrustedProxies() throws {
    let resolver = ClientAddressResolver(trustedProxies: [try #require(IPNetwork("10.0.0.0/8"))])
    let proxy = try address("10.0.0.5")
    let outsider = try address("198.51.100.7")
    // A direct client cannot choose its address.
    #expect(resolver.clientAddress(peer: outsider, forwardedFor: ["1.1.1.1"]) == outsider)
    // Through our proxy: the right-most address that is not ours.
    #expect(resolver.clientAddress(peer: proxy, forwardedFor: ["203.0.113.9"])?.description == "203.0.113.9")
    #expect(
      resolver.clientAddress(peer: proxy, forwardedFor: ["6.6.6.6, 203.0.113.9, 10.1.1.1"])?.description
        == "203.0.113.9", "the spoofed left part is ignored")
    #expect(
      resolver.clientAddress(peer: proxy, forwardedFor: ["6.6.6.6", "203.0.113.9:4711"])?.description
        == "203.0.113.9", "several headers, ports")
    #expect(resolver.clientAddress(peer: proxy, forwardedFor: ["[2001:db8::7]:443"])?.description == "2001:db8::7")
    // Only proxies: the left-most one; garbage: the last address we can vouch for.
    #expect(resolver.clientAddress(peer: proxy, forwardedFor: ["10.9.9.9"])?.description == "10.9.9.9")
    #expect(resolver.clientAddress(peer: proxy, forwardedFor: ["garbage"]) == proxy)
    #expect(resolver.clientAddress(peer: proxy, forwardedFor: []) == proxy)
    #expect(resolver.clientAddress(peer: nil, forwardedFor: ["1.2.3.4"]) == nil)
    // Nothing trusted: never believed.
    let untrusting = ClientAddressResolver(trustedProxies: [])
    #expect(untrusting.clientAddress(peer: proxy, forwardedFor: ["1.2.3.4"]) == proxy)
  }
}
