import Testing
import UserService

@Suite struct PasswordHasherTests {
  @Test func productionHashesAreStrongPHCStringsThatVerify() async throws {
    let hasher = PasswordHasher()
    // OWASP's minimum for scrypt: N = 2^17, r = 8, p = 1.
    #expect(hasher.cost == PasswordHasher.Cost(logN: 17, blockSize: 8, parallelism: 1))
    let hash = try await hasher.hash("correct horse battery staple")
    let parts = hash.split(separator: "$", omittingEmptySubsequences: false)
    #expect(parts.count == 5 && parts[1] == "scrypt" && parts[2] == "ln=17,r=8,p=1")
    #expect(parts.count == 5 && parts[3].count == 22 && parts[4].count == 43)
    #expect(try await hasher.verify("correct horse battery staple", against: hash))
    #expect(!(try await hasher.verify("correct horse battery stapl", against: hash)))
    #expect(!hasher.needsRehash(hash))
    // Two hashes of one password differ (random salt).
    let other = try await hasher.hash("correct horse battery staple")
    #expect(other != hash)
  }

  @Test func storedParametersAreHonouredAndWeakerHashesNeedARehash() async throws {
    let weak = try await PasswordHasher(cost: .testing).hash("a password")
    let strong = PasswordHasher()
    #expect(try await strong.verify("a password", against: weak))
    #expect(strong.needsRehash(weak))
    #expect(!(try await strong.verify("a password", against: "$scrypt$garbage")))
    #expect(!(try await strong.verify("a password", against: "a password")))
  }

  /// RFC 7914 §12, second vector: scrypt("password", "NaCl", N=1024, r=8, p=16, 64 bytes).
  @Test func matchesTheRFCTestVector() async throws {
    let hash =
      "$scrypt$ln=10,r=8,p=16$TmFDbA$/bq+HJ00cgB4VucZDQHp/nxq18vII3gw53N2Y0s3MWIurzDZLiKjiG/xCSedmDDaxyevuUqD7m2DYMvfoswGQA"
    #expect(try await PasswordHasher().verify("password", against: hash))
  }

  /// A burst beyond what the queue admits is refused at once with a time to retry, not queued
  /// without bound; what was admitted completes.
  @Test func aFullHashingQueueRefusesAtOnce() async throws {
    let queue = PasswordHashingQueue(concurrency: 1, maximumWaiting: 1)
    // 16 MiB and tens of milliseconds a hash: long enough that the burst arrives while the first
    // two are still admitted.
    let hasher = PasswordHasher(cost: .init(logN: 14, blockSize: 8, parallelism: 1), queue: queue)
    let outcomes = await withTaskGroup(of: String.self) { group in
      for index in 0..<24 {
        group.addTask {
          do {
            _ = try await hasher.hash("password \(index)")
            return "hashed"
          } catch let busy as PasswordHashingQueue.Busy {
            return busy.retryAfter >= .seconds(1) ? "busy" : "busy without a delay"
          } catch {
            return "\(error)"
          }
        }
      }
      var outcomes: [String] = []
      for await outcome in group { outcomes.append(outcome) }
      return outcomes
    }
    let hashed = outcomes.filter { $0 == "hashed" }.count
    let busy = outcomes.filter { $0 == "busy" }.count
    #expect(hashed >= 2 && busy >= 1 && hashed + busy == 24, "\(outcomes)")
    // Once drained, it admits again.
    _ = try await hasher.hash("after the burst")
  }
}
