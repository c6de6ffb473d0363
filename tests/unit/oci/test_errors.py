"""OCI error bodies and the one code -> status table."""

from __future__ import annotations

import json

import pytest

from shoal.oci.errors import STATUS, DistributionError, ErrorCode


class TestDistributionError:
    """Errors render as ``{"errors": [{code, message, detail?}]}`` with the table's status."""

    def test_every_code_has_a_status(self) -> None:
        assert set(STATUS) == set(ErrorCode)
        assert all(400 <= status < 600 for status in STATUS.values())

    @pytest.mark.parametrize(
        ("code", "status"),
        [
            (ErrorCode.BLOB_UNKNOWN, 404),
            (ErrorCode.NAME_INVALID, 400),
            (ErrorCode.NAME_UNKNOWN, 404),
            (ErrorCode.UNAUTHORIZED, 401),
            (ErrorCode.DENIED, 403),
            (ErrorCode.UNSUPPORTED, 405),
            (ErrorCode.RANGE_NOT_SATISFIABLE, 416),
            (ErrorCode.UPSTREAM_UNAVAILABLE, 502),
        ],
    )
    def test_status(self, code: ErrorCode, status: int) -> None:
        assert DistributionError(code, "x").status == status

    def test_body_with_and_without_detail(self) -> None:
        plain = json.loads(DistributionError(ErrorCode.DENIED, "no").body())
        assert plain == {"errors": [{"code": "DENIED", "message": "no"}]}
        detailed = json.loads(DistributionError(ErrorCode.NAME_UNKNOWN, "who?", {"configured": ["a"]}).body())
        assert detailed == {"errors": [{"code": "NAME_UNKNOWN", "message": "who?", "detail": {"configured": ["a"]}}]}

    def test_status_override_and_headers(self) -> None:
        exc = DistributionError(ErrorCode.UPSTREAM_INVALID, "teapot", status=418, headers={"X": "1"})
        assert (exc.status, exc.headers, str(exc)) == (418, {"X": "1"}, "teapot")
