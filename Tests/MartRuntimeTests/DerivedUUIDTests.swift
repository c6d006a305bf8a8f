import Foundation
import Testing

@testable import MartRuntime

@Suite struct DerivedUUIDTests {
  /// RFC 9562, appendix A.4: the DNS namespace and "www.example.com".
  @Test func matchesTheRFCVector() throws {
    let dns = try #require(UUID(uuidString: "6ba7b810-9dad-11d1-80b4-00c04fd430c8"))
    #expect(
      UUID(deriving: "www.example.com", namespace: dns).uuidString.lowercased()
        == "2ed6657d-e927-568b-95e1-2665a8aea6a2")
  }

  @Test func theSameNameGivesTheSameIDAndAnotherNameAnother() {
    #expect(UUID(deriving: "demo:1") == UUID(deriving: "demo:1"))
    #expect(UUID(deriving: "demo:1") != UUID(deriving: "demo:2"))
  }
}
