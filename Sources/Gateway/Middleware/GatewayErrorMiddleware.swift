import Hummingbird
import Logging

/// The one place a refusal becomes an answer: the steps inside throw `GatewayError`, and this
/// renders it as a `google.rpc.Status` JSON body with its HTTP status and headers, so that the
/// steps outside (request id, CORS, access log) always see a Response. Its code is recorded for
/// the error counter. Anything else thrown is a bug of ours: logged, and a 500 that names only
/// the request id.
struct GatewayErrorMiddleware: RouterMiddleware {
  typealias Context = GatewayRequestContext

  let logger: Logger

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    do {
      return try await next(request, context)
    } catch let error as GatewayError {
      return render(error, context: context)
    } catch {
      logger.error("gateway step failed", metadata: ["error": .string("\(error)")])
      return render(.internalError(requestID: context.requestID), context: context)
    }
  }

  private func render(_ error: GatewayError, context: Context) -> Response {
    context.exchange.failed(error.code)
    return error.response()
  }
}
