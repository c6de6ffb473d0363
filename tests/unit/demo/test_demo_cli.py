"""``shoal demo``'s messages: bad values are usage errors; a failed pull says why, in full."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from shoal.cli.main import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestBadValues:
    """A value the demo cannot use is named, with what it wants; exit status 2, no traceback."""

    def test_size_with_an_unknown_suffix(self) -> None:
        result = CliRunner().invoke(cli, ["demo", "--size", "10X"])
        assert result.exit_code == 2
        assert "'10X'" in result.output
        assert "K, M, G or T" in result.output
        assert "Traceback" not in result.output

    def test_origin_that_is_not_a_url(self) -> None:
        result = CliRunner().invoke(cli, ["demo", "--origin", "127.0.0.1:5000", "--image", "a/b:c"])
        assert result.exit_code == 2
        assert "'127.0.0.1:5000'" in result.output
        assert "http://" in result.output

    def test_image_that_is_not_a_repository(self) -> None:
        result = CliRunner().invoke(cli, ["demo", "--origin", "http://127.0.0.1:5000", "--image", "A B:c"])
        assert result.exit_code == 2
        assert "'A B:c'" in result.output


class TestOriginDown:
    """With the origin given and down, every node fails; the title names the origin's image and
    each node's cause is printed whole (not cut off in a table cell)."""

    def test_title_and_causes(self, tmp_path: Path) -> None:
        port = _closed_port()
        result = CliRunner().invoke(
            cli,
            [
                "demo",
                "--nodes",
                "2",
                "--origin",
                f"http://127.0.0.1:{port}",
                "--image",
                "a/b:c",
                "--workdir",
                str(tmp_path),
            ],
            terminal_width=80,
        )
        assert result.exit_code == 1
        assert f"pulled 127.0.0.1:{port}/a/b:c at once" in " ".join(result.output.split())
        assert "registry.demo" not in result.output
        causes = [line for line in result.output.splitlines() if line.startswith("node ")]
        assert len(causes) >= 2
        joined = " ".join(result.output.split())
        assert f"manifest 127.0.0.1:{port}/a/b:c: HTTP 502" in joined
        assert f"registry 127.0.0.1:{port} cannot be reached (connection refused)" in joined
        assert "Error: 2 of 2 pulls failed" in result.output
        assert "Traceback" not in result.output
