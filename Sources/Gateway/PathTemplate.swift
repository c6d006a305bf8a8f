// google.api.http path templates, parsed and matched by the gateway itself rather than by
// Hummingbird's router: the grammar has things a web router lacks (`{product.id}` nested field
// paths, `{name=shelves/*/books/*}` sub-patterns, `**`, a `:verb` suffix), and the gateway must
// tell "no such path" (404) from "not with this method" (405, with `Allow`).
//
//   Template = "/" Segments [ Verb ] ;
//   Segments = Segment { "/" Segment } ;
//   Segment  = "*" | "**" | LITERAL | Variable ;
//   Variable = "{" FieldPath [ "=" Segments ] "}" ;
//   FieldPath = IDENT { "." IDENT } ;
//   Verb     = ":" LITERAL ;

/// A parsed path template.
struct PathTemplate: Sendable, Equatable, CustomStringConvertible {
  enum Segment: Sendable, Equatable {
    case literal(String)
    /// `*`: exactly one non-empty segment.
    case wildcard
    /// `**`: zero or more segments (only last).
    case deepWildcard
  }

  /// A `{field.path=…}` capture over `segments[range]`.
  struct Variable: Sendable, Equatable {
    var fieldPath: [String]
    var range: Range<Int>
  }

  struct SyntaxError: Error, Equatable, CustomStringConvertible {
    var template: String
    var reason: String
    var description: String { "path template \(template.debugDescription): \(reason)" }
  }

  var segments: [Segment]
  var variables: [Variable]
  var verb: String?
  var description: String

  init(_ template: String) throws(SyntaxError) {
    func fail(_ reason: String) -> SyntaxError { SyntaxError(template: template, reason: reason) }
    guard template.hasPrefix("/") else { throw fail("must start with '/'") }
    var body = Substring(template.dropFirst())
    // The verb is the text after a ':' outside braces, in the last segment.
    var depth = 0
    var verbStart: Substring.Index?
    for index in body.indices {
      switch body[index] {
      case "{": depth += 1
      case "}": depth -= 1
      case ":" where depth == 0: verbStart = index
      case "/" where depth == 0: verbStart = nil
      default: break
      }
    }
    if let verbStart {
      let verb = body[body.index(after: verbStart)...]
      guard !verb.isEmpty, Self.isLiteral(verb) else { throw fail("invalid verb") }
      self.verb = String(verb)
      body = body[..<verbStart]
    } else {
      self.verb = nil
    }
    var segments: [Segment] = []
    var variables: [Variable] = []
    var rest = body
    while true {
      if rest.first == "{" {
        guard let close = rest.firstIndex(of: "}") else { throw fail("unclosed '{'") }
        let inner = rest[rest.index(after: rest.startIndex)..<close]
        let parts = inner.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        let fieldPath = parts[0].split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard fieldPath.allSatisfy(Self.isIdentifier) else { throw fail("invalid field path \(parts[0])") }
        guard !variables.contains(where: { $0.fieldPath == fieldPath }) else {
          throw fail("field \(parts[0]) bound twice")
        }
        let start = segments.count
        if parts.count == 2 {
          guard !parts[1].isEmpty, !parts[1].contains("{") else { throw fail("invalid sub-pattern in \(inner)") }
          for piece in parts[1].split(separator: "/", omittingEmptySubsequences: false) {
            segments.append(try Self.segment(piece, fail: fail))
          }
        } else {
          segments.append(.wildcard)
        }
        variables.append(Variable(fieldPath: fieldPath, range: start..<segments.count))
        rest = rest[rest.index(after: close)...]
      } else {
        let end = rest.firstIndex(of: "/") ?? rest.endIndex
        let piece = rest[..<end]
        guard !piece.contains("{"), !piece.contains("}") else { throw fail("'{' in the middle of a segment") }
        segments.append(try Self.segment(piece, fail: fail))
        rest = rest[end...]
      }
      if rest.isEmpty { break }
      guard rest.first == "/" else { throw fail("expected '/' after a variable") }
      rest = rest.dropFirst()
    }
    if let deep = segments.firstIndex(of: .deepWildcard), deep != segments.count - 1 {
      throw fail("'**' must be the last segment")
    }
    self.segments = segments
    self.variables = variables
    self.description = template
  }

  private static func segment(_ text: Substring, fail: (String) -> SyntaxError) throws(SyntaxError) -> Segment {
    switch text {
    case "*": return .wildcard
    case "**": return .deepWildcard
    case "": throw fail("empty segment")
    default:
      guard isLiteral(text) else { throw fail("invalid literal \(text)") }
      return .literal(String(text))
    }
  }

  /// Unreserved characters, sub-delimiters other than the template's own, '@' and '%'-escapes.
  private static func isLiteral(_ text: Substring) -> Bool {
    text.unicodeScalars.allSatisfy { scalar in
      switch scalar {
      case "a"..."z", "A"..."Z", "0"..."9", "-", ".", "_", "~", "%", "!", "$", "&", "'", "(", ")", "+", ",", ";",
        "@":
        true
      default: false
      }
    }
  }

  private static func isIdentifier(_ text: String) -> Bool {
    guard let first = text.unicodeScalars.first,
      first == "_" || ("a"..."z").contains(first) || ("A"..."Z").contains(first)
    else { return false }
    return text.unicodeScalars.allSatisfy {
      $0 == "_" || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
    }
  }

  /// How specific the template is, for choosing among templates that match the same path:
  /// compared segment by segment, a literal beats a variable, and `*` beats `**`; then a verb wins.
  var specificity: [Int] {
    segments.map { segment in
      switch segment {
      case .literal: 3
      case .wildcard: 2
      case .deepWildcard: 1
      }
    } + [verb == nil ? 0 : 1]
  }

