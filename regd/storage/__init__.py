"""Blob bytes: the driver protocol, its drivers, and Distribution's path layout."""

from regd.storage import layout
from regd.storage.base import (
    FileBacked,
    FileInfo,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    Reader,
    Space,
    StorageDriver,
    StorageError,
    StorageFull,
    Writer,
)
from regd.storage.filesystem import FilesystemDriver
from regd.storage.memory import MemoryDriver
from regd.storage.s3 import S3Driver, S3Options, StorageUnavailable

__all__ = [
    "FileBacked",
    "FileInfo",
    "FilesystemDriver",
    "InvalidOffset",
    "InvalidPath",
    "MemoryDriver",
    "PathNotFound",
    "Reader",
    "S3Driver",
    "S3Options",
    "Space",
    "StorageDriver",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "Writer",
    "layout",
]
