import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// A server-streaming RPC served over HTTP/1.1: as Server-Sent Events (the WHATWG HTML standard,
/// section 9.2) when the client accepts `text/event-stream`, else as newline-delimited JSON.
///
/// The status line waits for the upstream's first message (or its end): an error before it is an
/// ordinary error response (404, 401…) with its `google.rpc.Status` body. Once the stream has
/// started, an error ends it with a last event carrying the status (`event: error` in SSE, an
/// `{"error": …}` line in NDJSON). In SSE each message is `data:` (its proto3 JSON, one line) with
/// `id:` its `eventId` when it has one, so that a reconnect's `Last-Event-ID` resumes after it.
/// Every `heartbeat` a keep-alive goes out as well: a comment line in SSE, an empty line in NDJSON
/// (which readers skip). It keeps proxies from closing an idle stream, and it is how
/// a client that went away is noticed: the write fails and the upstream call ends. Without it, a
/// stream abandoned while its order sat PAID held its upstream call open until the order shipped.
enum StreamingResponse {
  /// Runs the upstream call, handing each message (proto3 JSON) to its argument.
  typealias Call = @Sendable (_ each: @escaping @Sendable ([UInt8]) async throws -> Void) async throws -> Void

  enum Format: Sendable, Equatable {
    case serverSentEvents
    case ndjson

    /// SSE when the `Accept` header names `text/event-stream`, NDJSON otherwise.
    static func negotiated(accept: String?) -> Format {
      let accepted = (accept ?? "").split(separator: ",").map {
        $0.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
      }
      return accepted.contains("text/event-stream") ? .serverSentEvents : .ndjson
    }

    var contentType: String {
      switch self {
      case .serverSentEvents: "text/event-stream"
      case .ndjson: "application/x-ndjson"
      }
    }
  }

  /// What the body writer is handed, in order.
  enum Chunk: Sendable {
    case message([UInt8])
    case heartbeat
    case failed(GatewayError)
    case finished
  }

  static func make(
    _ call: @escaping Call, format: Format, heartbeat: Duration,
    mapError: @escaping @Sendable (any Error) -> GatewayError
  ) async throws -> Response {
    let (chunks, output) = AsyncStream.makeStream(of: Chunk.self)
    let (started, start) = AsyncStream.makeStream(of: GatewayError?.self)
    let upstream = Task {
      // Whether a message went out, so the status line is decided; only this task's calls of
      // `each` touch it, one after another.
      let begun = Mutex(false)
      do {
        try await call { json in
          if begun.withLock({ begun in
            defer { begun = true }; return !begun
          }) {
            start.yield(nil)
            start.finish()
          }
          output.yield(.message(json))
        }
        output.yield(.finished)
      } catch {
        let mapped = mapError(error)
        if begun.withLock({ $0 }) {
          output.yield(.failed(mapped))
        } else {
          start.yield(mapped)
        }
      }
      start.yield(nil)
      start.finish()
      output.finish()
    }
    output.onTermination = { _ in upstream.cancel() }

    // The first message, or the error that came instead, decides the status line. A request
    // abandoned meanwhile ends the upstream call rather than leaving it to run unread.
    let first = await withTaskCancellationHandler {
      var outcomes = started.makeAsyncIterator()
      return await outcomes.next()
    } onCancel: {
      upstream.cancel()
    }
    if Task.isCancelled {
      upstream.cancel()
      throw CancellationError()
    }
    if case .some(.some(let error)) = first {
      upstream.cancel()
      throw error
    }

    var headers = HTTPFields()
    headers[.contentType] = format.contentType
    headers[.cacheControl] = "no-cache"
    if let buffering = HTTPField.Name("X-Accel-Buffering") { headers[buffering] = "no" }
    let body = ResponseBody { writer in
      let beats = Task {
        while !Task.isCancelled {
          try? await Task.sleep(for: heartbeat)
          if Task.isCancelled { return }
          output.yield(.heartbeat)
        }
      }
      defer {
        beats.cancel()
        upstream.cancel()
      }
      for await chunk in chunks {
        switch chunk {
        case .message(let json):
          try await writer.write(ByteBuffer(bytes: encode(json, format: format)))
        case .heartbeat:
          try await writer.write(ByteBuffer(string: format == .serverSentEvents ? ": keep-alive\n\n" : "\n"))
        case .failed(let error):
          try await writer.write(ByteBuffer(bytes: encode(error: error, format: format)))
          try await writer.finish(nil)
          return
        case .finished:
          try await writer.finish(nil)
          return
        }
      }
      try await writer.finish(nil)
    }
    return Response(status: .ok, headers: headers, body: body)
  }

  /// One message as an SSE event (with `id:` its `eventId`, when it has one) or an NDJSON line.
  static func encode(_ json: [UInt8], format: Format) -> [UInt8] {
    switch format {
    case .ndjson:
      return json + [UInt8(ascii: "\n")]
    case .serverSentEvents:
      var event: [UInt8] = []
      if let id = eventID(of: json) { event += Array("id: \(id)\n".utf8) }
      return event + Array("data: ".utf8) + json + Array("\n\n".utf8)
    }
  }

  static func encode(error: GatewayError, format: Format) -> [UInt8] {
    switch format {
    case .ndjson:
      return Array(#"{"error":"#.utf8) + error.statusJSON + Array("}\n".utf8)
    case .serverSentEvents:
      return Array("event: error\ndata: ".utf8) + error.statusJSON + Array("\n\n".utf8)
    }
  }

  /// The message's top-level `eventId` string; nil without one, or with one an SSE `id:` line
  /// cannot carry (a line break, or NUL, which the standard makes a client ignore).
  static func eventID(of json: [UInt8]) -> String? {
    guard case .object(let members) = try? JSONParser.parse(json),
      let member = members.first(where: { $0.key == "eventId" }), case .string(let id) = member.value,
      !id.isEmpty, !id.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\0" })
    else { return nil }
    return id
  }
}
