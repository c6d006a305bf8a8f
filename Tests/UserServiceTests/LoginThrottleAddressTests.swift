import MartCore
import Testing

@testable import UserService

/// The address the login throttle counts failures by: the gateway's word, else the connection's
/// peer (`ForwardedClient.clientAddress`), keyed with MartCore's one IP parser.
@Suite struct LoginThrottleAddressTests {
  @Test func theAddressTheGatewayVouchesForWinsThenThePeer() async {
    let peer = "ipv4:127.0.0.1:31415"
    let vouched = ForwardedClient.$address.withValue(IPAddress("203.0.113.9")) {
      ForwardedClient.clientAddress(peer: peer)
    }
    #expect(vouched == IPAddress("203.0.113.9"))
    #expect(ForwardedClient.clientAddress(peer: peer) == IPAddress("127.0.0.1"))
    #expect(ForwardedClient.clientAddress(peer: "in-process:42") == nil)
  }

  @Test func anIPv6ClientCountsByItsSlash64AndAMappedOneAsIPv4() throws {
    func key(_ text: String) throws -> String { ClientAddress.key(try #require(IPAddress(text))) }
    #expect(try key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64")
    #expect(try key("2001:db8:1:2::7") == key("2001:db8:1:2:ffff::1"))
    #expect(try key("::ffff:192.0.2.1") == "192.0.2.1")
  }

  @Test func grpcPeerDescriptions() {
    #expect(IPAddress(grpcPeer: "ipv4:192.0.2.1:5000") == IPAddress("192.0.2.1"))
    #expect(IPAddress(grpcPeer: "ipv6:[2001:db8::1]:443") == IPAddress("2001:db8::1"))
    #expect(IPAddress(grpcPeer: "ipv6:[::ffff:127.0.0.1]:443").map(ClientAddress.key) == "127.0.0.1")
    #expect(IPAddress(grpcPeer: "unix:/tmp/socket") == nil)
    #expect(IPAddress(grpcPeer: "ipv4:garbage:1") == nil)
    #expect(IPAddress(grpcPeer: "in-process:payment") == nil)
  }
}
