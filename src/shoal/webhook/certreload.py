"""Serve a renewed certificate without a restart.

cert-manager renews the webhook's Secret, and a re-render of the chart may generate a new
CA; kubelet then swaps the mounted files (an atomic ``..data`` symlink change). The API
server trusts only the new CA, and with ``failurePolicy: Ignore`` a webhook still serving
the old certificate silently stops accelerating. :class:`CertReloader` polls the files'
identity and loads the new pair into the live ``SSLContext``: handshakes after that use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
RELOAD_INTERVAL = 10.0

Stamp = tuple[tuple[int, int, int], ...]


class CertReloader:
    """Reload ``cert``/``key`` into ``context`` when either file changes.

    Parameters:
        context: the server's SSLContext (already holding the current pair).
        cert, key: PEM paths, as given to ``load_cert_chain``.
        interval: seconds between checks in :meth:`run`.
    """

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, *, interval: float = RELOAD_INTERVAL) -> None:
        self.context = context
        self.cert, self.key = Path(cert), Path(key)
        self.interval = interval
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> Stamp | None:
        try:
            stats = [os.stat(p) for p in (self.cert, self.key)]  # follows the ..data symlinks
        except OSError:
            return None
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def check(self) -> bool:
        """Reload if the files changed; True when a new pair is now served.

        A pair that does not load (a key from the next renewal next to the old certificate)
        is retried at the next check; the old pair keeps being served meanwhile.
        """
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            log.warning("new serving certificate does not load yet: %s", exc)
            return False
        self._stamp = stamp
        log.info("reloaded serving certificate %s", self.cert)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.check)

    async def cleanup_ctx(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: reload in the background while the app runs."""
        task = asyncio.create_task(self.run(), name="cert-reload")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
