import Crypto
import Foundation

/// Opaque page tokens for keyset (cursor) pagination.
///
/// A token is the base64url of a small JSON document: a format version, a fingerprint of the
/// request's filters (so that a token is only accepted with the filters that produced it) and the
/// cursor, i.e. the sort key of the last row returned. Clients must treat it as opaque; nothing in
/// it is secret or trusted: every value is bound as a query parameter, and a token that does not
/// decode, or belongs to other filters, is INVALID_ARGUMENT on the page-token field.
public enum PageTokenCodec {
  private struct Envelope<Cursor: Codable>: Codable {
    var v: Int
    var f: String
    var c: Cursor
  }

  static let version = 1
  /// Longest token accepted (a cursor is a few ids and numbers; this only bounds the work).
  public static let maximumLength = 2048

  /// A fingerprint of the parts of a request that a token is bound to.
  public static func fingerprint(_ parts: [String]) -> String {
    let joined = parts.map { "\($0.utf8.count):\($0)" }.joined(separator: "|")
    return Base64URL.encode(Data(SHA256.hash(data: Data(joined.utf8))).prefix(12))
  }

  public static func encode<Cursor: Codable>(_ cursor: Cursor, fingerprint: String) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    // Encoding a plain Codable struct of strings and numbers cannot fail.
    let data = (try? encoder.encode(Envelope(v: version, f: fingerprint, c: cursor))) ?? Data()
    return Base64URL.encode(data)
  }

  /// A page of a keyset query that asked for more than `limit` rows (`limit + 1` tells whether
  /// there is a next page): the first `limit` rows, and the token of the next page, made from the
  /// cursor of the last row returned (empty when there are no more rows).
  public static func page<Row, Cursor: Codable>(
    _ rows: [Row], limit: Int, fingerprint: String, cursor: (Row) -> Cursor
  ) -> (rows: ArraySlice<Row>, nextPageToken: String) {
    let page = rows.prefix(limit)
    guard rows.count > limit, let last = page.last else { return (page, "") }
    return (page, encode(cursor(last), fingerprint: fingerprint))
  }

  /// The cursor of `token`; nil for an empty token (the first page).
  public static func decode<Cursor: Codable>(
    _ token: String, as type: Cursor.Type, fingerprint: String, field: String = "page_token"
  ) throws -> Cursor? {
    if token.isEmpty { return nil }
    guard token.utf8.count <= maximumLength, let data = Base64URL.decode(token),
      let envelope = try? JSONDecoder().decode(Envelope<Cursor>.self, from: data), envelope.v == version
    else {
      throw APIStatus.invalid(field, "is not a page token this service issued")
    }
    guard envelope.f == fingerprint else {
      throw APIStatus.invalid(field, "was issued for a request with other filters or sort order")
    }
    return envelope.c
  }
}
