import Foundation
import MartProto

/// Checks for request fields that every service has: ids, page sizes, money.
///
/// Each check appends to a list of violations and returns the parsed value (nil when invalid), so
/// a handler can report every bad field at once.
public struct RequestValidation: Sendable {
  public private(set) var violations: [FieldViolation] = []

  public init() {}

  public mutating func add(_ field: String, _ reason: String) {
    violations.append(FieldViolation(field, reason))
  }

  /// Throws INVALID_ARGUMENT (VALIDATION_FAILED) naming every bad field, if there is one.
  public func check() throws {
    try APIStatus.check(violations)
  }

  /// A required UUID.
  public mutating func uuid(_ raw: String, field: String) -> UUID? {
    let trimmed = raw.trimmingCharacters(in: .whitespaces)
    guard !trimmed.isEmpty else {
      add(field, "is required")
      return nil
    }
    guard let id = UUID(uuidString: trimmed) else {
      add(field, "must be a UUID")
      return nil
    }
    return id
  }

  /// A required UUID that is all a request names: INVALID_ARGUMENT naming `field` if it is
  /// missing or not a UUID.
  public static func requiredUUID(_ raw: String, field: String) throws -> UUID {
    var validation = RequestValidation()
    guard let id = validation.uuid(raw, field: field) else { throw APIStatus.invalid(validation.violations) }
    return id
  }

  /// An optional UUID: nil (and no violation) when empty.
  public mutating func optionalUUID(_ raw: String, field: String) -> UUID? {
    raw.trimmingCharacters(in: .whitespaces).isEmpty ? nil : uuid(raw, field: field)
  }

  /// Free text, trimmed of white space and line breaks: a violation when `required` and empty,
  /// longer than `maximum` characters (Unicode scalars, as PostgreSQL's `char_length` counts), or
  /// with control characters (tab, line feed and carriage return allowed with `allowingNewlines`).
  public mutating func text(
    _ raw: String, field: String, required: Bool = false, maximum: Int, allowingNewlines: Bool = false
  ) -> String {
    let text = raw.trimmingCharacters(in: .whitespacesAndNewlines)
    if text.isEmpty {
      if required { add(field, "is required") }
    } else if text.unicodeScalars.count > maximum {
      add(field, "must be at most \(maximum) characters")
    } else if Self.containsControlCharacters(text, allowingNewlines: allowingNewlines) {
      add(field, "must not contain control characters")
    }
    return text
  }

  /// A page size, by the one rule every List RPC follows (AIP-158): 0 or absent means
  /// `defaultSize`, a size above `maximum` is coerced to `maximum` (a client asking for more than
  /// a page holds simply gets full pages), and only a negative size is a violation.
  public mutating func pageSize(_ raw: Int32, default defaultSize: Int, maximum: Int, field: String = "page_size")
    -> Int
  {
    guard raw >= 0 else {
      add(field, "must not be negative (0 or absent: \(defaultSize); at most \(maximum))")
      return defaultSize
    }
    return raw == 0 ? defaultSize : min(Int(raw), maximum)
  }

  /// A list of 1 to `maximum` UUIDs, duplicates removed (first occurrence kept, in order).
  public mutating func uuidList(_ raw: [String], maximum: Int, field: String) -> [UUID] {
    guard !raw.isEmpty else {
      add(field, "must name at least one id")
      return []
    }
    guard raw.count <= maximum else {
      add(field, "must name at most \(maximum) ids")
      return []
    }
    var seen = Set<UUID>()
    var ids: [UUID] = []
    for (index, text) in raw.enumerated() {
      guard let id = uuid(text, field: "\(field)[\(index)]") else { continue }
      if seen.insert(id).inserted { ids.append(id) }
    }
    return ids
  }

  /// A client's idempotency key: `field` (`request_id`), or the `Idempotency-Key` header the
  /// gateway put there, which is a Structured Fields string (draft-ietf-httpapi-idempotency-key-
  /// header), so its quotes are not part of the key. nil when there is none (or it is invalid).
  public mutating func idempotencyKey(_ raw: String, field: String = "request_id", maximum: Int = 200) -> String? {
    var key = raw.trimmingCharacters(in: .whitespaces)
    if key.count >= 2, key.hasPrefix("\""), key.hasSuffix("\"") { key = String(key.dropFirst().dropLast()) }
    if key.isEmpty { return nil }
    if key.unicodeScalars.count > maximum || Self.containsControlCharacters(key) {
      add(field, "must be 1 to \(maximum) printable characters (a UUID is best)")
      return nil
    }
    return key
  }

  /// Whether `code` is an upper-case three-letter ISO-4217 code.
  public static func isCurrencyCode(_ code: String) -> Bool {
    code.utf8.count == 3 && code.utf8.allSatisfy { (0x41...0x5A).contains($0) }
  }

  /// Whether `text` has control characters (other than the tab, line feed and carriage return
  /// that `allowingNewlines` permits).
  public static func containsControlCharacters(_ text: String, allowingNewlines: Bool = false) -> Bool {
    text.unicodeScalars.contains { (scalar: Unicode.Scalar) -> Bool in
      if allowingNewlines, scalar == "\n" || scalar == "\r" || scalar == "\t" { return false }
      return scalar.isControlCharacter
    }
  }
}

extension Mart_Common_V1_Money {
  /// An amount in minor units of `currency` (ISO 4217).
  public init(minor: Int64, currency: String) {
    self.init()
    amountMinor = minor
    currencyCode = currency
  }

  /// The amount as people read it, e.g. "ZAR 1234.50" (ISO 4217's zero-decimal currencies
  /// without decimals).
  public var displayText: String { Self.displayText(minor: amountMinor, currency: currencyCode) }

  public static func displayText(minor: Int64, currency: String) -> String {
    let sign = minor < 0 ? "-" : ""
    let units = minor.magnitude
    if zeroDecimalCurrencies.contains(currency) { return "\(currency) \(sign)\(units)" }
    let cents = units % 100
    return "\(currency) \(sign)\(units / 100).\(cents < 10 ? "0" : "")\(cents)"
  }

  static let zeroDecimalCurrencies: Set<String> = [
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
  ]
}

extension UUID {
  /// The lower-case form Mart puts in every API field and event.
  public var lowercasedString: String { uuidString.lowercased() }
}
