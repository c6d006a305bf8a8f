import GRPCCore
import Metrics

/// RED metrics of a service's RPCs, through swift-metrics (Prometheus at `mart serve`'s metrics
/// port): `mart_rpc_server_requests_total{service,method,code}` (rate and errors, by gRPC status
/// code name) and `mart_rpc_server_duration_seconds{service,method}` (duration). It sits outside
/// the status mapping, so that it counts the code the client gets. A server stream counts when it
/// is accepted, with the time to its first answer.
struct RPCMetricsInterceptor: ServerInterceptor {
  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let started = ContinuousClock.now
    let service = context.descriptor.service.fullyQualifiedService
    let method = context.descriptor.method
    var code = "ok"
    defer {
      Counter(
        label: "mart_rpc_server_requests_total", dimensions: [("service", service), ("method", method), ("code", code)]
      ).increment()
      Timer(label: "mart_rpc_server_duration_seconds", dimensions: [("service", service), ("method", method)])
        .recordInterval(since: started)
    }
    do {
      let response = try await next(request, context)
      if case .failure(let error) = response.accepted { code = Self.name(error.code) }
      return response
    } catch let error as RPCError {
      code = Self.name(error.code)
      throw error
    } catch {
      code = Self.name((error as? any RPCErrorConvertible)?.rpcErrorCode ?? .unknown)
      throw error
    }
  }

  /// `not_found`, `unavailable`: the code's name in Prometheus' label style.
  static func name(_ code: RPCError.Code) -> String {
    var name = ""
    for character in String(describing: code) {
      if character.isUppercase, !name.isEmpty { name.append("_") }
      name.append(Character(character.lowercased()))
    }
    return name
  }
}
