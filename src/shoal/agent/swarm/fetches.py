"""Which of a node's downloads fetch their blob from the origin: each download hears whether
another one does (``NodeFetching``), as its rule of sparing the other fetchers needs."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from shoal.p2p.download_state import NodeFetching

Post = Callable[[NodeFetching], None]


class NodeFetches:
    """The node's downloads and the ones among them fetching from the origin now.

    A download joins with the way to give it events (``post``) and leaves when it ends; it
    says when its origin fetch starts and ends. Each download is told ``NodeFetching`` when
    whether *another* download fetches changes (and at joining, if one does).
    """

    def __init__(self) -> None:
        self._posts: dict[Hashable, Post] = {}
        self._told: dict[Hashable, bool] = {}
        self._fetching: set[Hashable] = set()

    def join(self, download: Hashable, post: Post) -> None:
        self._posts[download] = post
        self._told[download] = False
        self._tell()

    def leave(self, download: Hashable) -> None:
        self._posts.pop(download, None)
        self._told.pop(download, None)
        if download in self._fetching:
            self._fetching.discard(download)
            self._tell()

    def started(self, download: Hashable) -> None:
        if download not in self._fetching:
            self._fetching.add(download)
            self._tell()

    def ended(self, download: Hashable) -> None:
        if download in self._fetching:
            self._fetching.discard(download)
            self._tell()

    def _tell(self) -> None:
        for download, post in list(self._posts.items()):
            others = len(self._fetching) - (download in self._fetching) > 0
            if others != self._told.get(download):
                self._told[download] = others
                post(NodeFetching(others))
