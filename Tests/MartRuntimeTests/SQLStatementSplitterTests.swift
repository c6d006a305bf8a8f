import MartRuntime
import Testing

@Suite struct SQLStatementSplitterTests {
  @Test func splitsAtTopLevelSemicolonsOnly() {
    let script = """
      -- a comment; not a statement
      CREATE TABLE a (x text DEFAULT 'semi;colon', "we;ird" int);
      /* block; /* nested; */ still comment; */
      CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'no; updates'; END;
      $$;
      CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;
      INSERT INTO a VALUES ('it''s; fine', 1);
      SELECT $1
      """
    let statements = SQLStatementSplitter.split(script)
    #expect(statements.count == 5)
    #expect(statements[0].hasSuffix("\"we;ird\" int)"))
    #expect(statements[1].contains("RAISE EXCEPTION 'no; updates'; END;"))
    #expect(statements[2].hasSuffix("$body$ SELECT 1; $body$"))
    #expect(statements[3] == "INSERT INTO a VALUES ('it''s; fine', 1)")
    #expect(statements[4] == "SELECT $1")
  }

  @Test func commentOnlyAndEmptyPiecesAreDropped() {
    #expect(SQLStatementSplitter.split(";;  \n-- nothing\n;/* nor this */;").isEmpty)
  }
}
