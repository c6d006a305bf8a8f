import Foundation
import Mustache

/// A message rendered for one recipient: the subject (also the in-app title), the plain text (the
/// in-app body and the SMS), and the HTML email.
struct RenderedMessage: Sendable, Equatable {
  var subject: String
  var text: String
  var html: String
}

/// The message templates: `Templates/<kind>.<locale>.mustache` with a subject, a text and an HTML
/// section, and `Templates/layout.<locale>.mustache`, the HTML document the section goes into.
/// They are embedded in the binary and compiled when the service starts: a broken or missing one
/// stops start-up rather than a message.
///
/// Subject and text are plain text (nothing escaped); HTML escapes every `{{value}}`. A locale
/// falls back from "de-CH" to "de" to "en".
struct NotificationTemplates: Sendable {
  static let fallbackLocale = "en"

  /// The embedded files by name, without the extension. SwiftPM names an embedded file after its
  /// file name alone, so every template is listed here; a missing file does not compile.
  static let embedded: [String: [UInt8]] = [
    "layout.en": PackageResources.layout_en_mustache, "layout.de": PackageResources.layout_de_mustache,
    "welcome.en": PackageResources.welcome_en_mustache, "welcome.de": PackageResources.welcome_de_mustache,
    "order_placed.en": PackageResources.order_placed_en_mustache,
    "order_placed.de": PackageResources.order_placed_de_mustache,
    "order_paid.en": PackageResources.order_paid_en_mustache, "order_paid.de": PackageResources.order_paid_de_mustache,
    "order_cancelled.en": PackageResources.order_cancelled_en_mustache,
    "order_cancelled.de": PackageResources.order_cancelled_de_mustache,
    "order_shipped.en": PackageResources.order_shipped_en_mustache,
    "order_shipped.de": PackageResources.order_shipped_de_mustache,
    "order_delivered.en": PackageResources.order_delivered_en_mustache,
    "order_delivered.de": PackageResources.order_delivered_de_mustache,
    "payment_failed.en": PackageResources.payment_failed_en_mustache,
    "payment_failed.de": PackageResources.payment_failed_de_mustache,
    "payment_refunded.en": PackageResources.payment_refunded_en_mustache,
    "payment_refunded.de": PackageResources.payment_refunded_de_mustache,
    "low_stock.en": PackageResources.low_stock_en_mustache, "low_stock.de": PackageResources.low_stock_de_mustache,
    "test.en": PackageResources.test_en_mustache, "test.de": PackageResources.test_de_mustache,
    "roles_changed.en": PackageResources.roles_changed_en_mustache,
    "roles_changed.de": PackageResources.roles_changed_de_mustache,
    "verify_email.en": PackageResources.verify_email_en_mustache,
    "verify_email.de": PackageResources.verify_email_de_mustache,
    "registration_attempted.en": PackageResources.registration_attempted_en_mustache,
    "registration_attempted.de": PackageResources.registration_attempted_de_mustache,
    "password_reset.en": PackageResources.password_reset_en_mustache,
    "password_reset.de": PackageResources.password_reset_de_mustache,
    "password_changed.en": PackageResources.password_changed_en_mustache,
    "password_changed.de": PackageResources.password_changed_de_mustache,
  ]

  struct Broken: Error, CustomStringConvertible {
    var template: String
    var reason: String
    var description: String { "notification template \(template) is broken: \(reason)" }
  }

  private struct Compiled: Sendable {
    var subject: MustacheTemplate
    var text: MustacheTemplate
    var html: MustacheTemplate
  }

  private let kinds: [String: Compiled]
  private let layouts: [String: MustacheTemplate]
  /// The locales that have every kind.
  let locales: Set<String>

