import Foundation
import MartProto

/// A `mart.common.v1.Address` that passed the one set of address rules: the user service's
/// address book and the order service's shipping snapshot store what this accepts, and the
/// lengths match their columns' checks (`char_length`, in Unicode scalars).
public struct PostalAddress: Sendable, Equatable {
  public var recipientName: String
  /// One to three street lines.
  public var lines: [String]
  public var city: String
  public var region: String?
  public var postalCode: String?
  /// ISO 3166-1 alpha-2, upper case.
  public var countryCode: String
  /// E.164.
  public var phone: String?

  public init(
    recipientName: String, lines: [String], city: String, region: String?, postalCode: String?,
    countryCode: String, phone: String?
  ) {
    self.recipientName = recipientName
    self.lines = lines
    self.city = city
    self.region = region
    self.postalCode = postalCode
    self.countryCode = countryCode
    self.phone = phone
  }

  /// Validates `address`, adding a violation per bad field (named `field`.recipient_name, ...)
  /// to `validation`; nil if any field is bad.
  public static func validated(
    _ address: Mart_Common_V1_Address, field: String, into validation: inout RequestValidation
  ) -> PostalAddress? {
    let before = validation.violations.count
    func text(_ raw: String, _ name: String, required: Bool, maximum: Int) -> String? {
      let value = raw.trimmingCharacters(in: .whitespacesAndNewlines)
      if value.isEmpty {
        if required { validation.add("\(field).\(name)", "is required") }
        return nil
      }
      if value.unicodeScalars.count > maximum {
        validation.add("\(field).\(name)", "must be at most \(maximum) characters")
      } else if RequestValidation.containsControlCharacters(value) {
        validation.add("\(field).\(name)", "must not contain control characters")
      }
      return value
    }
    let recipient = text(address.recipientName, "recipient_name", required: true, maximum: 200)
    let lines = address.lines.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    if lines.isEmpty || lines.count > 3 {
      validation.add("\(field).lines", "must have one to three street lines")
    } else if lines.contains(where: \.isEmpty) {
      validation.add("\(field).lines", "must not contain empty lines")
    } else if lines.contains(where: { line in
      line.unicodeScalars.count > 200 || RequestValidation.containsControlCharacters(line)
    }) {
      validation.add("\(field).lines", "each line must be 1 to 200 characters, without control characters")
    }
    let city = text(address.city, "city", required: true, maximum: 100)
    let region = text(address.region, "region", required: false, maximum: 100)
    let postalCode = text(address.postalCode, "postal_code", required: false, maximum: 20)
    let country = address.countryCode.trimmingCharacters(in: .whitespaces).uppercased()
    if country.isEmpty {
      validation.add("\(field).country_code", "is required")
    } else if !(country.utf8.count == 2 && country.utf8.allSatisfy { (0x41...0x5A).contains($0) }) {
      validation.add("\(field).country_code", "must be a two-letter ISO 3166-1 code such as ZA")
    }
    let phone = validation.phone(address.phone, field: "\(field).phone")
    guard validation.violations.count == before, let recipient, let city else { return nil }
    return PostalAddress(
      recipientName: recipient, lines: lines, city: city, region: region, postalCode: postalCode,
      countryCode: country, phone: phone)
  }

  public var proto: Mart_Common_V1_Address {
    .with {
      $0.recipientName = recipientName
      $0.lines = lines
      $0.city = city
      $0.region = region ?? ""
      $0.postalCode = postalCode ?? ""
      $0.countryCode = countryCode
      $0.phone = phone ?? ""
    }
  }
}

extension RequestValidation {
  /// An E.164 number (`+` and 7 to 15 digits, no leading zero), or nil for an empty one.
  public mutating func phone(_ raw: String, field: String) -> String? {
    let phone = raw.trimmingCharacters(in: .whitespaces)
    if phone.isEmpty { return nil }
    let digits = phone.utf8.dropFirst()
    guard phone.utf8.first == UInt8(ascii: "+"), (7...15).contains(digits.count),
      digits.allSatisfy({ (0x30...0x39).contains($0) }), digits.first != UInt8(ascii: "0")
    else {
      add(field, "must be an E.164 phone number such as +27821234567")
      return nil
    }
    return phone
  }
}
