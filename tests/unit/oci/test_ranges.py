"""parse_range: one byte range or a clear refusal (400 malformed/multi, 416 unsatisfiable)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.ranges import ByteRange, parse_range

SIZE = 100


class TestParseRange:
    """Single ranges resolve against the blob size; everything else is refused."""

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            (None, None),
            ("bytes=0-9", ByteRange(0, 9, SIZE)),
            ("bytes=0-0", ByteRange(0, 0, SIZE)),
            ("bytes=90-99", ByteRange(90, 99, SIZE)),
            ("bytes=50-", ByteRange(50, 99, SIZE)),  # open-ended
            ("bytes=0-", ByteRange(0, 99, SIZE)),
            ("bytes=-10", ByteRange(90, 99, SIZE)),  # suffix
            ("bytes=-1000", ByteRange(0, 99, SIZE)),  # suffix longer than the blob
            ("bytes=90-1000", ByteRange(90, 99, SIZE)),  # end beyond size clamps
            ("bytes=99-99", ByteRange(99, 99, SIZE)),
            (" bytes=1-2 ", ByteRange(1, 2, SIZE)),  # OWS around the field value
            ("Bytes=1-2", ByteRange(1, 2, SIZE)),  # the unit is case-insensitive
            ("bytes=0000000000000000001-2", ByteRange(1, 2, SIZE)),  # 19 digits
        ],
    )
    def test_resolves(self, header: str | None, expected: ByteRange | None) -> None:
        assert parse_range(header, SIZE) == expected

    @pytest.mark.parametrize(
        "header",
        [
            "bytes=0-9,20-29",  # multi-range
            "bytes=0-9, 20-29",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=5",
            "items=0-9",
            "0-9",
            "bytes=9-0",  # end before start
            "bytes=--5",
            "bytes=0x1-2",
            "bytes = 0 - 9",  # no whitespace inside the range (aiohttp refuses it too)
            "bytes=0 -9",
            "bytes=\u0661-\u0669",  # Arabic-Indic digits: str.isdigit says yes, HTTP says no
            "bytes=\uff10-\uff19",  # fullwidth digits
            "bytes=1" + "0" * 19 + "-",  # 20 digits
            "bytes=" + "9" * 5000 + "-",  # int() would refuse this many digits (a 500 before)
            "bytes=-" + "9" * 5000,
            "bytes=0-9" + " " * 200,
        ],
    )
    def test_malformed_is_400(self, header: str) -> None:
        with pytest.raises(DistributionError) as info:
            parse_range(header, SIZE)
        assert info.value.code is ErrorCode.RANGE_INVALID
        assert info.value.status == 400

    @pytest.mark.parametrize(("header", "size"), [("bytes=100-", SIZE), ("bytes=100-200", SIZE), ("bytes=-0", SIZE)])
    def test_unsatisfiable_is_416(self, header: str, size: int) -> None:
        with pytest.raises(DistributionError) as info:
            parse_range(header, size)
        assert info.value.code is ErrorCode.RANGE_NOT_SATISFIABLE
        assert info.value.status == 416
        assert info.value.headers == {"Content-Range": f"bytes */{size}"}

    def test_empty_blob_has_no_satisfiable_range(self) -> None:
        for header in ("bytes=0-", "bytes=-1", "bytes=0-0"):
            with pytest.raises(DistributionError) as info:
                parse_range(header, 0)
            assert info.value.status == 416

    def test_content_range_and_length(self) -> None:
        rng = parse_range("bytes=10-19", SIZE)
        assert rng is not None
        assert rng.length == 10
        assert rng.content_range() == "bytes 10-19/100"


class TestParseRangeProperties:
    """Any header text and any size: a resolved range inside the blob, or a 400/416, nothing else."""

    @settings(max_examples=400, deadline=None)
    @given(
        header=st.one_of(
            st.text(max_size=200),
            st.from_regex(r"\A[ \t]?[bB][yY][tT][eE][sS]=[0-9\u0660-\u0669 ]{0,25}-[0-9 ]{0,25}[ \t]?\Z"),
        ),
        size=st.integers(min_value=0, max_value=1 << 62),
    )
    def test_total(self, header: str, size: int) -> None:
        try:
            rng = parse_range(header, size)
        except DistributionError as exc:
            status = exc.status
        else:
            status = 206
        assert status in (206, 400, 416)
        if status != 206:
            return
        assert rng is not None
        assert 0 <= rng.start <= rng.end < size
        assert rng.length == rng.stop - rng.start
        assert header.strip(" \t").isascii()

    @settings(max_examples=300, deadline=None)
    @given(start=st.integers(min_value=0, max_value=10**18), length=st.integers(min_value=1, max_value=10**18))
    def test_well_formed_ranges_resolve(self, start: int, length: int) -> None:
        size = start + length
        assert parse_range(f"bytes={start}-{size - 1}", size) == ByteRange(start, size - 1, size)
        assert parse_range(f"bytes={start}-", size) == ByteRange(start, size - 1, size)
        assert parse_range(f"bytes=-{length}", size) == ByteRange(start, size - 1, size)
