"""Caches keyed by a model file's identity on disk: real path, size and modification time.

A file replaced on disk (same name, new content) gets a new key, so it is read again.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class FileFacts(Generic[T]):
    """Something small read from a file's headers (its description, its encoder), kept for good."""

    def __init__(self, read: Callable[[str], T]):
        self._read = read
        self._lock = threading.Lock()
        self._values: dict[tuple, T] = {}

    def __call__(self, path: str) -> T:
        key = file_key(path)
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = self._read(path)
        with self._lock:
            self._values[key] = value
        return value


class LoadedFiles(Generic[T]):
    """One loaded model per file, held weakly: it stays while a node output or a patched model
    still uses it, and a stale copy of a replaced file is dropped when the new one loads."""

    def __init__(self, load: Callable[[str], T]):
        self._load = load
        self._lock = threading.Lock()
        self._values: "weakref.WeakValueDictionary[tuple, T]" = weakref.WeakValueDictionary()

    def __call__(self, path: str) -> T:
        key = file_key(path)
        with self._lock:
            cached = self._values.get(key)
        if cached is not None:
            return cached
        value = self._load(path)
        with self._lock:
            for old in [k for k in list(self._values.keys()) if k[0] == key[0]]:
                self._values.pop(old, None)
            self._values[key] = value
        return value

    def values(self) -> list[T]:
        with self._lock:
            return list(self._values.values())
