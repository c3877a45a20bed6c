"""Durable acceptor state behind a narrow interface (see storage.base)."""
from storage.base import DurableState, Storage, StorageError, Writes
from storage.memory import MemoryStorage
from storage.sqlite import SqliteStorage

__all__ = ["DurableState", "Storage", "StorageError", "Writes", "MemoryStorage", "SqliteStorage"]
