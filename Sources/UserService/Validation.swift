import Foundation
import MartProto
import MartRuntime

/// Input rules of the user service. Lengths that the database also checks are counted as it
/// counts them (`char_length`: Unicode scalars).
enum Validation {
  static let passwordLength = 8...128
  static let maximumEmailLength = 254
  static let maximumFullNameLength = 200

  /// The email as stored (lower-cased, trimmed), or why it is not an address we accept.
  ///
  /// ASCII only (internationalised domains in their punycode form): `lower()` in PostgreSQL and
  /// `lowercased()` here then agree on what lower case means.
  static func normalizedEmail(_ raw: String) -> Result<String, FieldViolation> {
    let email = raw.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
    func failure(_ why: String) -> Result<String, FieldViolation> { .failure(FieldViolation("email", why)) }
    guard !email.isEmpty else { return failure("is required") }
    guard email.utf8.count <= maximumEmailLength else { return failure("must be at most 254 characters") }
    let parts = email.split(separator: "@", omittingEmptySubsequences: false)
    guard parts.count == 2 else { return failure("must be an email address like name@example.com") }
    let local = parts[0]
    let domain = parts[1]
    let localAllowed = Set("abcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-".utf8)
    guard (1...64).contains(local.utf8.count), local.utf8.allSatisfy({ localAllowed.contains($0) }),
      !local.hasPrefix("."), !local.hasSuffix("."), !local.contains("..")
    else { return failure("must be an email address like name@example.com") }
    let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
    let labelAllowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-".utf8)
    guard labels.count >= 2,
      labels.allSatisfy({ label in
        (1...63).contains(label.utf8.count) && label.utf8.allSatisfy { labelAllowed.contains($0) }
          && !label.hasPrefix("-") && !label.hasSuffix("-")
      }),
      let tld = labels.last, tld.utf8.contains(where: { !(0x30...0x39).contains($0) })
    else { return failure("must be an email address like name@example.com") }
    return .success(email)
  }

  /// The password policy: 8 to 128 characters, and not the email address.
  static func passwordViolations(_ password: String, email: String) -> [FieldViolation] {
    let length = password.count
    if length < passwordLength.lowerBound {
      return [FieldViolation("password", "must be at least \(passwordLength.lowerBound) characters")]
    }
    if length > passwordLength.upperBound {
      return [FieldViolation("password", "must be at most \(passwordLength.upperBound) characters")]
    }
    let trimmedEmail = email.trimmingCharacters(in: .whitespacesAndNewlines)
    if !trimmedEmail.isEmpty, password.lowercased() == trimmedEmail.lowercased() {
      return [FieldViolation("password", "must not be the email address")]
    }
    return []
  }

  /// A display name: trimmed, 1 to 200 characters, no control characters.
  static func fullName(_ raw: String, field: String) -> Result<String, FieldViolation> {
    let name = raw.trimmingCharacters(in: .whitespacesAndNewlines)
    guard !name.isEmpty else { return .failure(FieldViolation(field, "is required")) }
    guard name.unicodeScalars.count <= maximumFullNameLength else {
      return .failure(FieldViolation(field, "must be at most \(maximumFullNameLength) characters"))
    }
    guard !RequestValidation.containsControlCharacters(name) else {
      return .failure(FieldViolation(field, "must not contain control characters"))
    }
    return .success(name)
  }

  /// An E.164 number (`+` and 7 to 15 digits, no leading zero), or nil for an empty one.
  static func phone(_ raw: String, field: String) -> Result<String?, FieldViolation> {
    let phone = raw.trimmingCharacters(in: .whitespaces)
    if phone.isEmpty { return .success(nil) }
    let digits = phone.utf8.dropFirst()
    guard phone.utf8.first == UInt8(ascii: "+"), (7...15).contains(digits.count),
      digits.allSatisfy({ (0x30...0x39).contains($0) }), digits.first != UInt8(ascii: "0")
    else { return .failure(FieldViolation(field, "must be an E.164 phone number such as +27821234567")) }
    return .success(phone)
  }

  /// A validated address, as the addresses table stores it.
  struct AddressInput: Sendable {
    var label: String?
    var recipientName: String
    var lines: [String]
    var city: String
    var region: String?
    var postalCode: String?
    var countryCode: String
    var phone: String?
  }

  static func address(_ request: Mart_User_V1_AddAddressRequest) throws -> AddressInput {
    guard request.hasAddress else { throw APIStatus.invalid("address", "is required") }
    let address = request.address
    var violations: [FieldViolation] = []
    func text(_ raw: String, field: String, required: Bool, maximum: Int) -> String? {
      let value = raw.trimmingCharacters(in: .whitespacesAndNewlines)
      if value.isEmpty {
        if required { violations.append(FieldViolation(field, "is required")) }
        return nil
      }
      if value.unicodeScalars.count > maximum {
        violations.append(FieldViolation(field, "must be at most \(maximum) characters"))
      } else if RequestValidation.containsControlCharacters(value) {
        violations.append(FieldViolation(field, "must not contain control characters"))
      }
      return value
    }
    let label = text(request.label, field: "label", required: false, maximum: 50)
    let recipient = text(address.recipientName, field: "address.recipient_name", required: true, maximum: 200)
    let lines = address.lines.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    if lines.isEmpty || lines.count > 3 {
      violations.append(FieldViolation("address.lines", "must have one to three street lines"))
    } else if lines.contains(where: \.isEmpty) {
      violations.append(FieldViolation("address.lines", "must not contain empty lines"))
    } else if lines.contains(where: { line in
      line.unicodeScalars.count > 200 || RequestValidation.containsControlCharacters(line)
    }) {
      violations.append(
        FieldViolation("address.lines", "each line must be 1 to 200 characters, without control characters"))
    }
    let city = text(address.city, field: "address.city", required: true, maximum: 100)
    let region = text(address.region, field: "address.region", required: false, maximum: 100)
    let postalCode = text(address.postalCode, field: "address.postal_code", required: false, maximum: 20)
    let country = address.countryCode.trimmingCharacters(in: .whitespaces).uppercased()
    if country.isEmpty {
      violations.append(FieldViolation("address.country_code", "is required"))
    } else if !(country.utf8.count == 2 && country.utf8.allSatisfy { (0x41...0x5A).contains($0) }) {
      violations.append(FieldViolation("address.country_code", "must be a two-letter ISO 3166-1 code such as ZA"))
    }
    var phone: String?
    switch Self.phone(address.phone, field: "address.phone") {
    case .success(let value): phone = value
    case .failure(let violation): violations.append(violation)
    }
    guard violations.isEmpty, let recipient, let city else { throw APIStatus.invalid(violations) }
    return AddressInput(
      label: label, recipientName: recipient, lines: lines, city: city, region: region, postalCode: postalCode,
      countryCode: country, phone: phone)
  }
}

/// Where a page of a list starts (in a `PageTokenCodec` token): the sort key of the last row
/// returned.
struct ListCursor: Codable, Equatable, Sendable {
  /// Whether the last row was the default address (address lists only).
  var isDefault: Bool?
  /// The last row's `created_at`, in microseconds since 1970 (exact, unlike a Double).
  var micros: Int64
  var id: UUID

  enum CodingKeys: String, CodingKey {
    case isDefault = "d"
    case micros = "t"
    case id = "i"
  }
}
