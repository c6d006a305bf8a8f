import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartCore
import NIOCore
import PostgresNIO

extension APIStatus {
  /// What a handler threw, as the status the client gets: statuses, and errors that say their own
  /// status (`RPCErrorConvertible`, e.g. a full password-hashing queue), pass as they are (also
  /// from inside a transaction), a cancelled call is CANCELLED, an unreachable database is UNAVAILABLE
  /// with RetryInfo (the client may retry; the gateway says `Retry-After`), anything else INTERNAL without detail for the client. The last two
  /// are logged here, with `redactedDescription`, so that no handler has to.
  public static func mapped(_ error: any Error, method: String, logger: Logger) -> RPCError {
    // The call was cancelled (its caller went away, or its deadline passed:
    // `RPCCancellationInterceptor`), so whatever the handler was waiting on failed with it: a
    // CancellationError inside a transaction, or postgres-nio's pool refusing a cancelled lease.
    // Neither is a fault of ours, and the caller no longer listens.
    if Task.isCancelled || error.unwrappingTransactionError is CancellationError {
      return RPCError(code: .cancelled, message: "the call was cancelled")
    }
    switch error {
    case let rpcError as RPCError: return rpcError.withoutTransportMetadata
    case let convertible as any RPCErrorConvertible: return RPCError(convertible)
    // A streaming call whose client went away (a watcher that stopped watching): the write that
    // found its stream closed is the end of the call, not a fault of ours.
    case let channelError as ChannelError where channelError == .ioOnClosedChannel:
      return RPCError(code: .cancelled, message: "the caller went away")
    default: break
    }
    let unwrapped = error.unwrappingTransactionError
    if let rpcError = unwrapped as? RPCError { return rpcError.withoutTransportMetadata }
    if let convertible = unwrapped as? any RPCErrorConvertible { return RPCError(convertible) }
    if error.isDatabaseUnavailable {
      logger.warning(
        "database unavailable", metadata: ["method": "\(method)", "error": "\(redactedDescription(of: unwrapped))"])
      return RPCError(databaseUnavailable)
    }
    logger.error("internal error", metadata: ["method": "\(method)", "error": "\(redactedDescription(of: unwrapped))"])
    return RPCError(code: .internalError, message: "internal error")
  }

  /// An error for a log line or an operator, without a failed statement's bound values (they can
  /// be password or token hashes, emails, addresses), which `String(reflecting:)` of a PSQLError
  /// would print. The SQL text itself is ours and safe to show.
  public static func redactedDescription(of error: any Error) -> String {
    let error = error.unwrappingTransactionError
    guard let psql = error as? PSQLError else { return String(describing: error) }
    var parts = ["PSQLError \(psql.code)"]
    if let state = psql.serverInfo?[.sqlState] { parts.append("sqlstate \(state)") }
    if let message = psql.serverInfo?[.message] { parts.append(message) }
    if let constraint = psql.serverInfo?[.constraintName] { parts.append("constraint \(constraint)") }
    if let sql = psql.query?.sql {
      parts.append("in: \(sql.split(whereSeparator: \.isNewline).joined(separator: " "))")
    }
    return parts.joined(separator: "; ")
  }
}

/// Turns whatever a handler throws into the status its client gets (`APIStatus.mapped`), for every
/// method of a server, keyed on `context.descriptor`: handlers throw directly and never name
/// themselves. For a streaming response the producer is wrapped too, because a streaming handler
/// fails there, after `next` has returned. Listed after `RequestContextInterceptor` (so its log
/// lines carry the request id) and before `ServerAuthInterceptor`.
public struct StatusMappingInterceptor: ServerInterceptor {
  let logger: Logger

  public init(logger: Logger) {
    self.logger = logger
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let method = context.descriptor.method
    let logger = logger
    var response: StreamingServerResponse<Output>
    do {
      response = try await next(request, context)
    } catch {
      throw APIStatus.mapped(error, method: method, logger: logger)
    }
    switch response.accepted {
    case .failure(let error):
      // What a later interceptor or the handler threw reaches us already as a response: grpc's
      // executor catches it at each interceptor and wraps anything that is not a status as
      // UNKNOWN with the original as its cause. Map that cause as if it had been thrown here.
      if error.code == .unknown, let cause = error.cause, !(cause is RPCError) {
        response.accepted = .failure(APIStatus.mapped(cause, method: method, logger: logger))
      } else {
        response.accepted = .failure(error.withoutTransportMetadata)
      }
    case .success(var contents):
      let produce = contents.producer
      contents.producer = { writer in
        do {
          return try await produce(writer)
        } catch {
          throw APIStatus.mapped(error, method: method, logger: logger)
        }
      }
      response.accepted = .success(contents)
    }
    return response
  }
}

extension RPCError {
  /// The error as this service answers it: its code, message and `google.rpc` details, without
  /// the transport's entries an upstream call's error carries (the other service's trailers, or
  /// the headers of its trailers-only response). Passed on, a second `content-type` or
  /// `grpc-status` among our trailers breaks the response, and the caller sees UNAVAILABLE
  /// instead of, say, the upstream's NOT_FOUND.
  public var withoutTransportMetadata: RPCError {
    var kept = Metadata()
    for entry in metadata {
      let key = entry.key.lowercased()
      let transport =
        key.hasPrefix(":") || key == "content-type" || key == "te" || key == "user-agent"
        || (key.hasPrefix("grpc-") && key != "grpc-status-details-bin")
      guard !transport else { continue }
      switch entry.value {
      case .string(let value): kept.addString(value, forKey: entry.key)
      case .binary(let value): kept.addBinary(value, forKey: entry.key)
      }
    }
    return RPCError(code: code, message: message, metadata: kept, cause: cause)
  }
}

extension Error {
  /// The SQLSTATE of a failed statement (e.g. `23505` unique violation), if that is what this is.
  public var postgresSQLState: String? {
    (unwrappingTransactionError as? PSQLError)?.serverInfo?[.sqlState]
  }

  /// The constraint a failed statement violated, if the server named one.
  public var postgresConstraint: String? {
    (unwrappingTransactionError as? PSQLError)?.serverInfo?[.constraintName]
  }
}
