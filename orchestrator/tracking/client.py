"""MLflow tracking, owned by the driver (trial workers never touch MLflow).

One parent run per (dataset, point, seed) holding the flattened resolved params and the pooled metrics
(updated live as folds finish, final at the end) and, once its point is complete, the figures
(orchestrator/reporting/figures.py) under `figures/`; one nested child run per fold with the fold's metrics, its
loss terms per epoch as step metrics (`loss_total`, ..., step = epoch) and a per-sample predictions CSV.
Runs carry tags (`microau.group`, `microau.fold`) by which a re-run finds them again instead of creating
duplicates; digest tags say what a run already holds (dataset notes, figures), so nothing is logged twice.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.spec.resolved import Sweep
from orchestrator.spec.schema import TrialConfig
from orchestrator.tracking.sqlite_store import sqlite_file, start_from_template
from orchestrator.tracking.version import mlflow_tags

TAG_GROUP = "microau.group"
TAG_FOLD = "microau.fold"
TAG_SWEEP = "microau.sweep"
TAG_KIND = "microau.kind"  # parent | fold
TAG_NOTES = "microau.notes"  # digest of the dataset notes logged on a parent (logged once)
TAG_FIGURES = "microau.figures"  # digest of the figures logged on a parent (orchestrator.reporting.figures.digest)
TAG_STEPS = "microau.loss_steps"  # on a child: its per-epoch loss terms are logged as step metrics
FIGURES_DIR = "figures"  # a parent's artifact folder of figures
_PARENT_ID = "mlflow.parentRunId"


# Bookkeeping entries of the pooled-metrics dict that are not metrics (or vary per subject).
_NOT_METRICS = {"aus", "folds", "level", "n_boot", "seed", "unit", "note"}


def flat_metrics(pooled: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Pooled-metrics dict -> flat MLflow metric names: `f1`, `acc`, `f1_AU1`, `acc_AU1`, `ci_f1_low`,
    `mer_uf1`, `mer_ci_uf1_high`, `per_fold_f1_mean_of_folds`, ...

    The names depend only on the AU list, so every parent of a dataset carries the same names and the
    MLflow UI compares them side by side.
    """
    out: dict[str, float] = {}
    for k, v in pooled.items():
        if k in _NOT_METRICS:
            continue
        if k == "per_au" and isinstance(v, dict) and not prefix:
            for au, m in v.items():
                for mk, mv in m.items():
                    if _is_number(mv):
                        out[f"{mk}_AU{str(au).removeprefix('AU')}"] = float(mv)
            continue
        name = f"{prefix}{k}"
        if _is_number(v):
            out[name] = float(v)
        elif isinstance(v, dict):
            out.update(flat_metrics(v, prefix=f"{name}_"))
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
            out[f"{name}_low"], out[f"{name}_high"] = float(v[0]), float(v[1])
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# -- bounded waits ----------------------------------------------------------------------------------
# MLflow is a side channel (the results store is the record): when it does not answer, the sweep must
# notice within seconds, warn once and go on without it (state.SweepState). Left alone, MLflow waits
# far longer: an HTTP server that does not answer costs 7 retries with exponential backoff (over 4
# minutes) per call, a SQLite file it cannot open 10 engine retries (~100 s), a locked one sqlite's busy
# timeout (5 s; 20 s inside MLflow's sessions).
#
# Remote stores (http, https, databricks): MLflow's own HTTP settings (mlflow/environment_variables.py),
# set for the duration of each of the driver's calls only, and only where the user has not set them.
# The first contact (the experiment lookup in Tracker()) is one request with a 3 s timeout: a server
# that refuses fails at once, one that accepts and never answers after 3 s, so a run falls back to "no
# MLflow" well under 10 s. Later calls get a 10 s timeout and 2 retries with backoff (a transient hiccup
# survives; a server that dies mid-run costs one wait of at most 3 x 10 s + 3 s, then tracking is off).
# These are MLflow's own transport settings (its auth, TLS and proxy handling stay as they are), where a
# separate health probe could disagree with the requests MLflow then makes; per call, not process-wide,
# so nothing else in the process (or a test after it) sees them.
# MLflow also prints "View run ... at: <tracking URI>/#/..." on stdout each time a run of an HTTP store ends
# (one more request per fold): off, so the URI (with any user:password in it) is never printed that way.
_NO_URL_PRINTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
_HTTP_FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                       **_NO_URL_PRINTS}
HTTP_LATER = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
               **_NO_URL_PRINTS}
