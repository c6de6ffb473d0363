"""The node's content-addressed disk cache: complete blobs, blobs being written, eviction."""

from shoal.store.blobstore import BlobStore, StoreError, StoreFullError
from shoal.store.eviction import CacheEntry
from shoal.store.partial import DigestMismatchError, PartialBlob, PartialState

__all__ = [
    "BlobStore",
    "CacheEntry",
    "DigestMismatchError",
    "PartialBlob",
    "PartialState",
    "StoreError",
    "StoreFullError",
]
