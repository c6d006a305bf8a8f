import GRPCCore
import GRPCProtobuf
import Logging
import MartTestSupport
import Synchronization
import Testing

@testable import MartRuntime

/// One interceptor turns whatever a handler throws into the status its client gets, for unary
/// handlers (which throw from `next`) and streaming ones (which throw from the producer).
@Suite struct StatusMappingInterceptorTests {
  struct Boom: Error {}

  let interceptor = StatusMappingInterceptor(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))

  /// Calls the interceptor as the server would, with `next` standing in for the handler.
  func call(
    _ next: @escaping @Sendable () async throws -> StreamingServerResponse<String>
  ) async throws -> StreamingServerResponse<String> {
    try await withServerContextRPCCancellationHandle { cancellation in
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: "mart.test.v1.Test", method: "Echo"),
        remotePeer: "in-process:1", localPeer: "in-process:1", cancellation: cancellation)
      return try await interceptor.intercept(
        request: StreamingServerRequest<String>(
          metadata: [:],
          messages: RPCAsyncSequence(wrapping: AsyncThrowingStream<String, any Error> { $0.finish() })),
        context: context
      ) { _, _ in try await next() }
    }
  }

  /// An upstream call's error, rethrown by a handler, loses the other service's transport
  /// entries (which, sent again as our trailers, broke the response into UNAVAILABLE) and keeps
  /// its code, message and details.
  @Test func anUpstreamErrorIsPassedOnWithoutItsTransportMetadata() async throws {
    var upstream = Metadata()
    upstream.addString("application/grpc", forKey: "content-type")
    upstream.addString("5", forKey: "grpc-status")
    upstream.addString("x", forKey: "grpc-message")
    upstream.addBinary([1, 2, 3], forKey: "grpc-status-details-bin")
    upstream.addString("kept", forKey: "x-custom")
    let trailers = upstream
    let error = await thrown { throw RPCError(code: .notFound, message: "order not found", metadata: trailers) }
    let mapped = try #require(error as? RPCError)
    #expect(mapped.code == .notFound)
    #expect(mapped.message == "order not found")
    #expect(Array(mapped.metadata[binaryValues: "grpc-status-details-bin"]) == [[1, 2, 3]])
    #expect(Array(mapped.metadata[stringValues: "x-custom"]) == ["kept"])
    for key in ["content-type", "grpc-status", "grpc-message"] {
      #expect(Array(mapped.metadata[stringValues: key]).isEmpty, "\(key)")
    }
  }

  func thrown(by next: @escaping @Sendable () async throws -> StreamingServerResponse<String>) async -> (any Error)? {
    do {
      _ = try await call(next)
      return nil
    } catch {
      return error
    }
  }

  @Test func statusesPassAsTheyAre() async throws {
    let status = APIStatus.invalid("name", "is required")
    let passed = await thrown { throw status }
    #expect((passed as? RPCError)?.code == .invalidArgument)
    #expect((passed as? RPCError)?.badRequestFields == ["name"])
    let rpcError = RPCError(code: .notFound, message: "no such thing")
    #expect((await thrown { throw rpcError } as? RPCError)?.code == .notFound)
  }

  @Test func anythingElseIsInternalWithoutDetail() async throws {
    let error = await thrown { throw Boom() } as? RPCError
    #expect(error?.code == .internalError)
    #expect(error?.message == "internal error")
  }

  /// What the server really hands an interceptor when a later interceptor or the handler threw:
  /// grpc's executor has already caught the error and wrapped it as UNKNOWN with it as the cause.
  @Test func anErrorAlreadyWrappedByTheExecutorIsMappedFromItsCause() async throws {
    let wrapped = { (cause: any Error) in
      await self.refused { StreamingServerResponse(error: RPCError(code: .unknown, message: "", cause: cause)) }
    }
    #expect(await wrapped(Boom())?.code == .internalError)
    #expect(await wrapped(APIStatus.invalid("name", "is required"))?.code == .invalidArgument)
    #expect(await wrapped(CancellationError())?.code == .cancelled)
    // A handler's own UNKNOWN without a cause is its answer, left alone.
    let own = await refused { StreamingServerResponse(error: RPCError(code: .unknown, message: "mine")) }
    #expect(own?.code == .unknown)
    #expect(own?.message == "mine")
  }

  /// The error of a response the interceptor passed back as refused (nil if it was accepted).
  func refused(_ next: @escaping @Sendable () async throws -> StreamingServerResponse<String>) async -> RPCError? {
    guard case .failure(let error) = try? await call(next).accepted else { return nil }
    return error
  }

  @Test func cancellationIsCancelled() async throws {
    #expect((await thrown { throw CancellationError() } as? RPCError)?.code == .cancelled)
  }

  /// A call whose caller left fails with whatever it was waiting on (postgres-nio's pool refusing
  /// a cancelled lease, say): that is CANCELLED, not an internal error logged as one.
  @Test func whatACancelledCallThrowsIsCancelled() async throws {
    let call = Task { await self.thrown { throw Boom() } as? RPCError }
    call.cancel()
    #expect(await call.value?.code == .cancelled)
  }

  @Test func aStreamingHandlerThatFailsInItsProducerIsMappedToo() async throws {
    let response = try await call {
      StreamingServerResponse(of: String.self) { writer in
        try await writer.write("first")
        throw Boom()
      }
    }
    guard case .success(let contents) = response.accepted else {
      Issue.record("the response was not accepted")
      return
    }
    let collector = CollectingWriter()
    let writer = RPCWriter(wrapping: collector)
    await #expect {
      _ = try await contents.producer(writer)
    } throws: { error in
      (error as? RPCError)?.code == .internalError
    }
    #expect(collector.written.withLock { $0 } == ["first"])
  }
}

/// A writer that keeps what the producer wrote.
private final class CollectingWriter: RPCWriterProtocol {
  let written = Mutex<[String]>([])

  func write(_ element: String) async throws {
    written.withLock { $0.append(element) }
  }

  func write(contentsOf elements: some Sequence<String>) async throws {
    for element in elements { try await write(element) }
  }
}
