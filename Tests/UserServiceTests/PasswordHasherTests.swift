import Testing
import UserService

@Suite struct PasswordHasherTests {
  @Test func productionHashesAreStrongPHCStringsThatVerify() async throws {
    let hasher = PasswordHasher()
    #expect(hasher.cost == PasswordHasher.Cost(logN: 15, blockSize: 8, parallelism: 1))
    let hash = try await hasher.hash("correct horse battery staple")
    let parts = hash.split(separator: "$", omittingEmptySubsequences: false)
    #expect(parts.count == 5 && parts[1] == "scrypt" && parts[2] == "ln=15,r=8,p=1")
    #expect(parts.count == 5 && parts[3].count == 22 && parts[4].count == 43)
    #expect(await hasher.verify("correct horse battery staple", against: hash))
    #expect(!(await hasher.verify("correct horse battery stapl", against: hash)))
    #expect(!hasher.needsRehash(hash))
    // Two hashes of one password differ (random salt).
    let other = try await hasher.hash("correct horse battery staple")
    #expect(other != hash)
  }

  @Test func storedParametersAreHonouredAndWeakerHashesNeedARehash() async throws {
    let weak = try await PasswordHasher(cost: .testing).hash("a password")
    let strong = PasswordHasher()
    #expect(await strong.verify("a password", against: weak))
    #expect(strong.needsRehash(weak))
    #expect(!(await strong.verify("a password", against: "$scrypt$garbage")))
    #expect(!(await strong.verify("a password", against: "a password")))
  }

  /// RFC 7914 §12, second vector: scrypt("password", "NaCl", N=1024, r=8, p=16, 64 bytes).
  @Test func matchesTheRFCTestVector() async throws {
    let hash =
      "$scrypt$ln=10,r=8,p=16$TmFDbA$/bq+HJ00cgB4VucZDQHp/nxq18vII3gw53N2Y0s3MWIurzDZLiKjiG/xCSedmDDaxyevuUqD7m2DYMvfoswGQA"
    #expect(await PasswordHasher().verify("password", against: hash))
  }
}
