"""The careful path's row checks: what Postgres would refuse is caught in Python, with a reason."""

from __future__ import annotations

import io

from replicator.model import ColumnSpec, TableSpec
from replicator.pipeline import rows

SPEC = TableSpec(
    object="Account", schema="s", name="account", key="id",
    columns=(
        ColumnSpec("id", "Id", "varchar(18)", False),
        ColumnSpec("isdeleted", "IsDeleted", "boolean"),
        ColumnSpec("n", "N", "integer"),
        ColumnSpec("amount", "Amount", "numeric"),
        ColumnSpec("d", "D", "date"),
        ColumnSpec("ts", "Ts", "timestamptz"),
        ColumnSpec("t", "T", "time"),
    ),
)


def test_good_rows_pass_and_bad_rows_carry_a_reason():
    data = [
        ["001000000000001AAA", "true", "5", "1.5", "2024-01-31", "2024-05-01T12:34:56.000Z", "08:30:00.000Z"],
        ["001000000000002AAA", "", "", "", "", "", ""],
        ["001000000000003AAA", "maybe", "5", "1", "2024-01-01", "2024-05-01T12:34:56.000+0000", "08:30:00"],
        ["001000000000004AAA", "true", "x", "1", "2024-01-01", "2024-05-01T12:34:56Z", "08:30"],
        ["001000000000005AAA", "true"],
        ["", "true", "1", "1", "2024-01-01", "2024-05-01T12:34:56Z", "08:30"],
        ["001000000000006AAA", "true", "1", "NaN", "2024-01-01", "2024-05-01T12:34:56Z", "08:30"],
        ["001000000000007AAA", "true", "1", "1", "2024-02-30", "2024-05-01T12:34:56Z", "08:30"],
        ["001000000000008AAA", "true", "99999999999", "1", "2024-02-01", "2024-05-01T12:34:56Z", "08:30"],
    ]
    out = list(rows.split_rows(data, SPEC))
    reasons = [r for _, r in out]
    assert reasons[0] is None and reasons[1] is None
    assert "isdeleted" in reasons[2]
    assert "column n" in reasons[3]
    assert reasons[4] == "expected 7 columns, got 2"
    assert "key field Id is empty" in reasons[5]
    assert "amount" in reasons[6]
    assert "column d" in reasons[7]
    assert "out of range" in reasons[8]


def test_header_must_match_columns():
    rows.check_header(["Id", "IsDeleted", "N", "Amount", "D", "Ts", "T"], SPEC)
    try:
        rows.check_header(["Id", "N"], SPEC)
    except ValueError as exc:
        assert "do not match" in str(exc)
    else:
        raise AssertionError("a different header was accepted")


def test_csv_round_trip_keeps_quotes_and_newlines():
    buf = io.StringIO()
    rows.csv_writer(buf).writerows([["a", 'he said "hi"', "line1\nline2", "é日本"]])
    parsed = list(rows.page_rows(io.StringIO(buf.getvalue())))
    assert parsed == [["a", 'he said "hi"', "line1\nline2", "é日本"]]


def test_row_encoder_writes_one_record_per_row_that_decode_row_reads_back():
    encoder = rows.RowEncoder()
    row = ["001000000000001AAA", 'he said "hi"', "line1\r\nline2", "a,b", "é日本", ""]
    record = encoder.encode(row)
    assert record.endswith(b"\n") and rows.decode_row(record) == row
    assert encoder.encode(["x"]) == b'"x"\n'  # nothing left over from the row before


async def test_checked_page_serves_any_range_of_rows_without_the_skipped_ones():
    from replicator.pipeline.backfill import CheckedPage
    from replicator.salesforce.bulk import ResultPage

    with CheckedPage("Account", SPEC, ResultPage("750", "MA", "url")) as page:
        page.start([c.field for c in SPEC.columns])
        for n in range(10):
            page.append([f"00100000000000{n}AAA", "true", str(n), "", "", "", "line\nbreak"])
        assert page.count == 10

        async def ids(start, stop, skip=()):
            data = b"".join([c async for c in page.chunks(start, stop, skip)])
            parsed = list(rows.page_rows(io.StringIO(data.decode(), newline="")))
            assert parsed[0][0] == "Id"
            return [int(r[2]) for r in parsed[1:]]

        assert await ids(0, 10) == list(range(10))
        assert await ids(2, 7, skip=[0, 3, 4, 9]) == [2, 5, 6]
        assert await ids(3, 5, skip=[3, 4]) == []
        keys = b"".join([c async for c in page.key_chunks()]).decode()
        assert keys.splitlines()[4] == '"001000000000004AAA","4"'
        letter = page.refused(7, "because")
        assert (letter.key, letter.reason, letter.payload["row"][2], letter.payload["locator"]) == (
            "001000000000007AAA", "because", "7", "MA")
