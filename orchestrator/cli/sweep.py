"""`microau-sweep plan | fold | run | report`: the dry run, one fold in-process, the Ray Tune sweep, the table
from the store. Each builds the sweep's `Plan` once (orchestrator/planning/plan.py) and reads it."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import search as search_cli
from orchestrator.cli.errors import friendly_errors
from orchestrator.errors import ConfigError
from orchestrator.execution.trainable import prefix_for, run_fold
from orchestrator.planning.candidates import with_candidates
from orchestrator.planning.data import data_id, data_ids, prepare
from orchestrator.planning.plan import CROSS_SUBJECT, make_plan, plan_from_store
from orchestrator.planning.store import atomic_write_text, claim_name
from orchestrator.reporting.report import compare_points, plan_document, seed_summaries
from orchestrator.reporting.results import SweepResults, results_from_store
from orchestrator.reporting.tables import document, render
from orchestrator.reporting.view import console as make_console
from orchestrator.reporting.view import live_view, log_view, print_report
from orchestrator.spec.resolved import Sweep, load_sweep

SWEEP = click.argument("sweep_file", metavar="SWEEP", type=click.Path(dir_okay=False))
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="override a dotted key of the sweep file (repeatable), e.g. --set training.epochs=2; "
                        "validated like the file, and part of the config hash")


# A fold (or a small synthetic point) may have no positive sample of an AU: F1 is 0 by definition there.
warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def load(path: str, overrides=(), tracking_uri: str | None = None) -> Sweep:
    """The resolved sweep of a command's SWEEP argument and its `--set`s (an error: `Error: ...`, exit 1)."""
    with friendly_errors():  # a search's points are its candidates so far (orchestrator/planning/candidates.py)
        return with_candidates(load_sweep(path, overrides, tracking_uri=tracking_uri))


def pick_point(sweep: Sweep, sweep_file: str, dataset: str | None, point: int, seed: int | None):
    """`--dataset` (default: the sweep's only dataset), `--point` and `--seed` (default: the sweep's first)
    checked against the sweep -> (dataset, seed); a click.UsageError saying what there is otherwise."""
    if dataset is None:
        if len(sweep.datasets) != 1:
            raise click.UsageError(f"{sweep_file} has datasets {sorted(sweep.datasets)}; pick one with --dataset")
        dataset = next(iter(sweep.datasets))
    if dataset not in sweep.datasets:
        raise click.UsageError(f"{sweep_file}: no dataset {dataset!r}; the file has {sorted(sweep.datasets)}")
    return dataset, _point_seed(sweep, sweep_file, point, seed)


def _point_seed(sweep: Sweep, sweep_file: str, point: int, seed: int | None) -> int:
    """`--point` checked against the sweep's points -> the seed (`--seed`, default: the sweep's first)."""
    points = sweep.points
    if not 0 <= point < len(points):
        raise click.UsageError(f"--point {point}: {sweep_file} has points 0..{len(points) - 1} "
                               f"({', '.join(p.label for p in points)})")
    return sweep.seeds[0] if seed is None else seed


# ------------------------------------------------------------------------------------------------------
@click.command()
@SWEEP
@SET
@click.option("--dataset", help="dataset name of the sweep file (default: its only dataset)")
@click.option("--subject", help="LOSO: the test subject (trained on all the others); required")
@click.option("--train", "train_on", help="cross_dataset sweeps: the pair's train dataset (default: the only pair)")
@click.option("--test", "test_on", help="cross_dataset sweeps: the pair's test dataset; leave_one_dataset_out "
                                        "sweeps: the held-out dataset")
