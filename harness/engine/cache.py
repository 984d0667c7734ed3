"""Result cache: generations, scores and parity keyed by what determines them, never by a model's name.

A generation's key holds the weights hash, the adapter hash (and merge dtype for merged models), the
tokenizer + chat-template hash, the generation settings and precision, and the case's exact messages
and content hash. Scores add the scorer versions, the suite's contract/tone hash and the canaries.
SQLite in WAL mode makes it safe for two runs to share the cache; a row is written in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from harness.io import sha256_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TABLES = ("generations", "scores", "parity")


class ResultCache:
    """A small key -> JSON store per table; misses return None, hits are counted for the report."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.hits = {t: 0 for t in TABLES}
        self.misses = {t: 0 for t in TABLES}

    def get(self, table: str, key: str) -> Any | None:
        assert table in TABLES
        with self._lock:
            row = self._db.execute(f"SELECT value FROM {table} WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses[table] += 1
            return None
        self.hits[table] += 1
        return json.loads(row[0])

    def has(self, table: str, key: str) -> bool:
        """Whether a key is stored; not counted as a hit or a miss."""
        assert table in TABLES
        with self._lock:
            return self._db.execute(f"SELECT 1 FROM {table} WHERE key = ?", (key,)).fetchone() is not None

    def put_many(self, table: str, items: list[tuple[str, Any]]) -> None:
        assert table in TABLES
        if not items:
            return
        rows = [(k, json.dumps(v, ensure_ascii=False)) for k, v in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "hits": dict(self.hits), "misses": dict(self.misses)}

    def close(self) -> None:
        self._db.close()


def generation_key(
    model_key: str, tokenizer_hash: str, settings: dict[str, Any], messages: list[dict[str, str]], case_hash: str
) -> str:
    return sha256_json(
        {"model": model_key, "tokenizer": tokenizer_hash, "settings": settings, "messages": messages, "case": case_hash}
    )


def scores_key(gen_key: str, scorers: dict[str, str], suite_hash: str, canaries: tuple[str, ...]) -> str:
    return sha256_json({"generation": gen_key, "scorers": scorers, "suite": suite_hash, "canaries": list(canaries)})


def default_path() -> Path:
    from harness.models.embedded import cache_dir

    return cache_dir() / "results.sqlite"