# SQLite stores: one direct check before MLflow opens the file (Tracker._check_sqlite), since MLflow's
# engine retries and busy timeouts are not configurable. It opens the file exactly as SQLAlchemy would
# and takes the write lock, waiting at most this long for another writer: a read-only, unopenable or
# locked store is found in at most this many seconds. (A lock taken later, mid-run, costs MLflow's own
# 20 s busy timeout once; then tracking is off for the rest of the run.)
SQLITE_WAIT_S = 3.0


@contextlib.contextmanager
def env_defaults(values: dict[str, str]):
    """`values` in os.environ for the block, except the variables the user has set."""
    mine = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in mine})
    try:
        yield
    finally:
        for k in mine:
            os.environ.pop(k, None)


def bounded_calls():
    """MLflow's HTTP calls in the block wait at most the `HTTP_LATER` bounds (a server that stops answering
    mid-run costs one bounded wait)."""
    return env_defaults(HTTP_LATER)


@contextlib.contextmanager
def fluent_tracking_uri(uri: str | None):
    """MLflow's fluent API (start_run, log_model, load_model) pointed at `uri` for the block only."""
    import mlflow

    if uri is None:
        yield
        return
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


@contextlib.contextmanager
def quiet_model_io():
    """MLflow's advice printed while logging or loading a model that does not apply here: type hints (the
    signature is given), an input example (it would run the model on frames that are not there), the
    progress bar of checking the logged files."""
    import warnings

    with warnings.catch_warnings(), env_defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        warnings.filterwarnings("ignore", message=r".*(type hints|input example).*", category=UserWarning)
        yield