@click.option("--point", type=int, default=0, show_default=True, help="grid point index (see `report`)")
@click.option("--seed", type=int, help="seed (default: the sweep's first)")
@click.option("--epochs", type=int, help="override training.epochs (quick debugging)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def fold(sweep_file: str, overrides, dataset: str | None, subject: str | None, train_on: str | None,
         test_on: str | None, point: int, seed: int | None, epochs: int | None, as_json: bool) -> None:
    """Run one LOSO fold (or one cross-dataset unit: --train, --test; one leave-one-dataset-out unit: --test)
    in-process, with exactly the code a sweep trial runs (no Ray)."""
    sweep = load(sweep_file, overrides)
    if sweep.across:
        dataset = _unit(sweep, sweep_file, dataset, subject, train_on, test_on)
        subject = CROSS_SUBJECT
        seed = _point_seed(sweep, sweep_file, point, seed)
    else:
        if train_on or test_on:
            raise click.UsageError(f"--train/--test pick a unit of a cross_dataset or leave_one_dataset_out sweep; "
                                   f"{sweep_file} runs LOSO: "
                                   f"use --dataset and --subject")
        if subject is None:
            raise click.UsageError("Missing option '--subject' (the test subject of the LOSO fold)")
        dataset, seed = pick_point(sweep, sweep_file, dataset, point, seed)
    points = sweep.points
    out = sys.stderr if as_json else sys.stdout
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        trial = sweep.trial(dataset, point, seed)
        plan = make_plan(sweep, {i: prepare(sweep, name, trial.preprocessing, progress=True)
                                 for name, i in zip(trial.reads, data_ids(trial), strict=False)})
        data = plan.datasets[data_id(trial)]
        test_data = plan.datasets[data_ids(trial)[1]] if trial.cross else None
        if epochs is not None:
            if epochs < 1:
                raise click.UsageError("--epochs must be at least 1")
            trial = trial.with_training(epochs=epochs)
        subjects = sorted(set(data.subjects))
        if not trial.cross and subject not in subjects:
            raise click.UsageError(f"--subject {subject!r} is not in dataset {dataset} (subjects: "
                                   f"{', '.join(subjects)})")
        what = f"trained on {trial.train}, tested on every subject of {trial.test}" if trial.cross else \
            f"test subject {subject}"
        print(f"fold {dataset} / {points[point].label} / seed {seed} / {what}: "
              f"{trial.training.epochs} epochs", file=out, flush=True)
        prefix = prefix_for(trial, data, sweep.paths.cache)
        test_prefix = prefix_for(trial, test_data, sweep.paths.cache) if trial.cross else None
        result = run_fold(trial, data, subject, prefix=prefix, on_epoch=epoch_printer(out), test_data=test_data,
                          test_prefix=test_prefix)
    doc = fold_document(trial, subject, result)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    _print_fold(doc)


def _unit(sweep: Sweep, sweep_file: str, dataset: str | None, subject: str | None, train_on: str | None,
          test_on: str | None) -> str:
    """The label (`train->test`) of the cross-dataset pair, or leave-one-dataset-out unit, that --train/--test
    pick."""
    units = list(dict.fromkeys((t.train, t.test) for t in sweep.trials))
    if sweep.cross_dataset:
        what, opts = "the cross-dataset protocol: a unit trains on every subject of one dataset and tests on every " \
                     "subject of the other; pick a pair with --train and --test", "pair"
    else:
        what, opts = "leave-one-dataset-out: a unit trains on every other dataset and tests on every subject of " \
                     "the one held out; pick a unit with --test", "unit"
    if subject is not None or dataset is not None:
        raise click.UsageError(f"{sweep_file} runs {what} instead of --dataset/--subject")
    mine = [u for u in units if (train_on is None or u[0] == train_on) and (test_on is None or u[1] == test_on)]
    if len(mine) != 1:
        have = ", ".join(f"--train {a} --test {b}" if sweep.cross_dataset else f"--test {b}" for a, b in units)
        why = f"has several {opts}s" if mine else f"has no such {opts}"
        raise click.UsageError(f"{sweep_file} {why}; pick one: {have}")
    return f"{mine[0][0]}->{mine[0][1]}"


def epoch_printer(out):
    """on_epoch for `model.train.fit`: one line per epoch with the loss terms on `out`."""
    def on_epoch(info: dict[str, Any]) -> None:
        terms = "  ".join(f"{k} {v:.4f}" for k, v in info.items() if k in ("total", "multitask", "contrastive", "gd"))
        print(f"epoch {info['epoch']}/{info.get('epochs', '?')}  {terms}  ({info.get('seconds', 0):.1f}s)",
              file=out, flush=True)
    return on_epoch


