import Crypto
import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import MartProto
import MartRuntime
import ServiceLifecycle
import SwiftProtobuf

/// The gRPC handlers of mart.order.v1.OrderService. Who may call what is enforced by the
/// server's auth interceptor from the proto's access options before a handler runs; the handlers
/// validate input, keep customers to their own orders (another's reads as NOT_FOUND, never
/// PERMISSION_DENIED, so ids cannot be probed), and apply the order rules.
struct OrderRPCService: Mart_Order_V1_OrderService.SimpleServiceProtocol {
  let store: OrderStore
  let product: any Mart_Product_V1_ProductService.ClientProtocol
  let signals: OrderTimelineSignals
  let backlog: OrderSagaBacklog
  let settings: OrderSettings
  let logger: Logger

  static let maximumItems = 50
  static let quantities: ClosedRange<Int32> = 1...999
  static let maximumNoteLength = 1000
  static let maximumKeyLength = 200
  static let defaultPageSize = 20
  static let maximumPageSize = 100

  // MARK: Placing

  func createOrder(
    request: Mart_Order_V1_CreateOrderRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_Order {
    let userID = try Caller.requiredUserID()
    if settings.requireVerifiedEmail, Caller.current?.claims.emailVerified != true {
      throw APIStatus.status(
        .failedPrecondition, "verify your email before you order (then sign in again)", reason: "EMAIL_NOT_VERIFIED")
    }
    let input = try Self.validated(request)
    // Before any work: an order taken now would wait behind the saga's backlog.
    let sagaDelay = backlog.current
    if sagaDelay > settings.maximumSagaDelay {
      throw APIStatus.status(
        .unavailable, "the shop is taking orders more slowly than they arrive; retry shortly", reason: "OVERLOADED",
        extra: [.retryInfo(delay: .seconds(1))])
    }
    guard let key = input.idempotencyKey else { return try await place(input, userID: userID).proto }
    switch try await store.claimKey(
      userID: userID, key: key, requestHash: Self.hash(request), ttl: settings.idempotencyKeyTTL,
      inFlightLease: settings.inFlightKeyLease)
    {
    case .claimed:
      do {
        return try await place(input, userID: userID).proto
      } catch {
        await store.abandonKey(userID: userID, key: key)
        throw error
      }
    case .replay(let orderID):
      guard let order = try await store.order(orderID, ownerID: userID) else {
        throw APIStatus.notFound("order \(orderID.lowercasedString) not found")
      }
      return order.proto
    case .inFlight:
      throw APIStatus.status(
        .aborted, "a request with this idempotency key is still being processed; retry once it has finished",
        reason: "IDEMPOTENCY_KEY_IN_FLIGHT")
    case .reused:
      throw APIStatus.status(
        .alreadyExists, "this idempotency key was used for a different order request",
        reason: "IDEMPOTENCY_KEY_REUSED", metadata: ["field": "request_id"])
    }
  }

  /// Prices the lines from the catalogue, computes the totals, and stores the order (PENDING).
  private func place(_ input: OrderRequest, userID: UUID) async throws -> OrderRecord {
    let ids = input.items.map(\.productID)
    let found = try await product.batchGetProducts(.with { $0.productIds = ids.map(\.lowercasedString) })
    let products = Dictionary(found.products.map { ($0.id.lowercased(), $0) }) { first, _ in first }
    var lines: [OrderLineRecord] = []
    var currency: String?
    for (index, item) in input.items.enumerated() {
      let field = "items[\(index)].product_id"
      guard let product = products[item.productID.lowercasedString] else {
        throw GoogleRPCStatus(
          code: .notFound, message: "\(field): product \(item.productID.lowercasedString) does not exist",
          details: [.badRequest(violations: [.init(field: field, description: "no such product")])])
      }
      guard product.status == .active else {
        throw APIStatus.status(
          .failedPrecondition, "\(field): product \(product.sku) is no longer sold", reason: "PRODUCT_ARCHIVED",
          metadata: ["field": field, "product_id": product.id])
      }
      let price = product.price
      if let currency, currency != price.currencyCode {
        throw APIStatus.status(
          .failedPrecondition,
          "\(field): product \(product.sku) is priced in \(price.currencyCode), the order so far in \(currency)",
          reason: "CURRENCY_MISMATCH", metadata: ["field": field])
      }
      currency = price.currencyCode
      let (_, overflow) = price.amountMinor.multipliedReportingOverflow(by: item.quantity)
      guard !overflow, price.amountMinor >= 0 else {
        throw APIStatus.invalid("items[\(index)].quantity", "makes a line total beyond what an order can hold")
      }
      lines.append(
        OrderLineRecord(
          productID: item.productID, sku: product.sku, name: product.name, imageURL: product.imageUrls.first,
          unitPriceMinor: price.amountMinor, quantity: item.quantity))
    }
    guard let currency else { throw APIStatus.invalid("items", "must name at least one product") }
    // Each line fits (checked above); the sum and the fee must too: a client's huge order is
    // refused, never wrapped around nor a crash.
    var subtotal: Int64 = 0
    for line in lines {
      let (sum, overflow) = subtotal.addingReportingOverflow(line.lineTotalMinor)
      guard !overflow else { throw APIStatus.invalid("items", "make a total beyond what an order can hold") }
      subtotal = sum
    }
    let shippingFee = settings.shippingFee(subtotalMinor: subtotal)
    guard !subtotal.addingReportingOverflow(shippingFee).overflow else {
      throw APIStatus.invalid("items", "make a total beyond what an order can hold")
    }
    return try await store.place(
      userID: userID, request: input, lines: lines, currency: currency, subtotalMinor: subtotal,
      shippingFeeMinor: shippingFee,
      provider: input.paymentProvider ?? settings.defaultPaymentProvider, paymentWindow: settings.paymentWindow)
  }

  // MARK: Reading

  func getOrder(
    request: Mart_Order_V1_GetOrderRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_Order {
    let id = try RequestValidation.requiredUUID(request.orderID, field: "order_id")
    return try await visibleOrder(id).proto
  }

  func listOrders(
    request: Mart_Order_V1_ListOrdersRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_ListOrdersResponse {
    let caller = try Caller.required()
    var validation = RequestValidation()
    let limit = validation.pageSize(request.pageSize, default: Self.defaultPageSize, maximum: Self.maximumPageSize)
    var userID = validation.optionalUUID(request.userID, field: "user_id")
    var status: OrderStatus?
    switch request.status {
    case .unspecified: status = nil
    default:
      status = OrderStatus(request.status)
      if status == nil { validation.add("status", "is not a known order status") }
    }
    try validation.check()
    if !caller.isAdmin {
      let own = try Caller.requiredUserID()
      if let asked = userID, asked != own {
        throw APIStatus.invalid("user_id", "must be empty or your own id: only admins list other customers' orders")
      }
      userID = own
    }
    let fingerprint = PageTokenCodec.fingerprint(["orders", userID?.lowercasedString ?? "", status?.rawValue ?? ""])
    let after = try PageTokenCodec.decode(request.pageToken, as: OrderCursor.self, fingerprint: fingerprint)
    let page = PageTokenCodec.page(
      try await store.orders(userID: userID, status: status, after: after, limit: limit), limit: limit,
      fingerprint: fingerprint
    ) { OrderCursor(micros: $0.createdMicros, id: $0.id) }
    return .with {
      $0.orders = page.rows.map(\.proto)
      $0.nextPageToken = page.nextPageToken
    }
  }

  func getOrderTimeline(
    request: Mart_Order_V1_GetOrderTimelineRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_OrderTimeline {
    let id = try RequestValidation.requiredUUID(request.orderID, field: "order_id")
    let order = try await visibleOrder(id)
    let entries = try await store.timeline(of: order.id)
    return .with {
      $0.orderID = order.id.lowercasedString
      $0.entries = entries.map(\.proto)
    }
  }

  /// The order's status changes: those after `last_event_id`, then each new one as its timeline
  /// entry commits, until a final status (or DELIVERED). A change is a timeline entry whose
  /// status differs from the entry before it (the first, PLACED, is one).
  func watchOrder(
    request: Mart_Order_V1_WatchOrderRequest, response: RPCWriter<Mart_Order_V1_OrderStatusEvent>,
    context: ServerContext
  ) async throws {
    var validation = RequestValidation()
    let id = validation.uuid(request.orderID, field: "order_id")
    var after: Int64?
    if !request.lastEventID.isEmpty {
      after = Int64(request.lastEventID)
      if after == nil { validation.add("last_event_id", "must be an event_id this stream sent") }
    }
    try validation.check()
    guard let id else { throw APIStatus.invalid("order_id", "must be a UUID") }
    _ = try await visibleOrder(id)
    defer { signals.forget(id) }
    var sent = after ?? 0
    // Ends with OK only after a final status: any other end is an error, so that a client never
    // takes a stream that stopped early for a finished one.
    while true {
      let mark = signals.mark(id)
      let entries = try await store.timeline(of: id)
      var previous: OrderStatus?
      for entry in entries {
        defer { previous = entry.status }
        guard entry.id > sent else { continue }
        sent = entry.id
        guard entry.status != previous else { continue }
        try await response.write(
          .with {
            $0.eventID = "\(entry.id)"
            $0.status = entry.status.proto
            $0.entry = entry.proto
          })
      }
      if let last = entries.last?.status, last.isTerminal || last == .delivered { return }
      // A process that is draining ends its streams rather than hold the drain until each
      // order's next change; the client resumes elsewhere with the last event_id it saw.
      await cancelWhenGracefulShutdown { [signals] in
        await signals.wait(for: id, since: mark, upTo: .seconds(30))
      }
      if Task.isShuttingDownGracefully {
        throw RPCError(
          code: .unavailable,
          message: "the order service is restarting; watch again with last_event_id \(sent) to resume")
      }
      try Task.checkCancellation()
    }
  }

  /// The order if the caller may see it: their own, or any for an admin or a service.
  private func visibleOrder(_ id: UUID) async throws -> OrderRecord {
    guard let order = try await store.order(id, ownerID: try Caller.ownerScope()) else {
      throw APIStatus.notFound("order \(id.lowercasedString) not found")
    }
    return order
  }

  // MARK: Changing

  func cancelOrder(
    request: Mart_Order_V1_CancelOrderRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_Order {
    var validation = RequestValidation()
    let id = validation.uuid(request.orderID, field: "order_id")
    let note = validation.text(
      request.note, field: "note", maximum: Self.maximumNoteLength, allowingNewlines: true)
    try validation.check()
    guard let id else { throw APIStatus.invalid("order_id", "must be a UUID") }
    let caller = try Caller.required()
    let actorID = try Caller.requiredUserID()
    let owner = caller.isAdmin ? nil : actorID
    return try await store.change(id, ownerID: owner) { change in
      switch change.order.status {
      case .cancelled:
        return change.order.proto
      case .pending, .awaitingPayment:
        if change.order.paymentReceivedAt != nil {
          // The payment is in and its stock is being committed: a moment from PAID.
          throw APIStatus.status(
            .aborted, "the payment for this order is being completed; try again in a moment",
            reason: "INVALID_ORDER_STATUS", metadata: ["status": change.order.status.rawValue])
        }
        try await change.cancel(
          reason: caller.isAdmin && change.order.userID != actorID ? .adminRequest : .customerRequest,
          note: note.isEmpty ? nil : note, actor: .user(actorID), releaseStock: true)
        return change.order.proto
      case .paid where change.order.paymentProvider == .payfast && !caller.isAdmin:
        // PayFast payments are refunded by hand (README: "Payments"): the shop decides.
        throw APIStatus.status(
          .failedPrecondition, "order \(change.order.number) was paid with PayFast: ask the shop to cancel it",
          reason: "INVALID_ORDER_STATUS", metadata: ["status": change.order.status.rawValue])
      case .paid:
        // Not shipped yet: its stock goes back on the shelf and the payment service refunds it
        // (OrderCancelled says it was paid); REFUNDED once the refund succeeds.
        try await change.cancel(
          reason: caller.isAdmin && change.order.userID != actorID ? .adminRequest : .customerRequest,
          note: note.isEmpty ? nil : note, actor: .user(actorID), releaseStock: false, returnStock: true)
        return change.order.proto
      case .shipped, .delivered, .refunded:
        throw Self.invalidStatus(change.order, "cancel")
      }
    }
  }

  func shipOrder(
    request: Mart_Order_V1_ShipOrderRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_Order {
    var validation = RequestValidation()
    let id = validation.uuid(request.orderID, field: "order_id")
    let carrier = validation.text(request.carrier, field: "carrier", required: true, maximum: 100)
    let tracking = validation.text(request.trackingNumber, field: "tracking_number", required: true, maximum: 100)
    let trackingURL = validation.text(request.trackingURL, field: "tracking_url", maximum: 500)
    if !trackingURL.isEmpty, !(trackingURL.hasPrefix("https://") || trackingURL.hasPrefix("http://")) {
      validation.add("tracking_url", "must be an http(s) URL")
    }
    try validation.check()
    guard let id else { throw APIStatus.invalid("order_id", "must be a UUID") }
    let actorID = try Caller.requiredUserID()
    return try await store.change(id) { change in
      guard change.order.status == .paid else { throw Self.invalidStatus(change.order, "ship") }
      let now = Date()
      try await change.update {
        $0.status = .shipped
        $0.carrier = carrier
        $0.trackingNumber = tracking
        $0.trackingURL = trackingURL.isEmpty ? nil : trackingURL
        $0.shippedAt = now
      }
      let order = change.order
      try await change.note(.shipped, "Shipped with \(carrier), tracking number \(tracking)", actor: .user(actorID))
      try await change.publish(
        Mart_Order_V1_OrderShipped.with {
          $0.orderID = order.id.lowercasedString
          $0.orderNumber = order.number
          $0.userID = order.userID.lowercasedString
          $0.shipment = order.proto.shipment
        })
      return order.proto
    }
  }

  func deliverOrder(
    request: Mart_Order_V1_DeliverOrderRequest, context: ServerContext
  ) async throws -> Mart_Order_V1_Order {
    let id = try RequestValidation.requiredUUID(request.orderID, field: "order_id")
    let actorID = try Caller.requiredUserID()
    let now = Date()
    let deliveredAt = request.hasDeliverTime ? request.deliverTime.date : now
    guard deliveredAt <= now.addingTimeInterval(60) else {
      throw APIStatus.invalid("deliver_time", "must not be in the future")
    }
    return try await store.change(id) { change in
      guard change.order.status == .shipped, let shippedAt = change.order.shippedAt else {
        throw Self.invalidStatus(change.order, "deliver")
      }
      guard deliveredAt >= shippedAt else {
        throw APIStatus.invalid("deliver_time", "must not be before the order was shipped")
      }
      try await change.update {
        $0.status = .delivered
        $0.deliveredAt = deliveredAt
      }
      let order = change.order
      try await change.note(.delivered, "Delivered", actor: .user(actorID))
      try await change.publish(
        Mart_Order_V1_OrderDelivered.with {
          $0.orderID = order.id.lowercasedString
          $0.orderNumber = order.number
          $0.userID = order.userID.lowercasedString
          $0.deliverTime = .init(date: deliveredAt)
        })
      return order.proto
    }
  }

  static func invalidStatus(_ order: OrderRecord, _ action: String) -> GoogleRPCStatus {
    APIStatus.status(
      .failedPrecondition, "order \(order.number) is \(order.status.rawValue): it cannot \(action) now",
      reason: "INVALID_ORDER_STATUS", metadata: ["status": order.status.rawValue])
  }

  // MARK: Validation

  static func validated(_ request: Mart_Order_V1_CreateOrderRequest) throws -> OrderRequest {
    var validation = RequestValidation()
    var items: [(productID: UUID, quantity: Int64)] = []
    if request.items.isEmpty || request.items.count > maximumItems {
      validation.add("items", "must have 1 to \(maximumItems) items")
    }
    var firstIndex: [UUID: Int] = [:]
    for (index, item) in request.items.prefix(maximumItems).enumerated() {
      let id = validation.uuid(item.productID, field: "items[\(index)].product_id")
      if !quantities.contains(item.quantity) {
        validation.add("items[\(index)].quantity", "must be \(quantities.lowerBound) to \(quantities.upperBound)")
      }
      guard let id else { continue }
      if let earlier = firstIndex[id] {
        validation.add("items[\(index)].product_id", "repeats items[\(earlier)]: order a product on one item")
        continue
      }
      firstIndex[id] = index
      items.append((id, Int64(item.quantity)))
    }
    var address: PostalAddress?
    if request.hasShippingAddress {
      address = PostalAddress.validated(request.shippingAddress, field: "shipping_address", into: &validation)
    } else {
      validation.add("shipping_address", "is required")
    }
    var provider: PaymentProvider?
    switch request.paymentProvider {
    case .unspecified: provider = nil
    default:
      provider = PaymentProvider(request.paymentProvider)
      if provider == nil { validation.add("payment_provider", "is not a known payment provider") }
    }
    let note = validation.text(
      request.customerNote, field: "customer_note", maximum: maximumNoteLength, allowingNewlines: true)
    let key = validation.idempotencyKey(request.requestID, maximum: maximumKeyLength)
    try validation.check()
    guard let address else { throw APIStatus.invalid("shipping_address", "is not a valid address") }
    return OrderRequest(
      items: items, shippingAddress: address, paymentProvider: provider, customerNote: note.isEmpty ? nil : note,
      idempotencyKey: key)
  }

  /// SHA-256 of the request as the key binds it: everything but the key itself, serialised
  /// deterministically.
  static func hash(_ request: Mart_Order_V1_CreateOrderRequest) throws -> [UInt8] {
    var payload = request
    payload.requestID = ""
    var options = BinaryEncodingOptions()
    options.useDeterministicOrdering = true
    let bytes: [UInt8] = try payload.serializedBytes(options: options)
    return Array(SHA256.hash(data: bytes))
  }
}
