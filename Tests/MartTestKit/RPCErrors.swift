import GRPCCore
import GRPCProtobuf
import Testing

/// The gRPC error a call failed with; nil if it succeeded, and an issue if it failed otherwise.
public func rpcError(_ call: () async throws -> Void) async -> RPCError? {
  do {
    try await call()
    return nil
  } catch let error as RPCError {
    return error
  } catch {
    Issue.record("expected an RPCError, got \(error)")
    return nil
  }
}

/// The fields an INVALID_ARGUMENT error names (and an issue if the call did not fail so).
public func invalidFields(_ call: () async throws -> Void) async -> [String] {
  let error = await rpcError(call)
  #expect(error?.code == .invalidArgument)
  return fields(error)
}

/// The `google.rpc.Status` details of an error (unreadable details are an issue).
public func details(_ error: RPCError?) -> [ErrorDetails] {
  do {
    return try error?.unpackGoogleRPCStatus()?.details ?? []
  } catch {
    Issue.record("unreadable status details: \(error)")
    return []
  }
}

/// The `google.rpc.ErrorInfo` reason of an error.
public func reason(_ error: RPCError?) -> String? {
  details(error).compactMap(\.errorInfo).first?.reason
}

/// The fields a `google.rpc.BadRequest` detail names.
public func fields(_ error: RPCError?) -> [String] {
  details(error).compactMap(\.badRequest).flatMap { $0.violations.map(\.field) }
}