def fold_document(trial, subject: str, result: dict[str, Any]) -> dict[str, Any]:
    """The `fold --json` object: dataset, subject, per-sample predictions, fold metrics."""
    from model.metrics import pooled_metrics
    from model.result import FoldResult

    r = FoldResult.from_dict(result)
    preds = r.preds
    mer_preds = r.mer_preds
    predictions = []
    for i, sid in enumerate(r.sample_ids):
        p = {"id": sid, "subject": r.subjects[i],
             "probs": {f"AU{a}": float(r.probs[i, j]) for j, a in enumerate(r.aus)},
             "labels": {f"AU{a}": int(r.labels[i, j]) for j, a in enumerate(r.aus)},
             "preds": {f"AU{a}": int(preds[i, j]) for j, a in enumerate(r.aus)}}
        if mer_preds:
            p["mer_label"], p["mer_pred"] = r.mer_labels[i], mer_preds[i]
        predictions.append(p)
    m = pooled_metrics([r])
    metrics = {k: m.get(k) for k in ("f1", "acc", "per_au", "mer", "text_si")}
    return {"dataset": trial.dataset, "subject": subject, "point": trial.point_label, "seed": trial.seed,
            "config_hash": trial.hash, "predictions": predictions, "metrics": metrics,
            "loss_curve": r.loss_curve, "timings": r.timings}


def _print_fold(doc: dict[str, Any]) -> None:
    from rich.table import Table

    c = make_console()
    aus = list(doc["predictions"][0]["probs"]) if doc["predictions"] else []
    t = Table(title=f"{doc['dataset']} test subject {doc['subject']}: P(active) (label)")
    t.add_column("sample")
    for au in aus:
        t.add_column(au, justify="right")
    for p in doc["predictions"]:
        t.add_row(p["id"], *[f"{p['probs'][a]:.2f} ({p['labels'][a]})" for a in aus])
    c.print(t)
    m = doc["metrics"]
    per = "  ".join(f"AU{str(au).removeprefix('AU')}: F1 {v['f1']:.3f}"
                    for au, v in (m.get("per_au") or {}).items())
    c.print(f"fold F1 {m['f1']:.3f}  ACC {m['acc']:.3f}   {per}")


# ------------------------------------------------------------------------------------------------------
@click.command()
@SWEEP
@SET
@click.option("--address", help="join this Ray cluster (e.g. 10.0.0.1:6379 or auto); default: a local Ray")
@click.option("--tracking-uri", help="MLflow tracking URI (default: tracking.uri of the sweep file, else "
                                     "sqlite:///<workdir>/mlflow.db)")
@click.option("--dashboard", is_flag=True, help="embedded Ray only: serve the Ray dashboard on "
                                                "http://127.0.0.1:8265 while the sweep runs")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option("--share-name", is_flag=True, help="another sweep file of this workdir has the same name on "
                                                  "purpose: share its MLflow experiment and report file")
@click.option("--no-figures", "no_figures", is_flag=True,
              help="do not draw the figures of newly completed points on their MLflow runs at the end (a few "
                   "seconds; `report --figures` draws them from the store at any time)")
def run(sweep_file: str, overrides, address: str | None, tracking_uri: str | None, dashboard: bool,
        as_json: bool, share_name: bool, no_figures: bool) -> None:
    """Run the sweep's LOSO folds with Ray Tune (skipping folds already in the results store)."""
    from orchestrator.execution.runner import run_sweep  # the runner's imports (OpenCV, ...): `run` only

    sweep = load(sweep_file, overrides, tracking_uri=tracking_uri)
    if sweep.spec.search is not None:
        return search_cli.run(sweep, address, as_json, dashboard, share_name)
    console = make_console(stderr=as_json)
    if console.is_terminal and not as_json:
        view = live_view(console)
    else:  # a log, a pipe, a batch job: one plain line per fold (stderr under --json)
        view = log_view(sys.stderr if as_json else sys.stdout)
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = run_sweep(sweep, address=address, quiet=as_json, progress=True, view=view,
                            dashboard=dashboard, share_name=share_name, figures=not no_figures)
        paths = outcome.state.write_reports()
    if as_json:
        doc = outcome.state.to_json(outcome.trained, outcome.reused)
        doc["timings"] = outcome.timings  # where the wall time went (orchestrator.execution.runner.RunTimings)
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
    else:
        rows = outcome.state.rows()
        print_report(console, rows, outcome.trained, outcome.reused, paths, notes=outcome.state.data_notes(),
                     summaries=seed_summaries(outcome.state, rows))
    if outcome.failed or not all(r["complete"] for r in outcome.state.rows()):
        raise SystemExit(1)  # a fold kept failing or the run was interrupted: some point is incomplete


