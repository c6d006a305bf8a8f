import Testing

@testable import UserService

/// User fields refuse control characters by MartRuntime's one definition.
@Suite struct UserTextValidationTests {
  @Test func namesRefuseControlCharactersButKeepFormatCharacters() throws {
    for bad in ["Ada\u{7F}", "Ada\u{1B}[31m", "A\u{85}da", "Ada\nLovelace"] {
      guard case .failure(let violation) = Validation.fullName(bad, field: "full_name") else {
        Issue.record("accepted \(bad.debugDescription)")
        continue
      }
      #expect(violation.reason == "must not contain control characters")
    }
    // A zero-width non-joiner belongs in Persian names; it is a format character, not a control.
    #expect(try Validation.fullName("\u{645}\u{6CC}\u{200C}\u{631}\u{648}\u{62F}", field: "full_name").get() != "")
  }
}
