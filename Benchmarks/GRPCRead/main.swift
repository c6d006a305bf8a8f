// The direct-gRPC leg of the gateway benchmark (`scripts/bench-gateway.sh`): the same
// authenticated read the gateway serves (UserService.GetMe), called straight over gRPC with
// HTTP/2 multiplexing, so that the gateway's cost can be read off the difference.
//
// Environment: BENCH_TARGET (host:port of the user service), BENCH_TOKEN (a bearer token),
// BENCH_CONNECTIONS (concurrent callers, default 32), BENCH_SECONDS (default 15).
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MartProto

@main
struct GRPCReadBenchmark {
  static func main() async throws {
    let env = ProcessInfo.processInfo.environment
    let target = env["BENCH_TARGET"] ?? "127.0.0.1:8006"
    guard let token = env["BENCH_TOKEN"], !token.isEmpty else {
      FileHandle.standardError.write(Data("BENCH_TOKEN is required\n".utf8))
      exit(2)
    }
    let callers = Int(env["BENCH_CONNECTIONS"] ?? "") ?? 32
    let seconds = Int(env["BENCH_SECONDS"] ?? "") ?? 15
    let parts = target.split(separator: ":")
    guard parts.count == 2, let port = Int(parts[1]) else {
      FileHandle.standardError.write(Data("BENCH_TARGET must be host:port\n".utf8))
      exit(2)
    }
    let client = GRPCClient(
      transport: try .http2NIOPosix(target: .dns(host: String(parts[0]), port: port), transportSecurity: .plaintext))
    var metadata = Metadata()
    metadata.addString("Bearer \(token)", forKey: "authorization")
    let requestMetadata = metadata

    let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
      group.addTask {
        try await client.runConnections()
        return []
      }
      let users = Mart_User_V1_UserService.Client(wrapping: client)
      // Warm the connection and check the token before timing anything.
      _ = try await users.getMe(Mart_User_V1_GetMeRequest(), metadata: requestMetadata)
      let clock = ContinuousClock()
      let deadline = clock.now + .seconds(seconds)
      var workers: [Task<[Double], any Error>] = []
      for _ in 0..<callers {
        workers.append(
          Task {
            var samples: [Double] = []
            while clock.now < deadline {
              let start = clock.now
              _ = try await users.getMe(Mart_User_V1_GetMeRequest(), metadata: requestMetadata)
              let elapsed = clock.now - start
              samples.append(
                Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
            }
            return samples
          })
      }
      var all: [Double] = []
      for worker in workers { all += try await worker.value }
      client.beginGracefulShutdown()
      for try await part in group { all += part }
      return all
    }
    let sorted = latencies.sorted()
    func percentile(_ p: Double) -> Double {
      sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }
    let rate = Double(sorted.count) / Double(seconds)
    print(
      String(
        format: "grpc-direct GetMe: %.0f req/s, p50 %.2f ms, p99 %.2f ms (%d callers, %d s, %d calls)", rate,
        percentile(0.50), percentile(0.99), callers, seconds, sorted.count))
  }
}