def _bounded(method):
    """A Tracker method whose MLflow HTTP calls wait at most the `HTTP_LATER` bounds."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with env_defaults(HTTP_LATER):
            return method(*args, **kwargs)
    return wrapper


class _DropHandledErrors(logging.Filter):
    """MLflow logs a traceback for database errors before raising them; the driver reports them itself
    (one warning line, state.SweepState), so those log records are dropped."""
    _PREFIXES = ("SQLAlchemy database error", "SQLAlchemy engine could not be created")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


def _quiet_mlflow_db_errors() -> None:
    log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropHandledErrors) for f in log.filters):
        log.addFilter(_DropHandledErrors())


def reason(e: BaseException, uri: str | None = None) -> str:
    """One line saying why a tracking call to `uri` failed: what to do about a sign-in the server refused (HTTP 401,
    403), the database's own message (`attempt to write a readonly database`, `database is locked`), the
    socket error (`Connection refused`), else the first line of the error, shortened; any password in a
    URI in it replaced by `***`."""
    return redact(_reason(e, uri))


def _signed_in_user(uri: str | None) -> tuple[str | None, str]:
    """(the user MLflow signs in as, where the password comes from): the URI's `user:password@`, else
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, else ~/.mlflow/credentials (as MLflow reads them)."""
    from urllib.parse import unquote, urlsplit

    from mlflow.utils.credentials import read_mlflow_creds

    try:
        user = urlsplit(uri or "").username
    except ValueError:
        user = None
    if user:
        return unquote(user), "the password in the tracking URI"
    try:
        return read_mlflow_creds().username or None, "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
    except Exception:  # noqa: BLE001 - an unreadable credentials file signs in as no one
        return None, ""


def _auth_reason(e: BaseException, uri: str | None) -> str | None:
    """What to do about a refused sign-in (MLflow's `--app-name basic-auth`), None for other errors."""
    code = getattr(e, "get_http_status_code", lambda: None)()
    if code not in (401, 403) and getattr(e, "error_code", None) not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    user, where = _signed_in_user(uri)
    if code == 403 or getattr(e, "error_code", None) == "PERMISSION_DENIED":
        return (f"user {user!r} may not do this on the tracking server (HTTP 403 permission denied); ask its "
                f"admin for EDIT permission on the experiment, or sign in as its owner")
    if user is None:
        return ("the tracking server asks for a sign-in (HTTP 401) and none is set: set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials (docs/security.md)")
    return f"the tracking server refused the sign-in of user {user!r} (HTTP 401): check {where}"


def _reason(e: BaseException, uri: str | None) -> str:
    auth = _auth_reason(e, uri)
    if auth:
        return auth
    seen = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:  # MLflow wraps SQLAlchemy errors, which wrap sqlite's
        seen.add(id(err))
        if getattr(err, "orig", None) is not None:
            return str(err.orig).splitlines()[0][:300] or type(err.orig).__name__
        err = err.__cause__ or err.__context__
    if isinstance(e, OSError) and e.strerror:  # e.g. the store's folder cannot be created
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip()
    m = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if m:
        return m.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "no answer (timed out)"
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced (`http://user:***@host`)."""
    return re.sub(r"(://[^/:@\s]+):[^/\s]*@", r"\1:***@", text)


class Tracker:
    """Thin wrapper over `MlflowClient` for one sweep's experiment.

    Construction reaches the store (and creates the experiment): it raises when the store cannot be
    reached, created or written, within the bounds above.
    """

    def __init__(self, sweep: Sweep):
        import mlflow  # heavy: imported when tracking starts (in a thread while Ray starts), for start-up time
        from mlflow import MlflowClient

        self.sweep = sweep
        self.uri = sweep.tracking_uri
        _quiet_mlflow_db_errors()
        if self.uri.startswith("sqlite:"):
            db = sqlite_file(self.uri)
            if db is not None:  # a new store starts as a copy of a migrated empty one (seconds less)
                start_from_template(db, artifacts=sweep.paths.mlartifacts)
            _check_sqlite(self.uri)
        with env_defaults(_HTTP_FIRST_CONTACT):
            self.client = MlflowClient(tracking_uri=self.uri)
            self._mlflow = mlflow
            self.experiment_id = self._experiment()
        self._parents: dict[str, str] = {}
        self._parent_tags: dict[str, dict[str, str]] = {}  # parent run id -> its tags when found
        self.parent_status: dict[str, str] = {}  # group -> MLflow status when found or created
        self._children: dict[str, dict[str, str]] = {}
        self._no_steps: dict[str, set] = {}  # parent run id -> fold keys of children without loss steps

    # -- experiment and runs ------------------------------------------------------------------------
    def _experiment(self) -> str:
        name = self.sweep.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            # A local store: keep artifacts beside it in the workdir (not ./mlruns of the cwd).
            artifacts = self.sweep.paths.mlartifacts.resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts,
                                             tags={TAG_SWEEP: self.sweep.name})

    def _source_tags(self) -> dict[str, str]:
        """MLflow's standard source tags (the UI's Source column): the sweep file, run locally."""
        name = str(Path(self.sweep.source).resolve()) if self.sweep.source else self.sweep.name
        return {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}

    def _log_inputs(self, run_id: str, inputs: Iterable[dict[str, Any]] | None) -> None:
        """The prepared datasets a run read as MLflow dataset inputs (the UI's Dataset column): name, digest
        (the prepared-data key), source (the dataset's folder), profile (samples, subjects) and context."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [DatasetInput(Dataset(name=d["name"], digest=str(d["digest"]), source_type="local",
                                         source=json.dumps({"uri": str(d["source"])}),
                                         profile=json.dumps({"num_rows": d.get("samples"),
                                                             "subjects": d.get("subjects")})),
                                 tags=[InputTag("mlflow.data.context", str(d["context"]))])
                    for d in inputs or []]
        if datasets:
            self.client.log_inputs(run_id, datasets=datasets)

    @_bounded
    def parent(self, group: str, trial: TrialConfig, data_key: str, folds_total: int,
               inputs: Iterable[dict[str, Any]] | None = None) -> str:
        """The parent run of a (dataset, point, seed): found by tag, else created with its params, source
        tags and dataset inputs (`inputs`: orchestrator.reporting.results.SweepResults.inputs)."""
        if group in self._parents:
            return self._parents[group]
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TAG_GROUP}` = '{group}'",
                                       max_results=5)
        if runs:
            run_id = runs[0].info.run_id
            self.parent_status[group] = runs[0].info.status
            self._parent_tags[run_id] = dict(runs[0].data.tags)
        else:
            tags = {**mlflow_tags(), **self._source_tags(), TAG_GROUP: group, TAG_KIND: "parent",
                    TAG_SWEEP: self.sweep.name,
                    "dataset": trial.dataset, "point": trial.point_label, "seed": str(trial.seed),
                    "config_hash": trial.hash, "data_key": data_key}
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"{trial.dataset}:{trial.point_label}:seed{trial.seed}")
            run_id = run.info.run_id
            self.log_params(run_id, trial.flat_params())
            self._log_inputs(run_id, inputs)
            self.client.log_batch(run_id, metrics=self._metrics({"folds_total": folds_total}, step=0))
            self.parent_status[group] = "RUNNING"
        self._parents[group] = run_id
        return run_id

    @_bounded
    def children(self, parent_id: str) -> dict[str, str]:
        """fold key -> child run id, for the folds already tracked under `parent_id`."""
        if parent_id not in self._children:
            found: dict[str, str] = {}
            token = None
            while True:
                page = self.client.search_runs([self.experiment_id],
                                               f"tags.`{_PARENT_ID}` = '{parent_id}'",
                                               max_results=1000, page_token=token)
                for r in page:
                    if TAG_FOLD in r.data.tags:
                        found[r.data.tags[TAG_FOLD]] = r.info.run_id
                        if TAG_STEPS not in r.data.tags:  # logged by an older version
                            self._no_steps.setdefault(parent_id, set()).add(r.data.tags[TAG_FOLD])
                token = page.token
                if not token:
                    break
            self._children[parent_id] = found
        return self._children[parent_id]

    @_bounded
    def log_fold(self, parent_id: str, key: str, meta: dict[str, Any], metrics: dict[str, float],
                 predictions_csv: str, extra: dict[str, Any] | None = None,
                 loss_curve: dict[str, list[float]] | None = None,
                 inputs: Iterable[dict[str, Any]] | None = None) -> str:
        """One nested child run for a finished fold (skipped when the fold is tracked already), with its
        loss terms per epoch as step metrics `loss_<term>` (step = epoch, from 1), the source tags and the
        dataset inputs of its parent."""
        known = self.children(parent_id)
        if key in known:
            return known[key]
        tags = {**mlflow_tags(), **self._source_tags(), _PARENT_ID: parent_id, TAG_FOLD: key, TAG_KIND: "fold",
                TAG_SWEEP: self.sweep.name,
                "dataset": str(meta["dataset"]), "point": str(meta["point_label"]),
                "seed": str(meta["seed"]), "subject": str(meta["subject"]), TAG_STEPS: "1"}
        for k in ("node_ip", "node_id", "hostname"):
            if meta.get(k):
                tags[k] = str(meta[k])
        run = self.client.create_run(self.experiment_id, tags=tags,
                                     run_name=f"{meta['dataset']}:{meta['point_label']}:{meta['subject']}")
        run_id = run.info.run_id
        self.log_params(run_id, {"subject": meta["subject"], "fold_key": key})
        self._log_inputs(run_id, inputs)
        self.client.log_batch(run_id, metrics=self._metrics(metrics, step=0))
        self.log_steps(run_id, loss_curve or {})
        self.client.log_text(run_id, predictions_csv, "predictions.csv")
        if extra:
            self.client.log_dict(run_id, extra, "fold.json")
        self.client.set_terminated(run_id, "FINISHED")
        known[key] = run_id
        return run_id

    def needs_steps(self, parent_id: str, key: str) -> bool:
        """The fold's child run was logged without its per-epoch loss terms (by an older version)."""
        return key in self._no_steps.get(parent_id, set())

    @_bounded
    def log_loss_steps(self, parent_id: str, key: str, loss_curve: dict[str, list[float]]) -> None:
        """The per-epoch loss terms of a child run logged without them; then tagged, so once."""
        run_id = self.children(parent_id)[key]
        self.log_steps(run_id, loss_curve)
        self.client.set_tag(run_id, TAG_STEPS, "1")
        self._no_steps.get(parent_id, set()).discard(key)

    def log_steps(self, run_id: str, loss_curve: dict[str, list[float]]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(f"loss_{term}", float(v), ts, epoch) for term, curve in loss_curve.items()
                 for epoch, v in enumerate(curve, start=1) if _is_number(v)]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def figures_digest(self, parent_id: str) -> str | None:
        """The digest of the figures the parent holds (None: none yet)."""
        return self._parent_tags.get(parent_id, {}).get(TAG_FIGURES)

    @_bounded
    def log_figures(self, parent_id: str, paths: Iterable[Path], digest: str) -> None:
        """PNG files under the parent's `figures/` (a file of the same name is replaced), then the digest
        tag that says they are there."""
        for path in paths:
            self.client.log_artifact(parent_id, str(path), FIGURES_DIR)
        self.client.set_tag(parent_id, TAG_FIGURES, digest)
        self._parent_tags.setdefault(parent_id, {})[TAG_FIGURES] = digest

    @_bounded
    def update_parent(self, parent_id: str, pooled: dict[str, Any] | None, folds_done: int,
                      folds_total: int, failed: Iterable[str] = (), final: bool = False) -> None:
        """Pooled metrics so far (step = folds in); at the end the run is closed, FAILED if incomplete."""
        values = flat_metrics(pooled) if pooled else {}
        values.update(folds_done=folds_done, folds_total=folds_total,
                      complete=float(folds_done == folds_total))
        from mlflow.entities import RunTag

        # the code that last updated it (a parent spans the runs that trained its folds; each child
        # carries the version that trained it)
        self.client.log_batch(parent_id, metrics=self._metrics(values, step=folds_done),
                              tags=[RunTag(k, v) for k, v in mlflow_tags().items()])
        failed = list(failed)
        self.client.set_tag(parent_id, "complete", str(folds_done == folds_total).lower())
        if failed:
            self.client.set_tag(parent_id, "failed_subjects", ",".join(failed)[:5000])
        if final:
            status = "FINISHED" if folds_done == folds_total else "FAILED"
            self.client.set_terminated(parent_id, status)

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        """Tags on a run (a search candidate's parent: `search.candidate`, `search.status`)."""
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def note_dataset(self, parent_id: str, note: dict[str, list[Any]]) -> None:
        """What the reports list about the parent's prepared dataset (skipped samples, subjects dropped
        from LOSO, estimated apexes, corrections, warnings): tags of the ids, counts as metrics, and
        dataset_notes.json with every entry and its reason."""
        from mlflow.entities import RunTag

        digest = hashlib.sha256(json.dumps(note, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if self._parent_tags.get(parent_id, {}).get(TAG_NOTES) == digest:
            return  # logged by an earlier run: the notes of a parent's prepared data never change
        ids = lambda k: ";".join(str(x["sample"]) for x in note.get(k, []))  # noqa: E731
        tags = {"skipped_samples": ids("skipped"), "dropped_subjects": ",".join(note.get("dropped_subjects", [])),
                "apex_estimated": ";".join(f"{a['sample']}:{a['apex']}" for a in note.get("apex_estimated", [])),
                "corrected_samples": ids("corrected")}
        self.client.log_dict(parent_id, note, "dataset_notes.json")
        self.client.log_batch(parent_id, metrics=self._metrics(
            {"n_skipped": len(note.get("skipped", [])), "n_apex_estimated": len(note.get("apex_estimated", []))},
            step=0), tags=[RunTag(k, v[:5000]) for k, v in tags.items()] + [RunTag(TAG_NOTES, digest)])
        self._parent_tags.setdefault(parent_id, {})[TAG_NOTES] = digest

    # -- helpers ------------------------------------------------------------------------------------
    def _metrics(self, values: dict[str, float], step: int) -> list[Any]:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        return [Metric(k, float(v), ts, step) for k, v in values.items() if _is_number(v)]

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])


def _check_sqlite(uri: str) -> None:
    """Raise at once when the SQLite store cannot be created, opened or written, or stays locked by
    another writer for `SQLITE_WAIT_S` (see above). Opens the file with the arguments SQLAlchemy
    would pass to sqlite3, takes the write lock and writes in a transaction that is rolled back."""
    import sqlite3

    import sqlalchemy

    path = sqlite_file(uri)
    if path is None:
        return
    url = sqlalchemy.engine.make_url(uri)
    path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would: a fresh workdir has none
    args, kwargs = sqlalchemy.create_engine(url).dialect.create_connect_args(url)
    kwargs.update(timeout=SQLITE_WAIT_S, isolation_level=None)
    con = sqlite3.connect(*args, **kwargs)
    try:
        con.execute("BEGIN IMMEDIATE")  # waits for (at most SQLITE_WAIT_S) and takes the write lock
        con.execute("CREATE TABLE main.microau_write_check (x)")  # read-only files fail here
        con.execute("ROLLBACK")
    finally:
        con.close()