# ------------------------------------------------------------------------------------------------------
@click.command()
@SWEEP
@SET
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option("--compare", nargs=2, type=int, metavar="K L",
              help="paired difference in pooled F1 and ACC between points K and L: subject-bootstrap CI, "
                   "p-value and what it means")
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv", "json"]),
              help="write the table in the layout of the paper's tables (one row per point, F1/ACC per "
                   "dataset, the paper's numbers beside them) to stdout, or to --output")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="with --format: write it to this file")
@click.option("--per-au", is_flag=True, help="with --format: add the per-AU F1 columns")
@click.option("--share-name", is_flag=True, help="another sweep file of this workdir has the same name on "
                                                  "purpose (see run --share-name)")
@click.option("--figures", is_flag=True, help="also draw the figures (PNG; docs/figures.md) from the stored folds")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="folder of the figures (default: <workdir>/reports/<sweep>-figures)")
@click.option("--figure-au", type=int, metavar="N", help="AU of Fig. 6 and 7 (default: AU1, else the first AU)")
@click.option("--figure-points", metavar="K,L,...",
              help="points Fig. 6 (the first two) and Fig. 7 (all) compare (default: the first points, up to 4)")
def report(sweep_file: str, overrides, as_json: bool, compare, fmt: str | None, output: str | None,
           per_au: bool, share_name: bool, figures: bool, out_dir: str | None, figure_au: int | None,
           figure_points: str | None) -> None:
    """Rebuild the table from the results store (no training); --figures draws the figures too."""
    if (output or per_au) and not fmt:
        raise click.UsageError(f"{'--output' if output else '--per-au'} goes with --format md|latex|csv|json")
    if fmt and as_json:
        raise click.UsageError("--json prints the whole report object; --format json the paper-layout table: "
                               "pick one")
    sweep = load(sweep_file, overrides)
    if not figures and (out_dir or figure_au is not None or figure_points):
        raise click.UsageError("--out, --figure-au and --figure-points go with --figures")
    points = _point_list(figure_points) if figure_points else None
    if sweep.spec.search is not None and not fmt and not figures:  # the candidates, ranked
        _print_comparison(make_console(), search_cli.report(sweep, as_json, compare, share_name))
        return
    # --format without --output: stdout holds the table alone (to redirect), the rest goes to stderr
    quiet = as_json or bool(fmt and not output)
    console = make_console(stderr=quiet)
    # No workdir lock (orchestrator.planning.lock): report only reads the results store, whose folds are written
    # atomically, and writes its report files atomically, so it runs fine beside a sweep and never waits.
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
        claim_name(sweep, share=share_name)
        state = results_from_store(plan_from_store(sweep, strict=True))
        comparison = compare_points(state, *compare) if compare else None
        paths = state.write_reports()
        figure_paths = None
        table = _export(state, fmt, per_au, output) if fmt else None
        if figures:
            from orchestrator.reporting.figures import write_figures  # OpenCV (and matplotlib): --figures only

            folder = out_dir or sweep.paths.reports / f"{sweep.name}-figures"
            figure_paths = write_figures(state, folder, au=figure_au, points=points)
    if as_json:
        doc = state.to_json(0, sum(g.done for g in state.groups.values()))
        if comparison is not None:
            doc["compare"] = comparison
        if figures:
            doc["figures"] = figure_paths
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return
    if fmt and not output:
        sys.stdout.write(table)
        sys.stdout.flush()
        _print_comparison(console, comparison)
        _print_figures(console, figure_paths)
        return
    rows = state.rows()
    print_report(console, rows, paths=paths, notes=state.data_notes(), summaries=seed_summaries(state, rows))
    _print_figures(console, figure_paths)
    _print_comparison(console, comparison)
    if output:
        console.print(f"{fmt} table written to {output}", highlight=False)


def _export(state: SweepResults, fmt: str, per_au: bool, output: str | None) -> str:
    """The paper-layout table (orchestrator/reporting/tables.py) as text; written atomically to `output` if given."""
    text = render(document(state, per_au=per_au), fmt)
    if output:
        try:
            atomic_write_text(Path(output).expanduser(), text)
        except OSError as e:
            raise ConfigError(f"--output {output}: cannot write it ({e.strerror or e}); pick a writable "
                              f"path") from None
    return text


