import MartCore
import Testing

@testable import UserService

/// The address the login throttle counts failures by, read with MartRuntime's one IP parser.
@Suite struct LoginThrottleAddressTests {
  @Test func theAddressTheGatewayVouchesForWinsThenThePeer() {
    let peer = "ipv4:127.0.0.1:31415"
    #expect(ClientAddress.resolve(forwarded: IPAddress("203.0.113.9"), peer: peer) == "203.0.113.9")
    #expect(ClientAddress.resolve(forwarded: nil, peer: peer) == "127.0.0.1")
    #expect(ClientAddress.resolve(forwarded: nil, peer: "in-process:42") == nil)
  }

  @Test func anIPv6ClientCountsByItsSlash64AndAMappedOneAsIPv4() {
    func resolve(_ text: String) -> String? { ClientAddress.resolve(forwarded: IPAddress(text), peer: "") }
    #expect(resolve("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64")
    #expect(resolve("2001:db8:1:2::7") == resolve("2001:db8:1:2:ffff::1"))
    #expect(resolve("::ffff:192.0.2.1") == "192.0.2.1")
  }

  @Test func grpcPeerDescriptions() {
    #expect(ClientAddress.normalize(fromPeer: "ipv4:192.0.2.1:5000") == "192.0.2.1")
    #expect(ClientAddress.normalize(fromPeer: "ipv6:[2001:db8::1]:443") == "2001:db8::/64")
    #expect(ClientAddress.normalize(fromPeer: "ipv6:[::ffff:127.0.0.1]:443") == "127.0.0.1")
    #expect(ClientAddress.normalize(fromPeer: "unix:/tmp/socket") == nil)
    #expect(ClientAddress.normalize(fromPeer: "ipv4:garbage:1") == nil)
  }
}
