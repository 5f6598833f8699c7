"""Results store: one JSON file per finished LOSO fold, so a sweep never loses or redoes work.

A fold's key is the hash of (resolved config hash, test subject, seed, prepared-data key): the same
fold of the same config on the same data maps to the same file whatever the sweep file is called or
which grid point it sits in. Files are written to a temp file and renamed (atomic on POSIX), so a
killed driver leaves either the whole fold or nothing.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.result import FoldResult
from orchestrator.errors import ConfigError, StoreError
from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import stable_hash
from preprocessing.atomic import atomic_file

logger = logging.getLogger(__name__)

STORE_VERSION = 1


def fold_key(config_hash: str, subject: str, seed: int, data_key: str, test_data_key: str | None = None) -> str:
    """The results-store key of one fold (a cross-dataset unit: also the test dataset's key)."""
    return stable_hash({"config": config_hash, "subject": str(subject), "seed": int(seed),
                        "data": data_key, "v": STORE_VERSION,
                        **({"test_data": test_data_key} if test_data_key else {})})


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (preprocessing.atomic)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (preprocessing.atomic)."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def ensure_writable(folder: Path, what: str, consequence: str) -> None:
    """Create `folder` and write (then remove) a probe file in it; a StoreError naming it otherwise."""
    probe = Path(folder) / ".write-test"
    if Path(folder).exists() and not Path(folder).is_dir():
        raise StoreError(f"{folder}: a file stands where the {what} should be; {consequence}. Move the file "
                         f"away, or set `workdir:` in the sweep file to another folder. Nothing was trained.")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(probe, "ok")
        probe.unlink()
    except OSError as e:
        raise StoreError(f"{folder}: the {what} is not writable ({e.strerror or e}); {consequence}. Fix its "
                         f"permissions, or set `workdir:` in the sweep file to a writable folder. Nothing "
                         f"was trained.") from None


# What every record's meta must hold (Fold.meta() writes more): MLflow and the tables read these.
META_FIELDS = ("dataset", "point_label", "seed", "subject")


class ResultsStore:
    """`<workdir>/results/<key>.json`: {key, meta (dataset, point, subject, seed, hashes, node), result}.

    A record that cannot be read back whole (not JSON, another key, a missing field) is never used: it is
    moved to `results/damaged/` (kept for inspection, not deleted), named in a warning, and its fold
    counts as not stored, so the next run trains it again.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._results: dict[str, Any] = {}  # key -> FoldResult, parsed once

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def check_writable(self) -> None:
        """A StoreError now, before any fold trains, when finished folds could not be stored."""
        ensure_writable(self.root, "results folder", "finished folds could not be stored")

    def put(self, key: str, result: dict[str, Any], meta: dict[str, Any]) -> Path:
        record = {"key": key, "version": STORE_VERSION, "stored_at": time.time(), "meta": meta,
                  "result": result}
        path = self.path(key)
        atomic_write_text(path, json.dumps(record, separators=(",", ":")))
        self._results.pop(key, None)
        return path

    def get(self, key: str) -> dict[str, Any]:
        """The stored record, checked whole; a StoreError naming the file when it is unreadable."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{path}: no stored fold with key {key}") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: unreadable results file ({e})") from None
        if not isinstance(record, dict) or record.get("key") != key:
            raise StoreError(f"{path}: not a results record for key {key}")
        meta, result = record.get("meta"), record.get("result")
        missing = [f"meta.{k}" for k in META_FIELDS if not isinstance(meta, dict) or k not in meta]
        if not isinstance(result, dict):
            missing.append("result")
        if missing:
            raise StoreError(f"{path}: results record misses {', '.join(missing)}")
        return record

    def result(self, key: str):
        """The stored fold as a `FoldResult` (parsed once); a StoreError naming the file when the record
        is unreadable or its result misses a field."""
        if key not in self._results:
            record = self.get(key)
            try:
                self._results[key] = FoldResult.from_dict(record["result"])
            except (KeyError, TypeError, ValueError) as e:
                raise StoreError(f"{self.path(key)}: results record is incomplete "
                                 f"({type(e).__name__}: {e})") from None
        return self._results[key]

    def intact(self, key: str) -> bool:
        """True when the fold is stored and reads back whole. A damaged record is moved aside to
        `damaged/` with a warning, and False is returned: the fold is trained again."""
        if not self.has(key):
            return False
        try:
            self.result(key)
            return True
        except StoreError as e:
            aside = self.set_aside(key)
            logger.warning(f"warning: {e}; moved to {aside}; its fold is trained again on the next run")
            return False

    def set_aside(self, key: str) -> Path:
        """Move a record to `<results>/damaged/` (a numbered name when one is there already)."""
        folder = self.root / "damaged"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{key}.json"
        n = 1
        while target.exists():
            target, n = folder / f"{key}.{n}.json", n + 1
        os.replace(self.path(key), target)
        self._results.pop(key, None)
        return target

    def keys(self) -> Iterator[str]:
        if self.root.is_dir():
            for p in sorted(self.root.glob("*.json")):
                yield p.stem


# -- which sweep file owns a name in this workdir (<workdir>/sweeps.json: name -> {file, config}) -------
def claim_name(sweep: Sweep, share: bool = False) -> None:
    """A sweep's name picks its MLflow experiment and its report files: refuse a second sweep FILE with
    the same name and other trials in one workdir (a copied and edited sweep file, say) unless `share`
    says it is meant. The same file edited (a point added) keeps its name; a copy that resolves to the
    same trials (other dataset roots or workdir) is the same sweep."""
    if not sweep.source:
        return
    path = sweep.paths.names
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}  # a damaged registry is written again
    me = {"file": str(Path(sweep.source).resolve()),
          # what it computes (every resolved trial), not where: a copy with other roots or workdir is the
          # same sweep
          "config": stable_hash(sorted([t.dataset, t.hash] for t in sweep.trials))}
    other = known.get(sweep.name)
    if isinstance(other, dict) and other.get("file") != me["file"] and other.get("config") != me["config"] \
            and not share and Path(str(other.get("file"))).is_file():
        raise ConfigError(f"{sweep.source}: name {sweep.name!r} is already used in the workdir {sweep.paths.workdir} "
                          f"by {other['file']}, with other contents: the two would share one MLflow "
                          f"experiment and one report file. Give this sweep its own `name:` (or "
                          f"--set name=...), or pass --share-name if they are meant to share it")
    if known.get(sweep.name) != me:
        known[sweep.name] = me
        try:
            atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))
        except OSError:
            pass  # the results folder check reports an unwritable workdir