  /// Compiles every embedded template; throws `Broken` naming the first that does not parse, lacks
  /// a section, or leaves a kind without its fallback-locale version.
  init(files: [String: [UInt8]] = Self.embedded) throws {
    var kinds: [String: Compiled] = [:]
    var layouts: [String: MustacheTemplate] = [:]
    for (name, bytes) in files {
      let source = String(decoding: bytes, as: UTF8.self)
      if name.hasPrefix("layout.") {
        layouts[String(name.dropFirst("layout.".count))] = try Self.compile(source, html: true, name: name)
        continue
      }
      let sections = try Self.sections(of: source, name: name)
      guard sections.subject.split(separator: "\n").count == 1 else {
        throw Broken(template: name, reason: "the subject must be one line")
      }
      kinds[name] = Compiled(
        subject: try Self.compile(sections.subject, html: false, name: name),
        text: try Self.compile(sections.text, html: false, name: name),
        html: try Self.compile(sections.html, html: true, name: name))
    }
    let locales = Set(layouts.keys)
    for locale in locales {
      for kind in NotificationKind.allCases where kinds["\(kind.rawValue).\(locale)"] == nil {
        throw Broken(template: "\(kind.rawValue).\(locale)", reason: "it is missing (every locale has every kind)")
      }
    }
    guard locales.contains(Self.fallbackLocale) else {
      throw Broken(template: "layout.\(Self.fallbackLocale)", reason: "the fallback locale's layout is missing")
    }
    self.kinds = kinds
    self.layouts = layouts
    self.locales = locales
  }

  /// The locale whose templates serve `requested`: itself, its language, or the fallback.
  func locale(for requested: String) -> String {
    if locales.contains(requested) { return requested }
    let language = String(requested.prefix { $0 != "-" }).lowercased()
    return locales.contains(language) ? language : Self.fallbackLocale
  }

  /// Renders `kind` in the best locale for `locale` with `values` (see the templates for the names
  /// each kind uses; `locale` is added).
  func render(_ kind: NotificationKind, locale requested: String, values: [String: Any]) -> RenderedMessage {
    let locale = self.locale(for: requested)
    var values = values
    values["locale"] = locale
    // `init` guarantees every kind in every locale, and the fallback layout.
    guard let templates = kinds["\(kind.rawValue).\(locale)"], let layout = layouts[locale] else {
      return RenderedMessage(subject: kind.rawValue, text: "", html: "")
    }
    let subject = templates.subject.render(values).trimmingCharacters(in: .whitespacesAndNewlines)
    let text = Self.tidy(templates.text.render(values))
    var page = values
    page["content"] = templates.html.render(values)
    return RenderedMessage(subject: subject, text: text, html: layout.render(page))
  }

  // MARK: - Parsing

  static let markers = ["subject", "text", "html"]

  /// The three sections of a kind's file, split at the lines `{{! subject }}`, `{{! text }}`
  /// and `{{! html }}` (Mustache comments, so the file stays a valid template).
  static func sections(of source: String, name: String) throws -> (subject: String, text: String, html: String) {
    var found: [String: [Substring]] = [:]
    var current: String?
    for line in source.split(separator: "\n", omittingEmptySubsequences: false) {
      let trimmed = line.trimmingCharacters(in: .whitespaces)
      if trimmed.hasPrefix("{{!"), trimmed.hasSuffix("}}") {
        let word = trimmed.dropFirst(3).dropLast(2).trimmingCharacters(in: .whitespaces)
        if markers.contains(word) {
          guard found[word] == nil else { throw Broken(template: name, reason: "two \(word) sections") }
          current = word
          found[word] = []
          continue
        }
      }
      if let current { found[current, default: []].append(line) }
    }
    func section(_ word: String) throws -> String {
      let text = (found[word] ?? []).joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
      guard !text.isEmpty else { throw Broken(template: name, reason: "no \(word) section") }
      return text
    }
    return (try section("subject"), try section("text"), try section("html"))
  }

  static func compile(_ source: String, html: Bool, name: String) throws -> MustacheTemplate {
    do {
      return try MustacheTemplate(string: html ? source : "{{% CONTENT_TYPE: TEXT}}" + source)
    } catch {
      throw Broken(template: name, reason: "\(error)")
    }
  }

  /// Text as a message carries it: no trailing spaces, at most one blank line in a row (optional
  /// parts that rendered empty leave blank lines behind).
  static func tidy(_ text: String) -> String {
    var lines: [String] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
      let line = String(line.reversed().drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed())
      if line.isEmpty, lines.last?.isEmpty ?? true { continue }
      lines.append(line)
    }
    while lines.last?.isEmpty == true { lines.removeLast() }
    return lines.joined(separator: "\n")
  }
}
