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

  /// An E.164 number, or nil for an empty one (the rule is `RequestValidation.phone`).
  static func phone(_ raw: String, field: String) -> Result<String?, FieldViolation> {
    var validation = RequestValidation()
    let phone = validation.phone(raw, field: field)
    if let violation = validation.violations.first { return .failure(violation) }
    return .success(phone)
  }

  /// A BCP 47 language tag as messages are chosen by: a language of 2 or 3 letters and an optional
  /// region of 2 ("en", "de", "en-ZA"), normalised to that case; "_" is taken for "-". Empty: "en".
  static func locale(_ raw: String, field: String) -> Result<String, FieldViolation> {
    let tag = raw.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "-")
    if tag.isEmpty { return .success(defaultLocale) }
    let parts = tag.split(separator: "-", omittingEmptySubsequences: false)
    let letters = { (part: Substring) in part.allSatisfy { $0.isASCII && $0.isLetter } }
    guard (1...2).contains(parts.count), (2...3).contains(parts[0].count), letters(parts[0]),
      parts.count == 1 || (parts[1].count == 2 && letters(parts[1]))
    else {
      return .failure(FieldViolation(field, "must be a language tag such as \"en\" or \"en-ZA\""))
    }
    return .success(parts.count == 1 ? parts[0].lowercased() : "\(parts[0].lowercased())-\(parts[1].uppercased())")
  }

  static let defaultLocale = "en"

  /// A validated address book entry, as the addresses table stores it.
  struct AddressInput: Sendable {
    var label: String?
    var address: PostalAddress
  }

  static func address(_ request: Mart_User_V1_AddAddressRequest) throws -> AddressInput {
    guard request.hasAddress else { throw APIStatus.invalid("address", "is required") }
    var validation = RequestValidation()
    let label = validation.text(request.label, field: "label", maximum: 50)
    let address = PostalAddress.validated(request.address, field: "address", into: &validation)
    try validation.check()
    guard let address else { throw APIStatus.invalid("address", "is not a valid address") }
    return AddressInput(label: label.isEmpty ? nil : label, address: address)
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
