"""Sweep schema: expansion into trials, stable and sensitive hashing, errors naming file and key."""
from __future__ import annotations

import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from model.config import DATASET_DEFAULTS, ModelConfig, TrainConfig
from orchestrator.errors import ConfigError
from orchestrator.planning.plan import expand
from orchestrator.spec.resolved import load_sweep
from preprocessing.config import PreprocessConfig

from support import REPO
from support.sweeps import by_data_id

BASE = {
    "name": "t",
    "datasets": {
        "c": {"reader": "casme2", "root": "/nonexistent/c"},
        "s": {"reader": "samm", "root": "/nonexistent/s", "subjects": ["006", "007"]},
    },
    "grid": {"training.beta": [0.2, 0.4, 0.6]},
    "variants": {"full": {}, "no_gsd": {"model.gsd": False}},
    "seeds": [1, 2],
}


def write(tmp_path: Path, doc: dict, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


def test_expansion_datasets_points_variants_seeds_subjects(tmp_path):
    spec = load_sweep(write(tmp_path, BASE))
    points = spec.points
    assert len(points) == 2 * 3  # variants x grid
    assert {p.label for p in points} >= {"full,training.beta=0.2", "no_gsd,training.beta=0.6"}
    trials = spec.trials
    assert len(trials) == 2 * 6 * 2  # datasets x points x seeds
    subjects = {"c": ["sub01", "sub02", "sub03"], "s": ["006", "007", "008", "009"]}
    folds = expand(spec, *by_data_id(spec, subjects, {"c": "kc", "s": "ks"}))
    # casme2: every subject; samm: the two listed in `subjects:`
    assert len(folds) == 6 * 2 * 3 + 6 * 2 * 2
    assert len({f.key for f in folds}) == len(folds)
    assert {f.subject for f in folds if f.trial.dataset == "s"} == {"006", "007"}
    no_gsd = [t for t in trials if t.variant == "no_gsd"]
    assert all(t.model.gsd is False for t in no_gsd)
    assert {t.training.beta for t in trials} == {0.2, 0.4, 0.6}


def test_dataset_defaults_fill_alpha_beta_unless_set(tmp_path):
    doc = {**BASE, "grid": {}, "variants": {}, "seeds": [1]}
    spec = load_sweep(write(tmp_path, doc))
    by = {t.dataset: t for t in spec.trials}
    assert by["c"].training.alpha == DATASET_DEFAULTS["casme2"]["alpha"]
    assert by["s"].training.beta == DATASET_DEFAULTS["samm"]["beta"]
    doc["datasets"]["c"]["overrides"] = {"training.alpha": 0.2}
    spec = load_sweep(write(tmp_path, doc))
    assert {t.dataset: t for t in spec.trials}["c"].training.alpha == 0.2


def _hash_in_subprocess(path: Path) -> str:
    code = ("from orchestrator.spec.resolved import load_sweep; "
            f"print(','.join(t.hash for t in load_sweep({str(path)!r}).trials))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_hash_stable_across_runs_and_processes(tmp_path):
    path = write(tmp_path, BASE)
    here = ",".join(t.hash for t in load_sweep(path).trials)
    assert here == ",".join(t.hash for t in load_sweep(path).trials)
    assert here == _hash_in_subprocess(path)
    # key order in the YAML does not matter
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    assert here == ",".join(t.hash for t in load_sweep(write(tmp_path, reordered, "r.yaml")).trials)


def _alternatives(annotation, current):
    """Candidate values different from `current` for a field of this annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return [a for a in args if a != current]
    if origin in (typing.Union, types.UnionType):
        out = []
        for a in args:
            if a is type(None):
                if current is not None:
                    out.append(None)
            else:
                out += _alternatives(a, current)
        return out
    if annotation is bool:
        return [not current]
    if annotation is int:
        return [(current or 0) + 1]
    if annotation is float:
        return [(current or 0.0) * 0.5 + 0.0123]
    if annotation is str:
        return [f"{current}-x"]
    if origin is dict:
        key_t, val_t = args
        if key_t is int and typing.get_origin(val_t) is list:
            inner = typing.get_args(val_t)[0]
            return [{1: ["a", "b"]}] if inner is str else [{1: [0, 1]}]
        return [{"positive": "a happy face"}]
    raise AssertionError(f"no alternative for {annotation}")


def _leaf_fields(cls: type[BaseModel], prefix: str):
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_fields(ann, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}", ann


@pytest.mark.parametrize("section,cls", [("preprocessing", PreprocessConfig), ("model", ModelConfig),
                                         ("training", TrainConfig)])
def test_hash_sensitive_to_every_parameter(tmp_path, section, cls):
    doc = {"name": "h", "datasets": {"c": {"reader": "casme2", "root": "/x"}}}
    base = load_sweep(write(tmp_path, doc)).trials[0]
    changed = 0
    for key, ann in _leaf_fields(cls, section):
        if key in ("training.device", "training.threads", "training.compile"):
            continue  # where, with how many threads and whether compiled it runs does not change what it computes
        current = base
        for part in key.split("."):
            current = getattr(current, part)
        for alt in _alternatives(ann, current):
            d = {**doc, "grid": {key: [alt]}}
            try:
                t = load_sweep(write(tmp_path, d)).trials[0]
            except ConfigError:
                continue  # not a valid value for this field; try the next candidate
            assert t.hash != base.hash, f"{key}={alt!r} does not change the config hash"
            changed += 1
            break
        else:
            raise AssertionError(f"found no valid alternative value for {key}")
    assert changed >= 5
    # seed and AU list are part of the hash too
    t2 = load_sweep(write(tmp_path, {**doc, "seeds": [2]})).trials[0]
    assert t2.hash != base.hash
    t3 = load_sweep(write(tmp_path, {**doc, "datasets": {"c": {"reader": "casme2", "root": "/x",
                                                               "aus": [2, 4, 7, 12]}}})).trials[0]
    assert t3.hash != base.hash


def test_device_and_threads_do_not_change_the_hash(tmp_path):
    doc = {"name": "h", "datasets": {"c": {"reader": "casme2", "root": "/x"}}}
    a = load_sweep(write(tmp_path, doc)).trials[0]
    b = load_sweep(write(tmp_path, {**doc, "training": {"device": "cpu", "threads": 1}})).trials[0]
    assert a.hash == b.hash
    # precision auto follows the device (bf16 on CUDA); a precision set explicitly is part of the hash
    c = load_sweep(write(tmp_path, {**doc, "training": {"precision": "auto"}})).trials[0]
    d = load_sweep(write(tmp_path, {**doc, "training": {"precision": "bf16"}})).trials[0]
    assert c.hash == a.hash != d.hash


@pytest.mark.parametrize("patch,needle", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"model": {"lsi": True, "colour": 3}}, "unknown key 'model.colour'"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"model": {"pooling": "median"}}, "model.pooling"),
    ({"grid": {"model.nope": [1]}}, "unknown key 'model.nope'"),
    ({"grid": {"beta": [1]}}, "must start with one of"),
    ({"grid": {"training.beta": []}}, "grid.training.beta has no values"),
    ({"resources": {"gpu": -1}}, "resources.gpu"),
    ({"datasets": {"c": {"reader": "smic", "root": "/x"}}}, "datasets.c.reader"),
    ({"datasets": {"c": {"root": "/x"}}}, "missing key 'datasets.c.reader'"),
    ({"variants": {"v": {"preprocessing.magnification.method": "magic"}}}, "magnification.method"),
    ({"seeds": [1, 1]}, "seeds: seed(s) [1] listed more than once"),
    ({"name": "../../x"}, "name: use letters, digits"),
    ({"name": "a/b"}, "name: use letters"),
    ({"datasets": {}}, "datasets: name at least one dataset"),
    ({"datasets": {"c": {"reader": "casme2", "root": "/x", "aus": [99]}}}, "datasets.c (AUs [99]), point base: "
                                                                         "model.prompts: AU99 has no default"),
    ({"datasets": {"c": {"reader": "casme2", "root": "/x", "aus": [4, 4]}}}, "listed once"),
    ({"datasets": {"c": {"reader": "casme2", "root": "/x", "aus": [99]}},
      "model": {"prompts": {99: ["a", "b"]}}}, "model.landmark_groups: AU99 has no landmark region"),
    ({"model": {"emotion_texts": {"positive": ["a smile", "a grin"], "anger": "a frown"}}},
     "point base: model.emotion_texts: unknown MER class(es) ['anger']"),
    ({"variants": {"v": {"model.emotion_texts": {"negative": []}}}},
     "point v: model.emotion_texts[negative]: give one non-empty text or a non-empty list"),
])
def test_errors_name_file_and_key(tmp_path, patch, needle):
    doc = {"name": "e", "datasets": {"c": {"reader": "casme2", "root": "/x"}}}
    doc.update(patch)
    path = write(tmp_path, doc, "bad.yaml")
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)


def test_unset_root_variable_is_named(tmp_path, monkeypatch):
    """An unset `${VAR}` in a dataset root is kept as its error: loading works (plan, report), using the
    root names the variable. The sweep is resolved once: the environment at load time is what it holds."""
    monkeypatch.delenv("MICROAU_TEST_ROOT", raising=False)
    path = write(tmp_path, {"name": "e", "datasets": {"c": {"reader": "casme2",
                                                             "root": "${MICROAU_TEST_ROOT}/c"}}})
    sweep = load_sweep(path)
    for _ in range(2):  # raised each time it is used
        with pytest.raises(ConfigError, match="MICROAU_TEST_ROOT is not set") as e:
            _ = sweep.datasets["c"].root
        assert "datasets.c.root" in str(e.value)
    monkeypatch.setenv("MICROAU_TEST_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="MICROAU_TEST_ROOT is not set"):
        _ = sweep.datasets["c"].root  # resolved at load
    assert load_sweep(path).datasets["c"].root == tmp_path / "c"


def test_the_resolved_sweep_holds_every_path_once(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("MICROAU_TEST_WD", str(tmp_path / "wd"))
    path = write(tmp_path, {"name": "e", "workdir": "${MICROAU_TEST_WD}",
                            "datasets": {"c": {"reader": "casme2", "root": "/x"}}})
    sweep = load_sweep(path)
    monkeypatch.delenv("MICROAU_TEST_WD")
    wd = tmp_path / "wd"
    assert sweep.paths.workdir == wd and sweep.paths.results == wd / "results" and sweep.paths.cache == wd / "cache"
    assert sweep.paths.manifest == wd / "datasets.json" and sweep.paths.lock == wd / "run.lock"
    assert sweep.tracking_uri == f"sqlite:///{(wd / 'mlflow.db').resolve()}" and sweep.experiment == "e"
    assert isinstance(sweep.trials, tuple) and len(sweep.trials) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.trials = ()  # type: ignore[misc]
    assert sweep.with_tracking_uri("http://127.0.0.1:5000").tracking_uri == "http://127.0.0.1:5000"
    monkeypatch.delenv("MICROAU_TEST_URI", raising=False)
    unset = write(tmp_path, {"name": "u", "tracking": {"uri": "${MICROAU_TEST_URI}"},
                             "datasets": {"c": {"reader": "casme2", "root": "/x"}}}, "u.yaml")
    later = load_sweep(unset)  # loads (report needs no tracking) ...
    with pytest.raises(ConfigError, match="MICROAU_TEST_URI is not set"):
        _ = later.tracking_uri  # ... and names the variable where the URI is used


def test_subjects_not_in_data_is_an_error(tmp_path):
    spec = load_sweep(write(tmp_path, BASE))
    with pytest.raises(ConfigError, match=r"datasets.s.subjects: \['007'\] not in the prepared"):
        expand(spec, *by_data_id(spec, {"c": ["sub01", "sub02"], "s": ["006", "008"]}, {"c": "a", "s": "b"}))


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_validate(path, monkeypatch):
    for var in ("CASME2_ROOT", "SAMM_ROOT", "MICROAU_MAGNET_WEIGHTS"):
        monkeypatch.setenv(var, "/data")
    spec = load_sweep(path)
    assert spec.trials


def _shipped(name, monkeypatch):
    for var in ("CASME2_ROOT", "SAMM_ROOT", "MICROAU_MAGNET_WEIGHTS"):
        monkeypatch.setenv(var, "/data")
    return load_sweep(REPO / "sweeps" / f"{name}.yaml")


def _changes(trial, full) -> dict:
    """The model / training fields a trial sets differently from the full model (`full`)."""
    out = {}
    for section in ("model", "training"):
        a, b = getattr(trial, section).model_dump(), getattr(full, section).model_dump()
        out.update({f"{section}.{k}": v for k, v in a.items() if v != b[k]})
    return out


READING = "paper_numbers_reading_"


@pytest.mark.parametrize("name,literal", [
    ("lsi_gsd", [{"model.gsd": False}, {"model.lsi": False}, {}]),  # Table II: LSI only, GSD only, both
    ("contrastive", [{"model.contrastive": "none"}, {"model.contrastive": "global_origcl"},  # Table VIII
                     {"model.contrastive": "local_origcl"}, {}]),
])
def test_ablation_rows_change_one_thing_from_the_full_model(name, literal, monkeypatch):
    """Tables II and VIII: each row is the full model with the row's one change; the combined reading of
    the paper's numbers (w/o LSI == global OrigCL) is an extra point, labelled, and the same point (same
    hash) in both files."""
    spec = _shipped(name, monkeypatch)
    full = _shipped("main", monkeypatch).trials_of("casme2")[0]
    trials = spec.trials_of("casme2")
    literal_trials = [t for t in trials if not (t.variant or "").startswith(READING)]
    assert [_changes(t, full) for t in literal_trials] == literal
    readings = [t for t in trials if (t.variant or "").startswith(READING)]
    assert [(t.variant, _changes(t, full)) for t in readings] == [
        ("paper_numbers_reading_lsi_off_global_origcl", {"model.lsi": False, "model.contrastive": "global_origcl"})]
    other = "contrastive" if name == "lsi_gsd" else "lsi_gsd"
    assert readings[0].hash in {t.hash for t in _shipped(other, monkeypatch).trials_of("casme2")}


@pytest.mark.parametrize("name,key,values", [("text_encoder", "model.text", ["fixed", "finetune"]),
                                             ("alpha", "training.alpha", [0.2, 0.4, 0.6, 0.8, 1.0]),
                                             ("pooling", "model.pooling", ["mean", "max", "pta"])])
def test_tables_iii_iv_vi_run_on_the_full_model_and_the_add_mlp_reading(name, key, values, monkeypatch):
    """Each grid value runs on the full model (the text's reading: only the grid key changes) and, as a
    labelled extra point, on Add+MLP (their default rows equal Table VII's Add+MLP numbers)."""
    spec = _shipped(name, monkeypatch)
    full = _shipped("main", monkeypatch).trials_of("casme2")[0]
    section, field = key.split(".")
    want = [(v, {key: v} if getattr(getattr(full, section), field) != v else {}) for v in values]
    got = {}
    for t in spec.trials_of("casme2"):
        got.setdefault(t.variant, []).append((getattr(getattr(t, section), field), _changes(t, full)))
    assert got == {"full": want,
                   "paper_numbers_reading_add_mlp": [(v, {**c, "model.dependency": "add_mlp"}) for v, c in want]}


def test_grid_over_preprocessing_prepares_each_setting_once(tiny_casme2, tmp_path):
    """A grid may vary preprocessing.*: each setting is its own prepared dataset, with its own key."""
    from orchestrator.planning.data import data_id, prepare_all

    from support.data import TEST_PREPROCESS

    doc = {"name": "flows", "workdir": str(tmp_path / "wd"),
           "datasets": {"c": {"reader": "casme2", "root": str(tiny_casme2)}},
           "preprocessing": TEST_PREPROCESS, "grid": {"preprocessing.flow": ["dis", "farneback"],
                                                      "training.beta": [0.2, 0.4]}}
    spec = load_sweep(write(tmp_path, doc))
    datasets = prepare_all(spec, spec.trials, progress=False)
    assert len(datasets) == 2  # two flow methods; beta does not touch the data
    assert len({d.key for d in datasets.values()}) == 2
    folds = expand(spec, {i: d.subjects for i, d in datasets.items()}, {i: d.key for i, d in datasets.items()})
    assert len(folds) == 4 * 2  # points x subjects
    assert all(f.data_key == datasets[data_id(f.trial)].key for f in folds)
    key_of_flow = {(f.trial.preprocessing.flow, f.data_key) for f in folds}
    assert len(key_of_flow) == 2 and len({k for _, k in key_of_flow}) == 2  # one data key per flow method


def test_workdir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "wd").write_text("not a folder")
    path = write(tmp_path, {"name": "e", "workdir": str(tmp_path / "wd"),
                            "datasets": {"c": {"reader": "casme2", "root": "/x"}}})
    with pytest.raises(ConfigError, match="workdir: .*wd is a file, not a folder"):
        load_sweep(path)  # the workdir is resolved (and checked) once, when the sweep is loaded


def test_set_overrides_change_the_effective_config_and_its_hash(tmp_path):
    doc = {"name": "o", "datasets": {"c": {"reader": "casme2", "root": "/x"}}, "training": {"epochs": 5}}
    path = write(tmp_path, doc)
    base = load_sweep(path).trials[0]
    spec = load_sweep(path, ["training.epochs=2", "model.gsd=false", "seeds=[3, 4]",
                             "datasets.c.root=/elsewhere", "resources.cpu=2"])
    t = spec.trials[0]
    assert t.training.epochs == 2 and t.model.gsd is False and spec.seeds == (3, 4)
    assert spec.datasets["c"].root == Path("/elsewhere") and spec.resources.cpu == 2
    assert t.hash != base.hash
    assert load_sweep(path, ["training.epochs=5"]).trials[0].hash == base.hash  # same value, same hash
    assert yaml.safe_load(path.read_text()) == doc  # the file itself is untouched


@pytest.mark.parametrize("item, needle", [
    ("training.epochz=2", "--set training.epochz=2: unknown key 'training.epochz'"),
    ("training.epochs=0", "training.epochs"),
    ("training.epochs", "write --set KEY=VALUE"),
    ("resourcez.cpu=1", "--set resourcez.cpu=1: unknown key 'resourcez'"),
    ("resources.cpux=1", "unknown key 'resources.cpux'"),
    ("name.x=1", "--set name.x=1: name is not a mapping"),
    ("model.lsi=[", "not valid YAML"),
])
def test_bad_set_override_is_named(tmp_path, item, needle):
    path = write(tmp_path, {"name": "o", "datasets": {"c": {"reader": "casme2", "root": "/x"}}})
    with pytest.raises(ConfigError) as e:
        load_sweep(path, [item])
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)


def test_a_sweep_file_accepts_every_reader_the_data_layer_has():
    import typing

    from orchestrator.spec.schema import DatasetSpec
    from preprocessing.annotations import READERS

    assert set(typing.get_args(DatasetSpec.model_fields["reader"].annotation)) == set(READERS)