  static func isMoreSpecific(_ lhs: [Int], than rhs: [Int]) -> Bool {
    for (left, right) in zip(lhs, rhs) where left != right { return left > right }
    return lhs.count > rhs.count
  }
}

/// A request path split into raw (still percent-encoded) segments.
struct RequestPath: Sendable {
  var raw: String
  var segments: [Substring]

  /// Nil unless the path starts with '/'.
  init?(_ raw: String) {
    guard raw.hasPrefix("/") else { return nil }
    self.raw = raw
    self.segments = raw.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
  }
}

/// What a path variable captured, percent-decoded.
struct PathBinding: Sendable, Equatable {
  var fieldPath: [String]
  var value: String
}

/// A path that is not valid percent-encoded UTF-8.
struct MalformedPathError: Error, Equatable {}

extension PathTemplate {
  /// The variables' values if `path` matches; nil if not. Throws for a path that matches but whose
  /// captured text is not valid percent-encoding.
  func match(_ path: RequestPath) throws(MalformedPathError) -> [PathBinding]? {
    var raw = path.segments
    if let verb {
      guard let last = raw.last, last.hasSuffix(":" + verb) else { return nil }
      raw[raw.count - 1] = last.dropLast(verb.utf8.count + 1)
    }
    // Where each pattern segment starts among the request's segments.
    var starts: [Int] = []
    var position = 0
    for segment in segments {
      starts.append(position)
      switch segment {
      case .deepWildcard:
        position = raw.count
      case .wildcard:
        guard position < raw.count, !raw[position].isEmpty else { return nil }
        position += 1
      case .literal(let literal):
        guard position < raw.count, try Self.decode(raw[position], keepingSlashes: false) == literal else {
          return nil
        }
        position += 1
      }
    }
    guard position == raw.count else { return nil }
    starts.append(position)
    var bindings: [PathBinding] = []
    for variable in variables {
      let captured = raw[starts[variable.range.lowerBound]..<starts[variable.range.upperBound]]
      let multiSegment = variable.range.count > 1 || segments[variable.range.lowerBound] == .deepWildcard
      var parts: [String] = []
      for part in captured {
        // A multi-segment capture keeps "%2F" encoded, so that '/' in it stays unambiguous.
        parts.append(try Self.decode(part, keepingSlashes: multiSegment))
      }
      bindings.append(PathBinding(fieldPath: variable.fieldPath, value: parts.joined(separator: "/")))
    }
    return bindings
  }

  /// Percent-decodes one segment; `keepingSlashes` leaves `%2F` as it is.
  static func decode(_ segment: Substring, keepingSlashes: Bool) throws(MalformedPathError) -> String {
    guard segment.utf8.contains(UInt8(ascii: "%")) else { return String(segment) }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(segment.utf8.count)
    var iterator = segment.utf8.makeIterator()
    while let byte = iterator.next() {
      guard byte == UInt8(ascii: "%") else {
        bytes.append(byte)
        continue
      }
      guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
        throw MalformedPathError()
      }
      let decoded = high << 4 | low
      if keepingSlashes && decoded == UInt8(ascii: "/") {
        bytes.append(contentsOf: "%2F".utf8)
      } else {
        bytes.append(decoded)
      }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else { throw MalformedPathError() }
    return text
  }

  private static func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}

/// Finds the route for a method and path among templates: the most specific template of that
/// method wins; a path that only other methods serve is a 405 with the methods it allows.
struct RouteMatcher<Value: Sendable>: Sendable {
  struct Entry: Sendable {
    var method: String
    var template: PathTemplate
    var value: Value
  }

  enum Match {
    case found(Value, [PathBinding])
    case methodNotAllowed(allowed: [String])
    case notFound
    case malformedPath
  }

  private(set) var entries: [Entry] = []

  init() {}

  mutating func add(method: String, template: PathTemplate, value: Value) {
    entries.append(Entry(method: method.uppercased(), template: template, value: value))
  }

  /// `HEAD` is answered by the `GET` route.
  ///
  /// A path whose last segment ends in a custom verb that some template names (`…/{id}:cancel`)
  /// is that verb's resource only: a template without a verb (`…/{id}`) would also take it, with
  /// ":cancel" as part of the id, and a GET there would be offered as allowed.
  func match(method: String, path: String) -> Match {
    guard let requestPath = RequestPath(path) else { return .notFound }
    let wanted = method == "HEAD" ? "GET" : method
    var matches: [(entry: Entry, bindings: [PathBinding])] = []
    for entry in entries {
      do {
        if let bindings = try entry.template.match(requestPath) { matches.append((entry, bindings)) }
      } catch {
        return .malformedPath
      }
    }
    if matches.contains(where: { $0.entry.template.verb != nil }) {
      matches.removeAll { $0.entry.template.verb == nil }
    }
    var best: (entry: Entry, bindings: [PathBinding], specificity: [Int])?
    var allowed: Set<String> = []
    for (entry, bindings) in matches {
      allowed.insert(entry.method)
      guard entry.method == wanted else { continue }
      let specificity = entry.template.specificity
      if best == nil || PathTemplate.isMoreSpecific(specificity, than: best?.specificity ?? []) {
        best = (entry, bindings, specificity)
      }
    }
    if let best { return .found(best.entry.value, best.bindings) }
    if allowed.isEmpty { return .notFound }
    if allowed.contains("GET") { allowed.insert("HEAD") }
    allowed.insert("OPTIONS")
    return .methodNotAllowed(allowed: allowed.sorted())
  }

  /// The methods some route serves at this path (for `OPTIONS`), empty if none.
  func methods(at path: String) -> [String] {
    switch match(method: "OPTIONS", path: path) {
    case .methodNotAllowed(let allowed): allowed
    default: []
    }
  }
}
