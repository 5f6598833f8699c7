"""`run`, `report` and `plan` of a search sweep (`search:` in the sweep file; docs/sweeps.md, "Searching"):
what those commands in orchestrator/cli/sweep.py do instead when the file searches."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from orchestrator.cli.errors import friendly_errors
from orchestrator.errors import ConfigError
from orchestrator.planning.candidates import base_sweep, load_candidates, same_as, with_candidates
from orchestrator.planning.plan import plan_from_store
from orchestrator.planning.store import claim_name
from orchestrator.reporting.report import compare_points
from orchestrator.reporting.results import results_from_store
from orchestrator.reporting.search import print_search, search_document, search_plan
from orchestrator.reporting.view import console as make_console
from orchestrator.spec.resolved import Sweep


def run(sweep: Sweep, address: str | None, as_json: bool, dashboard: bool, share_name: bool) -> None:
    """`run SWEEP` of a search: the search (resumed where a run left it), then its candidates table."""
    from orchestrator.execution.search import run_search  # the runner's imports (OpenCV, Ray): `run` only

    console = make_console(stderr=as_json)
    stream = sys.stderr if as_json else sys.stdout  # held now: Tune's output is sent to tune.log while it runs

    def line(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = run_search(sweep, address=address, quiet=as_json, progress=True, dashboard=dashboard,
                             share_name=share_name, lines=line)
        outcome.results.write_reports()
    if as_json:
        doc = search_document(outcome.results, outcome.candidates, outcome.trained, outcome.reused)
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
    else:
        print_search(console, outcome.results, outcome.candidates, outcome.trained, outcome.reused)
    search = sweep.spec.search
    names = [search.dataset] if search.dataset else list(sweep.spec.datasets)
    short = any(sum(c.finished for c in outcome.candidates.of(n)) < search.num_samples for n in names)
    if outcome.failed or short:
        raise SystemExit(1)  # a candidate failed or the search was interrupted: run it again to go on


def report(sweep: Sweep, as_json: bool, compare, share_name: bool) -> list | None:
    """`report SWEEP` of a search: the candidates table, and `--compare K L` between two candidates (the
    paired comparison of two points, returned for the caller to print)."""
    console = make_console(stderr=as_json)
    comparison = None
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        claim_name(sweep, share=share_name)
        candidates = load_candidates(sweep)
        state = results_from_store(plan_from_store(with_candidates(sweep, candidates), strict=True))
        state.write_reports()
        if compare:
            check_compare(sweep, candidates, *compare)
            compare = [same_as(sweep, candidates.items[k], candidates).index for k in compare]
            for k in compare:
                g = next(g for g in state.groups.values() if g.trial.point == k)
                if g.done != len(g.folds):
                    raise ConfigError(f"{sweep.source}: --compare: candidate {k} ({g.trial.point_label}) has "
                                      f"{g.done}/{len(g.folds)} folds (stopped or unfinished): not a LOSO result. "
                                      f"Compare complete candidates, or paste it into variants: of a sweep file "
                                      f"and run that to finish it (its folds are reused)")
            comparison = compare_points(state, *compare)
    if as_json:
        doc = search_document(state, candidates, 0, sum(g.done for g in state.groups.values()))
        if comparison is not None:
            doc["compare"] = comparison
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return None
    print_search(console, state, candidates)
    return comparison


def check_compare(sweep: Sweep, candidates, a: int, b: int) -> None:
    """`--compare K L` on a search: both candidates exist and searched the same dataset."""
    items = candidates.items
    for k in (a, b):
        if not 0 <= k < len(items):
            raise ConfigError(f"{sweep.source}: --compare {a} {b}: the search has candidates 0..{len(items) - 1}")
    if items[a].dataset != items[b].dataset:
        raise ConfigError(f"{sweep.source}: --compare {a} {b}: candidate {a} searched {items[a].dataset}, "
                          f"candidate {b} {items[b].dataset}; compare candidates of one dataset")


def torch_gpus() -> int:
    try:
        import torch  # heavy: only when the sweep asks for GPUs

        return torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        return 0


def plan(sweep: Sweep, as_json: bool) -> None:
    """`plan SWEEP` of a search: how many candidates, the folds of each, the most folds it may train."""
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        candidates = load_candidates(sweep)
        gpus = torch_gpus() if sweep.resources.gpu else 0
        doc = search_plan(plan_from_store(base_sweep(sweep), strict=False), candidates, os.cpu_count() or 1, gpus)
    if as_json:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return
    click.echo(f"search {doc['sweep']}: {doc['algorithm']}, {doc['metric']} {doc['mode']}, up to "
               f"{doc['max_concurrent']} candidate(s) at once")
    for k, v in doc["space"].items():
        click.echo(f"  {k}: {json.dumps(v)}")
    es = doc["early_stop"]
    click.echo(f"early stop: after {es['grace_folds']} folds, reduction factor {es['reduction_factor']:g}" if es
               else "early stop: none (every candidate runs every fold)")
    for d in doc["data"]:
        if d["state"] in ("to prepare", "unreachable", "changed"):
            why = d.get("problem") or {"to prepare": "not prepared yet: `run` prepares it first",
                                       "changed": "changed since the last run prepared it: `run` prepares it again"
                                       }[d["state"]]
            click.echo(f"  {d['name']}: {why}")
    r, m = doc["resources"], doc["machine"]
    click.echo(f"resources per fold: cpu {r['cpu']:g}, gpu {r['gpu']:g}; this machine: {m['cpus']} CPUs, "
               f"{m['gpus']} GPUs -> {m['slots']} fold(s) at once")
    for d in doc["datasets"]:
        n = "?" if d["folds_per_candidate"] is None else d["folds_per_candidate"]
        most = "?" if d["most_folds"] is None else d["most_folds"]
        click.echo(f"  {d['dataset']}: {d['num_samples']} candidates ({d['finished']} finished, {d['recorded']} "
                   f"recorded, {d['to_run']} to run), {n} folds each; at most {most} folds to train")