def _print_comparison(console, comparison) -> None:
    for c in comparison or []:
        console.print(f"{c['dataset']} seed {c['seed']}: F1({c['a']}) - F1({c['b']}) = {c['diff']:+.4f}  "
                      f"95% CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]  p = {c['p']:.3f}  "
                      f"(paired bootstrap over {c['subjects']} subjects)", highlight=False)
        console.print(f"  ACC({c['a']}) - ACC({c['b']}) = {c['acc_diff']:+.4f}  95% CI "
                      f"[{c['acc_ci'][0]:+.4f}, {c['acc_ci'][1]:+.4f}]", highlight=False)
        style = "yellow" if c["verdict"]["code"] == "too_few_subjects" else ""
        console.print(f"  {c['verdict']['text']}", style=style, highlight=False, soft_wrap=True)


def _print_figures(console, figure_paths) -> None:
    if figure_paths is None:
        return
    console.print(f"figures ({len(figure_paths)}):" if figure_paths else "figures: none (no complete point)")
    for p in figure_paths:
        console.print(f"  {p}", soft_wrap=True)


def _point_list(text: str):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"--figure-points {text!r}: give point indices separated by commas, e.g. 0,1") from None


# ------------------------------------------------------------------------------------------------------
@click.command("plan")
@SWEEP
@SET
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def plan_cmd(sweep_file: str, overrides, as_json: bool) -> None:
    """Dry run: the datasets, points, seeds, folds stored and to train, resources and an estimate of the
    wall time. Trains nothing; preprocesses nothing (datasets not prepared yet are counted from the
    sweep file or their coding sheet)."""
    sweep = load(sweep_file, overrides)
    if sweep.spec.search is not None:
        return search_cli.plan(sweep, as_json)
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        plan = plan_from_store(sweep, strict=False)
        doc = plan_document(plan, cpus=os.cpu_count() or 1, gpus=_gpus() if sweep.resources.gpu else 0)
    if as_json:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return
    _print_plan(doc)


def _gpus() -> int:
    try:
        import torch  # heavy: only when the sweep asks for GPUs

        return torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        return 0


def _print_plan(doc: dict[str, Any]) -> None:
    out = lambda *a: click.echo(" ".join(str(x) for x in a))  # noqa: E731
    na = lambda v: "?" if v is None else v  # noqa: E731
    out(f"sweep {doc['sweep']} ({doc['source']}), workdir {doc['workdir']}")
    out("datasets:")
    for d in doc["datasets"]:
        what = {"prepared": "prepared here", "recorded": "recorded by the last run (not prepared here)",
                "to prepare": "not prepared yet: `run` prepares it first",
                "unreachable": f"cannot be prepared here: {d.get('problem')}",
                "changed": f"changed since the last run prepared it (key {d.get('recorded_key')}): `run` "
                           f"prepares it again and trains every fold"}[d["state"]]
        key = f"key {d['key']}" if d["key"] else "key unknown until prepared"
        out(f"  {d['name']} ({d['data_id']}): reader {d['reader']}, {na(d['samples'])} samples, "
            f"{na(d['subjects'])} subjects, {key}; {what}")
    out("points:")
    for p in doc["points"]:
        out(f"  #{p['index']} {p['label']}  {json.dumps(p['params']) if p['params'] else '(the base config)'}")
    out(f"seeds: {', '.join(map(str, doc['seeds']))}")
    out("folds (total / stored / to train):")
    for g in doc["groups"]:
        t = "" if g["fold_seconds"] is None else f"  ~{g['fold_seconds']:.1f} s per fold"
        out(f"  {g['dataset']} #{g['point']} {g['label']} seed {g['seed']}: {na(g['folds_total'])} / "
            f"{g['folds_stored']} / {na(g['folds_to_train'])}{t}")
    f = doc["folds"]
    out(f"  all: {na(f['total'])} / {f['stored']} / {na(f['to_train'])}")
    r, m = doc["resources"], doc["machine"]
    cap = f", max_concurrent {r['max_concurrent']}" if r["max_concurrent"] else ""
    out(f"resources per fold: cpu {r['cpu']:g}, gpu {r['gpu']:g}{cap}; this machine: {m['cpus']} CPUs, "
        f"{m['gpus']} GPUs -> {m['slots']} fold(s) at once")
    e = doc["estimate"]
    if e["seconds"] is None:
        out(f"estimate: {e['basis']}")
    else:
        out(f"estimate: {e['seconds']:.0f} s of training ({e['basis']})")
