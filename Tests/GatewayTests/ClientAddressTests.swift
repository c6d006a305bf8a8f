import MartRuntime
import Testing

@testable import Gateway

/// Whose address a request is: `X-Forwarded-For` only through our own proxies. (The parser
/// itself is MartRuntime's; its tests are in IPAddressTests.)
@Suite struct ClientAddressTests {
  func address(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }

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
