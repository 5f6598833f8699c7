"""The `search:` section (issue 19): validated like the rest of the file with errors naming the key; a
candidate is an ordinary point (the config hash and fold keys of a grid point with the same values); the
record of candidates, and what `report` and `plan` show of them. No Ray, no training: the folds are fake
results in the store (the search itself runs in tests/integration/test_search.py)."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import ConfigError
from orchestrator.planning.candidates import load_candidates, subject_order, with_candidates
from orchestrator.planning.data import record_prepared
from orchestrator.planning.plan import Fold
from orchestrator.planning.store import ResultsStore
from orchestrator.spec.resolved import load_sweep

from support.sweeps import fake_datasets, fake_result

SUBJECTS = ["006", "007", "008"]
SEARCH = {"num_samples": 4, "space": {"training.lr_head": {"loguniform": [0.001, 0.1]},
                                      "model.gsd": {"choice": [True, False]}},
          "early_stop": {"grace_folds": 1, "reduction_factor": 2}}


def doc(tmp_path, **over):
    d = {"name": "s", "workdir": str(tmp_path / "wd"),
         "datasets": {"samm": {"reader": "samm", "root": str(tmp_path / "nowhere")}},
         "model": {"arch": "microau-tiny", "pretrained": "none"}, "training": {"epochs": 2},
         "search": SEARCH}
    d.update(over)
    return d


def write(tmp_path, d, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize("search, message", [
    ({**SEARCH, "space": {"training.lr_head": {"loguniform": [0, 0.1]}}},
     "search.space.training.lr_head: loguniform: low must be > 0"),
    ({**SEARCH, "space": {"training.lr_hed": {"uniform": [0.1, 0.2]}}},
     "search.space.training.lr_hed: the value 0.1 does not make a valid config"),
    ({**SEARCH, "space": {"training.lr_head": {"uniform": [-1, 0.2]}}},
     "search.space.training.lr_head: the value -1.0 does not make a valid config"),
    ({**SEARCH, "space": {"training.epochs": {"uniform": [1, 2], "choice": [1]}}},
     "search.space.training.epochs: give exactly one of"),
    ({**SEARCH, "space": {"preprocessing.flow": {"choice": ["dis"]}}}, "a search samples keys of model and training"),
    ({**SEARCH, "metrik": "f1"}, "unknown key 'search.metrik'"),
    ({**SEARCH, "space": {"training.epochs": {"uniform": [20, 80]}}}, "use randint: [low, high] for an integer key"),
    ({**SEARCH, "space": {"model.prompts": {"choice": [{"AU1": ["a"]}]}}}, "Optuna chooses among plain values"),
    ({**SEARCH, "dataset": "casme2"}, "search.dataset: no dataset 'casme2'"),
    ({k: v for k, v in SEARCH.items() if k != "num_samples"}, "missing key 'search.num_samples'"),
])
def test_errors_name_the_key(tmp_path, search, message):
    with pytest.raises(ConfigError, match="s.yaml: ") as e:
        load_sweep(write(tmp_path, doc(tmp_path, search=search)))
    assert message in str(e.value)


@pytest.mark.parametrize("over, message", [
    ({"variants": {"a": {}}}, "remove variants:"), ({"grid": {"training.beta": [1]}}, "remove grid:"),
    ({"seeds": [1, 2]}, "a search runs one seed"),
])
def test_a_search_is_its_own_sweep(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, doc(tmp_path, **over)))


def _record(sweep, params_status):
    candidates = load_candidates(sweep)
    for params, status, done in params_status:
        c = candidates.add("samm", params)
        c.status, c.folds_done, c.folds_total = status, done, len(SUBJECTS)
    candidates.save()
    return candidates


def test_a_candidate_is_the_grid_point_of_its_values(tmp_path):
    search = load_sweep(write(tmp_path, doc(tmp_path)))
    assert with_candidates(search).points == () and with_candidates(search).trials == ()  # none drawn yet
    _record(search, [({"training.lr_head": 0.01, "model.gsd": False}, "complete", 3)])
    found = with_candidates(search)
    grid = load_sweep(write(tmp_path, doc(tmp_path, name="g", search=None,
                                          variants={"x": {"training.lr_head": 0.01, "model.gsd": False}}), "g.yaml"))
    (c,), (g,) = found.trials, grid.trials
    assert c.hash == g.hash and c.point == 0 and c.point_label == "c0,training.lr_head=0.01,model.gsd=False"
    assert Fold(c, "006", "k").key == Fold(g, "006", "k").key and Fold(c, "006", "k").group == Fold(g, "006", "k").group


def test_the_record_belongs_to_its_search_section(tmp_path):
    sweep = load_sweep(write(tmp_path, doc(tmp_path)))
    _record(sweep, [({"training.lr_head": 0.01, "model.gsd": True}, "running", 0)])
    more = load_sweep(write(tmp_path, doc(tmp_path, search={**SEARCH, "num_samples": 9, "early_stop": None})))
    assert len(load_candidates(more).items) == 1  # more candidates, another stopping rule: the same search
    other = load_sweep(write(tmp_path, doc(tmp_path, training={"epochs": 3})))
    with pytest.raises(ConfigError, match="drawn for another search section or base config"):
        load_candidates(other)


def test_the_subject_order_is_seeded_and_shared():
    assert subject_order(["c", "a", "b", "d"], 0) == subject_order(["d", "b", "a", "c"], 0)
    assert sorted(subject_order(["c", "a", "b", "d"], 3)) == ["a", "b", "c", "d"]


@pytest.fixture
def recorded(tmp_path):
    """A search with three candidates: c0 complete, c1 stopped after one fold, c2 complete and better
    (fake results in the store)."""
    path = write(tmp_path, doc(tmp_path))
    sweep = load_sweep(path)
    cands = _record(sweep, [({"training.lr_head": 0.01, "model.gsd": True}, "complete", 3),
                            ({"training.lr_head": 0.002, "model.gsd": True}, "complete", 1),  # ASHA stopped it
                            ({"training.lr_head": 0.05, "model.gsd": False}, "complete", 3)])
    full = with_candidates(sweep, cands)
    datasets = fake_datasets(full, {"samm": SUBJECTS}, {"samm": "datakey"})
    record_prepared(full, datasets)
    store = ResultsStore(full.paths.results)
    for t, seed, n in zip(full.trials, (0, 1, 2), (3, 1, 3), strict=True):
        for s in SUBJECTS[:n]:
            f = Fold(t, s, "datakey")
            store.put(f.key, fake_result(s, seed=seed), f.meta())
    return path


def test_report_ranks_complete_candidates_first_and_prints_the_best_as_a_variant(recorded):
    r = CliRunner().invoke(main, ["report", str(recorded), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rows = d["candidates"]
    assert [r["complete"] for r in rows] == [True, True, False]
    assert rows[2]["index"] == 1 and rows[2]["status"] == "stopped" and rows[2]["folds_done"] == 1
    assert rows[0]["value"] >= rows[1]["value"]
    best = d["best"]["samm"]
    assert best["index"] == rows[0]["index"]
    entry = yaml.safe_load(best["variants"])["variants"]
    assert list(entry.values())[0] == rows[0]["params"]
    text = CliRunner().invoke(main, ["report", str(recorded)])
    assert text.exit_code == 0 and "stopped 1/3" in text.stdout and "variants:" in text.stdout


def test_compare_two_candidates_and_never_a_stopped_one(recorded):
    r = CliRunner().invoke(main, ["report", str(recorded), "--compare", "0", "2"])
    assert r.exit_code == 0, r.output
    assert "F1(c0" in r.stdout and "too few subjects" in r.stdout
    r = CliRunner().invoke(main, ["report", str(recorded), "--compare", "0", "1"])
    assert r.exit_code == 1 and "candidate 1" in r.output and "not a LOSO result" in r.output


def test_plan_says_how_many_candidates_and_the_most_folds(recorded):
    r = CliRunner().invoke(main, ["plan", str(recorded), "--json", "--set", "search.num_samples=5"])
    assert r.exit_code == 0, r.output
    (d,) = json.loads(r.stdout)["datasets"]
    assert d == {"dataset": "samm", "num_samples": 5, "recorded": 3, "finished": 3, "to_run": 2,
                 "folds_per_candidate": 3, "most_folds": 6}


def test_two_candidates_that_drew_the_same_values_share_their_folds(recorded):
    sweep = load_sweep(recorded)
    candidates = load_candidates(sweep)
    again = candidates.add("samm", dict(candidates.items[0].params))  # a choice space can draw a point twice
    again.status, again.folds_done, again.folds_total = "complete", 3, 3
    candidates.save()
    r = CliRunner().invoke(main, ["report", str(recorded), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["index"]: row for row in json.loads(r.stdout)["candidates"]}
    assert rows[3]["complete"] and rows[3]["value"] == rows[0]["value"] and rows[3]["folds_done"] == 3
