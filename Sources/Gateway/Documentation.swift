import Hummingbird

// The API's documentation, served by the gateway as FastAPI does: the OpenAPI document generated
// from proto/ (Generated/openapi.json, embedded in the binary) at /openapi.json, and at /docs a
// page that renders it with Swagger UI from a public CDN.

enum APIDocumentation {
  static let openAPIPath = "/openapi.json"
  static let docsPath = "/docs"

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
      <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
    </head>
    <body>
      <div id="swagger-ui"></div>
      <script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js" crossorigin></script>
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
