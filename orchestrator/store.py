"""Results store: one JSON file per finished LOSO fold, so a sweep never loses or redoes work.

A fold's key is the hash of (resolved config hash, test subject, seed, prepared-data key): the same
fold of the same config on the same data maps to the same file whatever the sweep file is called or
which grid point it sits in. Files are written to a temp file and renamed (atomic on POSIX), so a
killed driver leaves either the whole fold or nothing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator

from orchestrator.config import stable_hash
from preprocessing.atomic import atomic_file

STORE_VERSION = 1


def fold_key(config_hash: str, subject: str, seed: int, data_key: str) -> str:
    """The results-store key of one fold."""
    return stable_hash({"config": config_hash, "subject": str(subject), "seed": int(seed),
                        "data": data_key, "v": STORE_VERSION})


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (preprocessing.atomic)."""
    with atomic_file(path, "w") as f:
        f.write(text)


class StoreError(RuntimeError):
    pass


class ResultsStore:
    """`<workdir>/results/<key>.json`: {key, meta (dataset, point, subject, seed, hashes, node), result}."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, result: Dict[str, Any], meta: Dict[str, Any]) -> Path:
        record = {"key": key, "version": STORE_VERSION, "stored_at": time.time(), "meta": meta,
                  "result": result}
        path = self.path(key)
        atomic_write_text(path, json.dumps(record, separators=(",", ":")))
        return path

    def get(self, key: str) -> Dict[str, Any]:
        """The stored record; a StoreError naming the file when it is unreadable."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{path}: no stored fold with key {key}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: unreadable results file ({e}); delete it and run the sweep "
                             f"again to retrain that fold") from None
        if record.get("key") != key or "result" not in record:
            raise StoreError(f"{path}: not a results record for key {key}; delete it and run again")
        return record

    def keys(self) -> Iterator[str]:
        if self.root.is_dir():
            for p in sorted(self.root.glob("*.json")):
                yield p.stem
