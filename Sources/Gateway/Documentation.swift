import Hummingbird

// The API's documentation, served by the gateway as FastAPI does: the OpenAPI document generated
// from proto/ (Generated/openapi.json, embedded in the binary) at /openapi.json, and at /docs a
// page that renders it with Swagger UI from a public CDN.
//
// The page runs in our origin, where a token may sit in Swagger UI's "Authorize" box, so the CDN
// must not be able to change the code it runs: the version is exact and each file carries its
// Subresource Integrity hash, which the browser checks before it runs or applies the file (a
// changed file is refused, and /docs shows nothing rather than someone else's script).
// Embedding the 1.6 MB bundle instead would add its compile time to every clean build.
//
// To move to another version: take the same two files of swagger-ui-dist at that version (npm's
// files; PyPI's drf-spectacular-sidecar ships them under static/drf_spectacular_sidecar/
// swagger-ui-dist/, the bundle's PACKAGE_VERSION says which), and for each
// `openssl dgst -sha384 -binary FILE | openssl base64 -A`.

enum APIDocumentation {
  static let openAPIPath = "/openapi.json"
  static let docsPath = "/docs"

  /// The exact swagger-ui-dist release the page loads (OpenAPI 3.1 needs 5.x).
  static let swaggerUIVersion = "5.33.1"
  static let swaggerUIBase = "https://unpkg.com/swagger-ui-dist@\(swaggerUIVersion)"
  /// SHA-384 of swagger-ui-dist 5.33.1's swagger-ui.css and swagger-ui-bundle.js.
  static let stylesheetIntegrity = "sha384-Ov4/wv3j2bmct8cDc5X4ngJZohVPzEmc6uDPH8WeljUxO5vtoykvMEfbu9Vh6RaW"
  static let scriptIntegrity = "sha384-ZPehFMQommnnuaZ4rpxgkgTT2DKFVp4hZC/7pLit+9Lek9T1YGSo23eHFbvNkXkw"

  static func openAPIDocument() -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(
      status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
  }

  static func docsPage() -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/html; charset=utf-8"
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
  }

  static let html = """
    <!DOCTYPE html>
    <html lang="en">
    <head>
      <meta charset="utf-8">
      <meta name="viewport" content="width=device-width, initial-scale=1">
      <title>Mart API</title>
      <link rel="stylesheet" href="\(swaggerUIBase)/swagger-ui.css"
        integrity="\(stylesheetIntegrity)" crossorigin="anonymous" referrerpolicy="no-referrer">
    </head>
    <body>
      <div id="swagger-ui"></div>
      <script src="\(swaggerUIBase)/swagger-ui-bundle.js"
        integrity="\(scriptIntegrity)" crossorigin="anonymous" referrerpolicy="no-referrer"></script>
      <script>
        window.onload = () => {
          window.ui = SwaggerUIBundle({
            url: "\(openAPIPath)",
            dom_id: "#swagger-ui",
            deepLinking: true,
            persistAuthorization: true,
          });
        };
      </script>
    </body>
    </html>

    """
}
