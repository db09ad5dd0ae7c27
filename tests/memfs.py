"""A remote filesystem for tests: Beam's ``FileSystem`` for ``memfs://bucket/path`` over
fsspec's in-memory filesystem. Like an object store (GCS, S3): no directories, a file's
checksum is a hash of its content, rename is copy + delete. Importing this module registers
the scheme with Beam's ``FileSystems`` in this process (Beam finds filesystems by subclass).
"""

from __future__ import annotations

import hashlib

import fsspec
from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)

SCHEME = "memfs"
PREFIX = f"{SCHEME}://"


def _store():
    return fsspec.filesystem("memory")


def _key(path: str) -> str:
    if not path.startswith(PREFIX):
        raise ValueError(f"not a {PREFIX} path: {path}")
    return "/" + path[len(PREFIX):].lstrip("/")


def _path(key: str) -> str:
    return PREFIX + key.lstrip("/")


def clear() -> None:
    """Forget every file (fsspec's memory store is shared by the whole process)."""
    store = _store()
    for key in list(store.store):
        if key.startswith("/"):
            store.store.pop(key)
    store.pseudo_dirs[:] = [""]


class MemoryObjectStore(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # no directories on an object store

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        store, prefix = _store(), _key(dir_or_prefix)
        for key, file in sorted(store.store.items()):
            if key.startswith(prefix):
                yield FileMetadata(_path(key), len(file.getvalue()),
                                   file.modified.timestamp())

    def _open(self, path: str, mode: str, compression_type):
        raw = _store().open(_key(path), mode)
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        if not self.exists(path):
            raise BeamIOError(f"no such object: {path}")
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        store = _store()
        for source, destination in zip(source_file_names, destination_file_names):
            store.pipe_file(_key(destination), store.cat_file(_key(source)))

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path: str) -> bool:
        return _key(path) in _store().store

    def size(self, path: str) -> int:
        return len(_store().cat_file(_key(path)))

    def last_updated(self, path: str) -> float:
        return _store().store[_key(path)].modified.timestamp()

    def checksum(self, path: str) -> str:
        return hashlib.md5(_store().cat_file(_key(path))).hexdigest()

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        store = _store()
        missing = {}
        for path in paths:
            key = _key(path)
            doomed = [k for k in store.store if k == key or k.startswith(key.rstrip("/") + "/")]
            if not doomed:
                missing[path] = FileNotFoundError(path)
            for k in doomed:
                store.store.pop(k)
        if missing:
            raise BeamIOError("delete failed", missing)
