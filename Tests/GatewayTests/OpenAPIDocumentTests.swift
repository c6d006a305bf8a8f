import Foundation
import GRPCCore
import Gateway
import MartProto
import Testing

/// What protoc-gen-mart-gateway generated from proto/ (`make proto`): the gateway's route table,
/// the access policies of every RPC and the OpenAPI document.
@Suite struct OpenAPIDocumentTests {
  /// The repository's root, from this file's path (Tests/GatewayTests/OpenAPIDocumentTests.swift).
  static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  static let openAPIFile = repositoryRoot.appendingPathComponent("Sources/Gateway/Generated/openapi.json")

  /// Every method of every Mart service, from the generated gRPC stubs.
  static let martMethods: [MethodDescriptor] =
    Mart_User_V1_UserService.Method.descriptors + Mart_Product_V1_ProductService.Method.descriptors
    + Mart_Inventory_V1_InventoryService.Method.descriptors + Mart_Order_V1_OrderService.Method.descriptors
    + Mart_Payment_V1_PaymentService.Method.descriptors
    + Mart_Notification_V1_NotificationService.Method.descriptors

  @Test func everyRouteHasTheSchemaOfItsRequestMessage() {
    #expect(!GatewayRouteTable.routes.isEmpty)
    for route in GatewayRouteTable.routes {
      let schema = GatewayRouteTable.messages[route.requestMessage]
      #expect(schema?.fullName == route.requestMessage, "\(route.operationID): no schema for \(route.requestMessage)")
    }
  }

  @Test func everySchemaReferenceResolves() {
    for (name, message) in GatewayRouteTable.messages {
      for field in message.fields {
        for kind in [field.kind] + (field.mapKeyKind.map { [$0] } ?? []) {
          switch kind {
          case .enumeration(let type):
            #expect(GatewayRouteTable.enums[type] != nil, "\(name).\(field.protoName): no enum \(type)")
          case .message(let type) where !type.hasPrefix("google.protobuf."):
            #expect(GatewayRouteTable.messages[type] != nil, "\(name).\(field.protoName): no message \(type)")
          default: break
          }
        }
      }
    }
  }

  @Test func operationIDsAreUnique() {
    let ids = GatewayRouteTable.routes.map(\.operationID)
    #expect(Set(ids).count == ids.count)
  }

  @Test func setRolesIsAnAdminRouteToTheUserService() throws {
    let route = try #require(
      GatewayRouteTable.routes.first { $0.httpMethod == "POST" && $0.pathTemplate == "/v1/users/{user_id}:setRoles" })
    #expect(route.access == .admin)
    #expect(route.upstream == .user)
    #expect(route.body == "*")
    #expect(route.operationID == "UserService_SetRoles")
    #expect(route.requestMessage == "mart.user.v1.SetRolesRequest")
    #expect(
      route.rpc.descriptor == MethodDescriptor(fullyQualifiedService: "mart.user.v1.UserService", method: "SetRoles"))
  }

  @Test func accessPoliciesCoverEveryRPC() {
    #expect(Self.martMethods.count == 55)
    #expect(MartAccessPolicies.byMethod.count == 55)
    #expect(Set(MartAccessPolicies.byMethod.keys) == Set(Self.martMethods.map(\.fullyQualifiedMethod)))
    #expect(!MartAccessPolicies.byMethod.values.contains(.unspecified))
    #expect(MartAccessPolicies.byMethod["mart.user.v1.UserService/Register"] == .public)
    #expect(MartAccessPolicies.byMethod["mart.user.v1.UserService/Logout"] == .public)
    #expect(MartAccessPolicies.byMethod["mart.inventory.v1.InventoryService/ReserveStock"] == .internal)
  }

  @Test func routesAgreeWithTheAccessPolicies() {
    for route in GatewayRouteTable.routes {
      #expect(MartAccessPolicies.byMethod[route.rpc.descriptor.fullyQualifiedMethod] == route.access)
      #expect(route.access != .internal, "\(route.operationID) is internal but has an HTTP route")
    }
  }

  /// Every route is an operation of the document, with its operationId and security.
  @Test func everyRouteIsAnOperation() throws {
    let data = try Data(contentsOf: Self.openAPIFile)
    let document = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    #expect(document["openapi"] as? String == "3.1.0")
    let paths = try #require(document["paths"] as? [String: Any])
    for route in GatewayRouteTable.routes {
      let item = paths[Self.openAPIPath(route.pathTemplate)] as? [String: Any]
      let operation = try #require(item?[route.httpMethod.lowercased()] as? [String: Any], "\(route.operationID)")
      #expect(operation["operationId"] as? String == route.operationID)
      let security = try #require(operation["security"] as? [[String: Any]])
      #expect(security.isEmpty == (route.access == .public), "\(route.operationID)")
    }
  }

  /// `openapi-spec-validator` (scripts/validate-openapi.sh, which installs it on first use) accepts
  /// the document as OpenAPI 3.1.
  @Test func openAPIDocumentIsValidOpenAPI31() throws {
    let process = Process()
    process.executableURL = Self.repositoryRoot.appendingPathComponent("scripts/validate-openapi.sh")
    process.arguments = [Self.openAPIFile.path]
    process.currentDirectoryURL = Self.repositoryRoot
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "validate-openapi.sh: \(text)")
  }

  /// The OpenAPI path of a path template: `{name=shelves/*}` becomes `{name}`.
  static func openAPIPath(_ template: String) -> String {
    var path = ""
    var inVariable = false
    var inPattern = false
    for character in template {
      switch character {
      case "{":
        inVariable = true
        path.append(character)
      case "}":
        (inVariable, inPattern) = (false, false)
        path.append(character)
      case "=" where inVariable: inPattern = true
      default: if !inPattern { path.append(character) }
      }
    }
    return path
  }
}
