"""Report tables: the seed column and the mean ± sd row over seeds, `--compare`'s p-value and words, the
paper's numbers (`paper:`) beside the measured ones, and `report --format md|latex|csv|json`. Fold results
are made by hand (no training, no Ray, no MLflow) so that every number below is computed by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from model.result import FoldResult
from orchestrator.cli import main
from orchestrator.errors import ConfigError
from orchestrator.execution.state import SweepState
from orchestrator.planning.data import record_prepared
from orchestrator.planning.plan import make_plan
from orchestrator.planning.store import ResultsStore
from orchestrator.reporting.report import compare_points, rows, seed_summaries
from orchestrator.spec.resolved import load_sweep

from support import REPO
from support.sweeps import AUS, fake_datasets


def hand_result(subject: str, fp: bool) -> dict:
    """Two test samples per subject: `x` has every AU active, `y` none. Predictions are exact, or with
    `fp` every AU is also predicted active on `y` (one false positive per AU)."""
    labels = np.array([[1] * len(AUS), [0] * len(AUS)], np.uint8)
    probs = np.array([[0.9] * len(AUS), [0.8 if fp else 0.1] * len(AUS)], np.float32)
    return FoldResult(test_subject=subject, seed=1, aus=AUS, sample_ids=[f"{subject}/x", f"{subject}/y"],
                      subjects=[subject] * 2, probs=probs, labels=labels,
                      features=np.zeros((2, len(AUS), 4), np.float32), mer_classes=["positive", "negative"],
                      mer_scores=np.zeros((2, 2), np.float32), mer_labels=[None, None],
                      timings={"total_s": 1.0}).to_dict()


def sweep_file(tmp_path, subjects, seeds=(1,), paper=True, **extra) -> Path:
    doc = {"name": "hand", "workdir": str(tmp_path / "wd"),
           "datasets": {"samm": {"reader": "samm", "root": "/nowhere"}},
           "variants": {"a": {"paper": {"samm": {"f1": 0.9, "acc": 0.95}}} if paper else {},
                        "b": {"model.gsd": False}},
           "seeds": list(seeds), **extra}
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def stored_state(path, subjects, fp):
    """Every fold of the sweep stored with `hand_result(subject, fp(variant, seed, subject))`, the dataset
    recorded (so `microau-sweep report` finds it); the state from the store."""
    spec = load_sweep(path)
    datasets = fake_datasets(spec, {"samm": subjects}, {"samm": "datakey"})
    record_prepared(spec, datasets)
    store = ResultsStore(spec.paths.results)
    for f in make_plan(spec, datasets, store=store).folds:
        store.put(f.key, hand_result(f.subject, fp(f.trial.variant, f.trial.seed, f.subject)), f.meta())
    state = SweepState(make_plan(spec, datasets, store=store), tracking=False)
    state.begin([])
    return state


def report(path, *args):
    return CliRunner().invoke(main, ["report", str(path), *map(str, args)])


FIVE = ["006", "007", "008", "009", "010"]


# -- seeds ----------------------------------------------------------------------------------------------
def test_two_seeds_give_a_seed_column_and_a_mean_sd_row_computed_by_hand(tmp_path):
    """Seed 2 exact: F1 = ACC = 1. Seed 4 with one false positive per AU and subject (5 subjects): per AU
    TP 5, FP 5, FN 0 -> F1 = 10/15 = 2/3, ACC = 5/10 = 1/2. Over the seeds: F1 mean 5/6, sd (ddof=1)
    (1/3)/sqrt(2); pooled over both seeds TP 10, FP 5 -> F1 = 20/25 = 0.8, ACC 15/20 = 0.75."""
    path = sweep_file(tmp_path, FIVE, seeds=[2, 4])
    state = stored_state(path, FIVE, fp=lambda v, seed, s: seed == 4)
    table = rows(state)
    assert [(r["label"], r["seed"]) for r in table] == [("a", 2), ("a", 4), ("b", 2), ("b", 4)]
    assert [r["f1"] for r in table[:2]] == pytest.approx([1, 2 / 3])
    (sa, sb) = seed_summaries(state, table)
    assert (sa["label"], sa["seeds"], sa["seeds_used"], sa["complete"]) == ("a", [2, 4], [2, 4], True)
    s = sa["summary"]
    assert s["f1"]["mean"] == pytest.approx(5 / 6) and s["f1"]["sd"] == pytest.approx(1 / 3 / math.sqrt(2))
    assert s["f1"]["pooled"] == pytest.approx(0.8) and s["f1"]["per_seed"] == pytest.approx({2: 1, 4: 2 / 3})
    assert s["acc"]["mean"] == pytest.approx(0.75) and s["acc"]["sd"] == pytest.approx(0.5 / math.sqrt(2))
    assert s["acc"]["pooled"] == pytest.approx(0.75)
    assert s["per_au"][7]["f1"]["pooled"] == pytest.approx(0.8) and s["mer"] is None
    # the paper's numbers of point a (f1 0.9, acc 0.95) are compared with the mean over the seeds
    assert sa["paper"]["f1"] == pytest.approx({"paper": 0.9, "measured": 5 / 6, "diff": 5 / 6 - 0.9})
    assert sb["paper"] is None

    r = report(path, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [p["seed"] for p in doc["points"]] == [2, 4, 2, 4]
    assert doc["seed_summary"][0]["summary"]["f1"]["pooled"] == pytest.approx(0.8)
    saved = json.loads((tmp_path / "wd" / "reports" / "hand.json").read_text())
    assert saved["seed_summary"][0]["summary"]["acc"]["sd"] == pytest.approx(0.5 / math.sqrt(2))

    text = report(path).stdout
    seeds = text[text.index("samm: over seeds"):text.index("pooled F1 per AU")]
    assert "F1 mean ± sd" in seeds and "F1 pooled" in seeds
    assert [ln.split()[:9] for ln in seeds.splitlines() if ln.strip().startswith(("0 ", "1 "))] == [
        ["0", "a", "2,4", "0.833", "±", "0.236", "0.750", "±", "0.354"],
        ["1", "b", "2,4", "0.833", "±", "0.236", "0.750", "±", "0.354"]]  # b: the same predictions
    assert next(ln for ln in seeds.splitlines() if ln.strip().startswith("0 ")).split()[-2:] == ["0.800", "0.750"]
    per_au = text[text.index("pooled F1 per AU"):].splitlines()
    assert per_au[2].split()[:2] == ["#", "seed"]  # the per-AU table's seed column
    assert [ln.split() for ln in per_au[4:8]] == [["0", "2"] + ["1.000"] * 4, ["0", "4"] + ["0.667"] * 4,
                                                  ["0", "mean", "of", "2"] + ["0.833"] * 4,
                                                  ["0", "sd", "of", "2"] + ["0.236"] * 4]


def test_a_seed_with_unfinished_folds_is_left_out_of_the_summary(tmp_path):
    path = sweep_file(tmp_path, FIVE, seeds=[2, 4, 6])
    state = stored_state(path, FIVE, fp=lambda v, seed, s: seed == 4)
    g = next(g for g in state.groups.values() if g.trial.variant == "a" and g.trial.seed == 6)
    state.store.path(g.folds[0].key).unlink()
    g.done -= 1
    sa = seed_summaries(state)[0]
    assert sa["seeds_used"] == [2, 4] and not sa["complete"]
    assert sa["summary"]["f1"]["mean"] == pytest.approx(5 / 6)


# -- compare --------------------------------------------------------------------------------------------
def test_compare_beyond_the_noise_computed_by_hand(tmp_path):
    """a exact, b one false positive per AU and subject: in every bootstrap resample F1(a) = 1 and
    F1(b) = 2/3 (ratios of counts scaled alike), so the difference is 1/3 in all of them: CI [1/3, 1/3],
    p = 2 * min(P(d <= 0), P(d >= 0)) = 0. ACC: 1 - 1/2."""
    path = sweep_file(tmp_path, FIVE)
    state = stored_state(path, FIVE, fp=lambda v, seed, s: v == "b")
    (c,) = compare_points(state, 0, 1)
    assert c["diff"] == pytest.approx(1 / 3) and c["ci"] == pytest.approx([1 / 3, 1 / 3])
    assert c["p"] == 0.0 and c["acc_diff"] == pytest.approx(0.5) and c["subjects"] == 5
    assert c["verdict"]["code"] == "a_better" and "a scores higher than b" in c["verdict"]["text"]
    (c,) = compare_points(state, 1, 0)
    assert c["verdict"]["code"] == "b_better" and "a scores higher than b" in c["verdict"]["text"]
    r = report(path, "--compare", 0, 1)
    assert r.exit_code == 0, r.output
    assert "F1(a) - F1(b) = +0.3333  95% CI [+0.3333, +0.3333]  p = 0.000" in r.stdout
    assert "ACC(a) - ACC(b) = +0.5000" in r.stdout and "beyond the noise" in r.stdout
    doc = json.loads(report(path, "--compare", 0, 1, "--json").stdout)
    assert doc["compare"][0]["p"] == 0.0 and doc["compare"][0]["verdict"]["code"] == "a_better"


def test_compare_inside_the_noise(tmp_path):
    """Six subjects; a has its false positives on subject 006 only, b on 007 only: both pool to TP 6,
    FP 1 per AU, F1 12/13, so the difference is exactly 0; resamples drawing 006 more often favour b and
    the others a, so the CI straddles 0 and p is large."""
    six = FIVE + ["011"]
    path = sweep_file(tmp_path, six)
    state = stored_state(path, six, fp=lambda v, seed, s: (v, s) in {("a", "006"), ("b", "007")})
    (c,) = compare_points(state, 0, 1)
    assert rows(state)[0]["f1"] == pytest.approx(12 / 13) and c["diff"] == pytest.approx(0)
    assert c["ci"][0] < 0 < c["ci"][1] and c["p"] > 0.5
    assert c["verdict"]["code"] == "inside_noise"
    assert "inside the noise" in report(path, "--compare", 0, 1).stdout


def test_compare_with_too_few_subjects_says_so_whatever_the_p_value(tmp_path):
    """The same clear difference as above (p = 0) on 3 subjects: too few to tell."""
    three = FIVE[:3]
    path = sweep_file(tmp_path, three)
    state = stored_state(path, three, fp=lambda v, seed, s: v == "b")
    (c,) = compare_points(state, 0, 1)
    assert c["p"] == 0.0 and c["subjects"] == 3 and c["verdict"]["code"] == "too_few_subjects"
    out = report(path, "--compare", 0, 1).stdout
    assert "too few subjects to tell: 3 test subject(s) (< 5)" in " ".join(out.split())
    # and the table's CIs carry the same warning
    assert "too few subjects to tell points apart" in " ".join(out.split())


# -- paper numbers --------------------------------------------------------------------------------------
def test_paper_numbers_do_not_change_any_config_hash(tmp_path):
    with_numbers = load_sweep(sweep_file(tmp_path, FIVE))
    without = load_sweep(sweep_file(tmp_path, FIVE, paper=False))
    assert [t.hash for t in with_numbers.trials] == [t.hash for t in without.trials]
    assert [p.paper for p in with_numbers.points] == [{"samm": {"f1": 0.9, "acc": 0.95}}, {}]
    assert all("paper" not in t.params for t in with_numbers.trials)
    # a grid value with numbers is the same value for the config
    doc = yaml.safe_load(sweep_file(tmp_path, FIVE, paper=False).read_text())
    doc["grid"] = {"training.beta": [{"value": 0.2, "paper": {"samm": {"f1": 0.7}}}, 0.4]}
    a = load_sweep(_write(tmp_path, doc))
    doc["grid"] = {"training.beta": [0.2, 0.4]}
    b = load_sweep(_write(tmp_path, doc, "b.yaml"))
    assert [t.hash for t in a.trials] == [t.hash for t in b.trials]
    assert [p.label for p in a.points][:2] == ["a,training.beta=0.2", "a,training.beta=0.4"]
    assert [p.paper for p in a.points][:2] == [{"samm": {"f1": 0.7}}, {}]
    assert a.trials[0].training.beta == 0.2


def _write(tmp_path, doc, name="g.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("paper, needle", [
    ({"casme2": {"f1": 0.5}}, r"variants.a.paper.casme2: no dataset 'casme2' in this file \(datasets: samm\)"),
    ({"samm": {"uf1": 0.5}}, r"variants.a.paper.samm.uf1: unknown paper metric 'uf1' \(known: f1, acc, "),
    ({"samm": {"f1": 1.2}}, r"variants.a.paper.samm.f1: Input should be less than or equal to 1 \(got 1.2\)"),
    ({"samm": {"acc": -0.1}}, r"variants.a.paper.samm.acc: Input should be greater than or equal to 0"),
    ({"samm": {"text_si": -1.5}}, r"variants.a.paper.samm.text_si: Input should be greater than or equal to -1"),
    ({"samm": {"f1": "high"}}, r"variants.a.paper.samm.f1: Input should be a valid number"),
    ([0.5], r"variants.a.paper: write a mapping of dataset -> metrics"),
])
def test_bad_paper_numbers_are_errors_naming_the_key(tmp_path, paper, needle):
    doc = yaml.safe_load(sweep_file(tmp_path, FIVE).read_text())
    doc["variants"]["a"]["paper"] = paper
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError, match=needle):
        load_sweep(path)
    r = report(path)
    assert r.exit_code == 1 and "Error: " in r.output and "Traceback" not in r.output


def test_the_same_paper_number_from_a_variant_and_a_grid_value_is_an_error(tmp_path):
    doc = yaml.safe_load(sweep_file(tmp_path, FIVE).read_text())
    doc["grid"] = {"training.beta": [{"value": 0.2, "paper": {"samm": {"f1": 0.7}}}]}
    with pytest.raises(ConfigError, match=r"point a,training.beta=0.2: paper samm.f1 is given by both "
                                          r"variants.a.paper and grid.training.beta value 0.2"):
        load_sweep(_write(tmp_path, doc))


# Every paper-table sweep: its points and the numbers transcribed from the paper's table
# (point label -> {dataset: {metric: value}}); points absent here carry no numbers.
SHIPPED = {
    "lsi_gsd": {  # Table II
        "lsi_only": {"casme2": {"f1": 0.761, "acc": 0.904}, "samm": {"f1": 0.714, "acc": 0.846}},
        "gsd_only": {"casme2": {"f1": 0.730, "acc": 0.898}, "samm": {"f1": 0.638, "acc": 0.812}},
        "full": {"casme2": {"f1": 0.782, "acc": 0.917}, "samm": {"f1": 0.730, "acc": 0.863}},
        "paper_numbers_reading_lsi_off_global_origcl": {"casme2": {"f1": 0.730, "acc": 0.898},
                                                        "samm": {"f1": 0.638, "acc": 0.812}}},
    "text_encoder": {  # Table III
        f"{v},model.text={t}": n for v in ("full", "paper_numbers_reading_add_mlp") for t, n in (
            ("fixed", {"casme2": {"f1": 0.769, "acc": 0.898, "text_si": 0.994},
                       "samm": {"f1": 0.702, "acc": 0.812, "text_si": 0.994}}),
            ("finetune", {"casme2": {"f1": 0.776, "acc": 0.912, "text_si": -0.902},
                          "samm": {"f1": 0.716, "acc": 0.853, "text_si": -0.902}}))},
    "alpha": {  # Table IV
        f"{v},training.alpha={a}": {"casme2": {"f1": c[0], "acc": c[1]}, "samm": {"f1": s[0], "acc": s[1]}}
        for v in ("full", "paper_numbers_reading_add_mlp") for a, c, s in (
            (0.2, (0.770, 0.908), (0.712, 0.852)), (0.4, (0.776, 0.908), (0.687, 0.833)),
            (0.6, (0.776, 0.912), (0.715, 0.849)), (0.8, (0.764, 0.911), (0.696, 0.849)),
            (1.0, (0.767, 0.912), (0.716, 0.853)))},
    "beta": {  # Table V
        f"training.beta={b}": {"casme2": {"f1": c[0], "acc": c[1]}, "samm": {"f1": s[0], "acc": s[1]}}
        for b, c, s in ((0.2, (0.780, 0.914), (0.704, 0.848)), (0.4, (0.775, 0.912), (0.712, 0.852)),
                        (0.6, (0.776, 0.914), (0.730, 0.863)), (0.8, (0.769, 0.911), (0.693, 0.843)),
                        (1.0, (0.782, 0.917), (0.711, 0.855)))},
    "pooling": {  # Table VI
        f"{v},model.pooling={p}": {"casme2": {"f1": c[0], "acc": c[1]}, "samm": {"f1": s[0], "acc": s[1]}}
        for v in ("full", "paper_numbers_reading_add_mlp") for p, c, s in (
            ("mean", (0.754, 0.902), (0.680, 0.837)), ("max", (0.765, 0.909), (0.709, 0.849)),
            ("pta", (0.776, 0.912), (0.716, 0.853)))},
    "dependency": {  # Table VII
        f"model.dependency={d}": {"casme2": {"f1": c[0], "acc": c[1]}, "samm": {"f1": s[0], "acc": s[1]}}
        for d, c, s in (("cat_mlp", (0.771, 0.909), (0.641, 0.833)), ("add_mlp", (0.776, 0.912), (0.716, 0.853)),
                        ("gda", (0.782, 0.917), (0.730, 0.863)))},
    "contrastive": {  # Table VIII
        v: {"casme2": {"f1": c[0], "acc": c[1]}, "samm": {"f1": s[0], "acc": s[1]}}
        for v, c, s in (("no_cl", (0.759, 0.902), (0.725, 0.853)), ("global_origcl", (0.730, 0.898), (0.638, 0.812)),
                        ("local_origcl", (0.756, 0.907), (0.691, 0.848)), ("miaucl", (0.782, 0.917), (0.730, 0.863)),
                        ("paper_numbers_reading_lsi_off_global_origcl", (0.730, 0.898), (0.638, 0.812)))},
    "main": {"full": {"casme2": {"f1": 0.782}, "samm": {"f1": 0.730}}},  # Table IX: F1 only
    "mer": {"wo_gda": {"casme2": {"mer_f1": 0.872}, "samm": {"mer_f1": 0.696}},  # Table X
            "full": {"casme2": {"mer_f1": 0.889}, "samm": {"mer_f1": 0.747}}},
}


@pytest.fixture
def paper_env(monkeypatch):
    for var in ("CASME2_ROOT", "SAMM_ROOT", "MICROAU_MAGNET_WEIGHTS"):
        monkeypatch.setenv(var, "/data")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_paper_table_sweep_carries_the_papers_numbers(name, paper_env):
    spec = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    got = {p.label: p.paper for p in spec.points if p.paper}
    assert got == SHIPPED[name]


def test_paper_columns_appear_for_a_paper_table_sweep(tmp_path, paper_env):
    """sweeps/lsi_gsd.yaml (Table II) with hand-made folds: the report prints the paper's numbers
    beside the measured ones, with the difference; the export carries them."""
    path = REPO / "sweeps" / "lsi_gsd.yaml"
    spec = load_sweep(path, [f"workdir={tmp_path / 'wd'}"])
    datasets = fake_datasets(spec, {"casme2": ["sub01", "sub02"], "samm": ["006", "007"]},
                             {"casme2": "kc", "samm": "ks"})
    # CASME II has 8 AUs: hand_result's 4 AUs stand for the dataset's own list here (pooling checks only
    # that the folds of a point agree)
    record_prepared(spec, datasets)
    store = ResultsStore(spec.paths.results)
    for f in make_plan(spec, datasets, store=store).folds:
        store.put(f.key, hand_result(f.subject, fp=f.trial.variant != "full"), f.meta())
    state = SweepState(make_plan(spec, datasets, store=store), tracking=False)
    state.begin([])
    full = next(r for r in rows(state) if r["label"] == "full" and r["dataset"] == "casme2")
    assert full["f1"] == 1.0
    assert full["paper"]["f1"] == pytest.approx({"paper": 0.782, "measured": 1.0, "diff": 1.0 - 0.782})
    r = CliRunner().invoke(main, ["report", str(path), "--set", f"workdir={tmp_path / 'wd'}"])
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "casme2: measured vs the paper (difference = measured - paper)" in text
    line = next(ln for ln in text[text.index("casme2: measured vs"):].splitlines() if " full " in ln)
    assert line.split()[-6:] == ["1.000", "0.782", "+0.218", "1.000", "0.917", "+0.083"]
    r = CliRunner().invoke(main, ["report", str(path), "--set", f"workdir={tmp_path / 'wd'}", "--format", "md"])
    assert r.exit_code == 0, r.output
    header, _, *body = r.stdout.strip().splitlines()
    assert header.startswith("| # | point | casme2 F1 | casme2 F1 (paper) | casme2 ACC | casme2 ACC (paper) | samm F1")
    assert body[2] == ("| 2 | full | 1.000 | 0.782 | 1.000 | 0.917 | 1.000 | 0.730 | 1.000 | 0.863 |")


# -- exports --------------------------------------------------------------------------------------------
@pytest.fixture
def two_seed_sweep(tmp_path):
    path = sweep_file(tmp_path, FIVE, seeds=[2, 4])
    stored_state(path, FIVE, fp=lambda v, seed, s: seed == 4 or v == "b")
    return path


def test_export_csv(two_seed_sweep, tmp_path):
    out = tmp_path / "t.csv"
    r = report(two_seed_sweep, "--format", "csv", "--output", out, "--per-au")
    assert r.exit_code == 0, r.output
    assert f"csv table written to {out}" in " ".join(r.stdout.split()) and "pooled LOSO metrics" in r.stdout
    df = pd.read_csv(out)
    assert list(df["label"]) == ["a", "b"]
    a, b = df.iloc[0], df.iloc[1]
    assert a["samm_f1"] == pytest.approx(5 / 6, abs=1e-6) and a["samm_f1_sd"] == pytest.approx(0.235702, abs=1e-6)
    assert a["samm_f1_pooled"] == pytest.approx(0.8) and a["samm_acc"] == pytest.approx(0.75)
    assert a["samm_f1_paper"] == 0.9 and a["samm_f1_diff"] == pytest.approx(5 / 6 - 0.9, abs=1e-6)
    assert b["samm_f1"] == pytest.approx(2 / 3, abs=1e-6) and b["samm_f1_sd"] == 0
    assert np.isnan(b["samm_f1_paper"]) and a["samm_AU2_f1"] == pytest.approx(5 / 6, abs=1e-6)
    assert bool(a["samm_complete"]) and a["samm_folds"] == "10/10"
    assert {"samm_AU2_f1", "samm_AU12_f1_sd"} <= set(df.columns)


def test_export_json(two_seed_sweep):
    r = report(two_seed_sweep, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout holds the table alone
    assert doc["datasets"] == ["samm"] and doc["metrics"] == ["f1", "acc"] and doc["seeds"] == [2, 4]
    a = doc["rows"][0]["datasets"]["samm"]
    assert (doc["rows"][0]["label"], a["f1"], a["f1_pooled"]) == ("a", pytest.approx(5 / 6), pytest.approx(0.8))
    assert a["paper"] == {"f1": 0.9, "acc": 0.95} and a["diff"]["acc"] == pytest.approx(0.75 - 0.95)
    assert "per_au" not in a and doc["per_au"] == {}


def test_export_markdown(two_seed_sweep):
    r = report(two_seed_sweep, "--format", "md", "--per-au")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == ("| # | point | samm F1 | samm F1 (paper) | samm ACC | samm ACC (paper) | samm AU2 | "
                        "samm AU4 | samm AU7 | samm AU12 |")
    assert lines[1] == "|---:|---|" + "---:|" * 8
    assert lines[2] == ("| 0 | a | 0.833 ± 0.236 | 0.900 | 0.750 ± 0.354 | 0.950 | " +
                        " | ".join(["0.833 ± 0.236"] * 4) + " |")
    assert lines[3].startswith("| 1 | b | 0.667 ± 0.000 | - | 0.500 ± 0.000 | - |")
    assert "Seeds 2, 4: mean ± sample sd" in r.stdout


def test_export_latex(two_seed_sweep, tmp_path):
    doc = yaml.safe_load(two_seed_sweep.read_text())
    doc["variants"]["with_under_score & 50%"] = doc["variants"].pop("b")
    two_seed_sweep.write_text(yaml.safe_dump(doc))
    out = tmp_path / "t.tex"
    assert report(two_seed_sweep, "--format", "latex", "-o", out).exit_code == 0
    tex = out.read_text().splitlines()
    assert tex[0] == r"\begin{tabular}{rlcccc}" and tex[1] == r"\toprule"
    assert tex[2] == r" & & \multicolumn{4}{c}{samm} \\" and tex[3] == r"\cmidrule(lr){3-6}"
    assert tex[4] == r"\# & Point & F1 & F1 (paper) & ACC & ACC (paper) \\"
    assert tex[6] == r"0 & a & 0.833 $\pm$ 0.236 & 0.900 & 0.750 $\pm$ 0.354 & 0.950 \\"
    # folds of the renamed variant are not in the store (its label is new, its config the same: reused)
    assert tex[7].startswith(r"1 & with\_under\_score \& 50\% & 0.667 $\pm$ 0.000 & - &")
    assert tex[8:10] == [r"\bottomrule", r"\end{tabular}"]


def test_export_marks_incomplete_points(tmp_path):
    path = sweep_file(tmp_path, FIVE)
    state = stored_state(path, FIVE, fp=lambda v, seed, s: False)
    g = next(iter(state.groups.values()))
    state.store.path(g.folds[0].key).unlink()
    md = report(path, "--format", "md").stdout
    assert "| 0 | a (incomplete: samm 4/5 folds) | 1.000 |" in md


@pytest.mark.parametrize("args, needle", [
    (["--output", "x.md"], "--output goes with --format"),
    (["--per-au"], "--per-au goes with --format"),
    (["--format", "json", "--json"], "--json prints the whole report object"),
    (["--format", "pdf"], "'pdf' is not one of"),
])
def test_export_option_errors(two_seed_sweep, args, needle):
    r = report(two_seed_sweep, *args)
    assert r.exit_code == 2 and needle in r.output


def test_export_to_an_unwritable_path_is_an_error(two_seed_sweep, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = report(two_seed_sweep, "--format", "md", "--output", tmp_path / "afile" / "t.md")
    assert r.exit_code == 1 and "Error: --output" in r.output and "cannot write it" in r.output
    assert "Traceback" not in r.output


def test_existing_report_files_keep_their_columns(two_seed_sweep):
    """reports/<sweep>.csv stays one row per (dataset, point, seed); the JSON gains `seed_summary`."""
    report(two_seed_sweep)
    df = pd.read_csv(two_seed_sweep.parent / "wd" / "reports" / "hand.csv")
    assert list(df["seed"]) == [2, 4, 2, 4] and "f1_AU2" in df.columns and "ci_f1_low" in df.columns


def test_data_warnings_print_styled_and_at_most_ten_per_dataset():
    """A dataset with many notes (CAS(ME)^3 lost frames in most videos) prints the first ten and a count;
    the text is printed as written (no markup read from it), the label styled (no literal `[yellow]`)."""
    import io

    from rich.console import Console

    from orchestrator.reporting.view import MAX_WARNINGS, print_report

    buf = io.StringIO()
    notes = [{"dataset": "casme3", "data_id": "casme3@x", "skipped": [], "dropped_subjects": [],
              "apex_estimated": [], "corrected": [],
              "warnings": [{"sample": f"spNO.{i}/a_1", "warning": f"sheet: row {i}: [bold]frame(s) 1-7[/bold]"}
                           for i in range(MAX_WARNINGS + 3)]}]
    print_report(Console(file=buf, width=200), [], notes=notes)
    lines = buf.getvalue().splitlines()
    shown = [ln for ln in lines if ln.startswith("warning sheet: row")]
    assert len(shown) == MAX_WARNINGS and shown[0] == "warning sheet: row 0: [bold]frame(s) 1-7[/bold]"
    assert "warning casme3: ... and 3 more (every one is under data_notes in the report's JSON)" in lines
    assert "[yellow]" not in buf.getvalue()
