import Foundation
import GRPCCore
import MartProto
import Synchronization

public typealias HealthStatus = Grpc_Health_V1_HealthCheckResponse.ServingStatus

/// The serving status of each gRPC service in a process, with watchers for `Health/Watch`.
///
/// The empty service name ("") stands for the whole server, as `grpc.health.v1` specifies.
public final class HealthStatusBoard: Sendable {
  private struct State {
    var statuses: [String: HealthStatus] = [:]
    var watchers: [String: [UUID: AsyncStream<HealthStatus>.Continuation]] = [:]
  }

  private let state = Mutex(State())

  public init() {}

  public func setStatus(_ status: HealthStatus, for service: String) {
    let continuations = state.withLock { state -> [AsyncStream<HealthStatus>.Continuation] in
      guard state.statuses[service] != status else { return [] }
      state.statuses[service] = status
      return Array((state.watchers[service] ?? [:]).values)
    }
    for continuation in continuations { continuation.yield(status) }
  }

  /// The status of a service, or nil when it is not registered here.
  public func status(for service: String) -> HealthStatus? {
    state.withLock { $0.statuses[service] }
  }

  /// Every registered service and its status.
  public func allStatuses() -> [String: HealthStatus] {
    state.withLock { $0.statuses }
  }

  /// Every change of a service's status, starting with the current one
  /// (`SERVICE_UNKNOWN` while the service is not registered).
  public func watch(_ service: String) -> AsyncStream<HealthStatus> {
    let id = UUID()
    let (stream, continuation) = AsyncStream.makeStream(
      of: HealthStatus.self, bufferingPolicy: .bufferingNewest(1))
    let current = state.withLock { state -> HealthStatus in
      state.watchers[service, default: [:]][id] = continuation
      return state.statuses[service] ?? .serviceUnknown
    }
    continuation.yield(current)
    continuation.onTermination = { [weak self] _ in
      self?.state.withLock { _ = $0.watchers[service]?.removeValue(forKey: id) }
    }
    return stream
  }

  /// How many `watch` streams are open (tests check that abandoned ones end).
  package var watcherCount: Int {
    state.withLock { $0.watchers.values.reduce(0) { $0 + $1.count } }
  }

  /// Ends every watch (used when the server shuts down).
  public func finishWatchers() {
    let continuations = state.withLock { state in
      defer { state.watchers = [:] }
      return state.watchers.values.flatMap(\.values)
    }
    for continuation in continuations { continuation.finish() }
  }
}

/// The standard `grpc.health.v1.Health` service over a ``HealthStatusBoard``.
public struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
  public let board: HealthStatusBoard

  public init(board: HealthStatusBoard) {
    self.board = board
  }

  public func check(
    request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext
  ) async throws -> Grpc_Health_V1_HealthCheckResponse {
    guard let status = board.status(for: request.service) else {
      throw RPCError(code: .notFound, message: "unknown service \(request.service)")
    }
    return .with { $0.status = status }
  }

  public func list(
    request: Grpc_Health_V1_HealthListRequest, context: ServerContext
  ) async throws -> Grpc_Health_V1_HealthListResponse {
    .with { response in
      response.statuses = board.allStatuses().mapValues { status in .with { $0.status = status } }
    }
  }

  public func watch(
    request: Grpc_Health_V1_HealthCheckRequest,
    response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
    context: ServerContext
  ) async throws {
    for await status in board.watch(request.service) {
      try await response.write(.with { $0.status = status })
    }
  }
}
