"""`microau-sweep train` (one grid point on every subject, stored and logged to MLflow as a model) and
`microau-sweep predict` (that model on clips that are in no coding sheet, or on a whole folder)."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.errors import friendly_errors
from orchestrator.cli.sweep import SET, SWEEP, epoch_printer, load, pick_point
from orchestrator.planning.data import data_id, prepare, record_prepared
from orchestrator.planning.store import atomic_write_text
from orchestrator.reporting.view import console
from orchestrator.tracking.client import reason, redact
from preprocessing.annotations import READERS


@click.command("train")
@SWEEP
@SET
@click.option("--point", type=int, required=True, help="grid point index (see `report` or `plan`)")
@click.option("--dataset", help="dataset name of the sweep file (default: its only dataset)")
@click.option("--seed", type=int, help="seed (default: the sweep's first)")
@click.option("--tracking-uri", help="MLflow tracking URI (default: tracking.uri of the sweep file, else "
                                     "sqlite:///<workdir>/mlflow.db)")
@click.option("--register", metavar="NAME", help="also register the MLflow model under NAME (a new version)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def train(sweep_file: str, overrides, point: int, dataset: str | None, seed: int | None,
          tracking_uri: str | None, register: str | None, as_json: bool) -> None:
    """Train one grid point on every subject of a dataset (no held-out subject: no evaluation), with the
    code of a LOSO fold; store the model under <workdir>/models and log it to MLflow as a model. A second
    run with nothing changed trains nothing."""
    from orchestrator.serving.packages import log_model, train_and_store  # torch, mlflow: for start-up time

    sweep = load(sweep_file, overrides, tracking_uri=tracking_uri)
    if sweep.across:
        raise click.UsageError(f"{sweep_file} runs the {sweep.protocol_key.replace('_', '-')} protocol; `train` "
                               f"trains a point of a LOSO sweep on every subject of one dataset: give a sweep file "
                               f"without {sweep.protocol_key}: (e.g. sweeps/main.yaml)")
    dataset, seed = pick_point(sweep, sweep_file, dataset, point, seed)
    out = sys.stderr if as_json else sys.stdout
    warn = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with friendly_errors(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        trial = sweep.trial(dataset, point, seed)
        data = prepare(sweep, dataset, trial.preprocessing, progress=True)
        record_prepared(sweep, {data_id(trial): data})
        print(f"train {dataset} / {trial.point_label} / seed {seed} on all {len(set(data.subjects))} subjects "
              f"({len(data.sample_ids)} samples): {trial.training.epochs} epochs", file=out, flush=True)
        outcome = train_and_store(sweep, trial, data, on_epoch=epoch_printer(out))
        uri = sweep.tracking_uri
        try:
            outcome.mlflow = log_model(sweep, trial, outcome, register=register)
        except Exception as e:  # noqa: BLE001 - MLflow is a side channel: the stored model is the record
            outcome.mlflow = {"error": reason(e, uri)}
            warn(f"warning: MLflow ({redact(uri)}) unavailable: {outcome.mlflow['error']}. The model is stored at "
                 f"{outcome.path}; run the same train command again later to log it to MLflow (nothing is trained "
                 f"again).")
    doc = {"model": str(outcome.path), "key": outcome.key, "trained": outcome.trained,
           "trained_on": {**outcome.info.trained_on, "point": trial.point, "point_label": trial.point_label,
                          "seed": trial.seed, "sweep": sweep.name},
           "evaluation": outcome.info.evaluation, "mlflow": outcome.mlflow}
    if as_json:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return
    t = doc["trained_on"]
    click.echo(f"model {outcome.path} ({'trained now' if outcome.trained else 'already stored: trained nothing'})")
    click.echo(f"trained on all {len(t['subjects'])} subjects ({t['samples']} samples) of {t['dataset']} "
               f"(prepared data {t['data_key']}), point {t['point']} {t['point_label']}, seed {t['seed']}")
    click.echo(f"evaluation: {doc['evaluation']}")
    m = outcome.mlflow
    if m.get("model_uri"):
        click.echo(f"MLflow: run {m['run_id']}, model {m['model_uri']}" + ("" if m.get("logged") else
                                                                         " (logged before)"))
    if m.get("registered"):
        click.echo(f"MLflow: registered as {m['registered']['uri']}")
    click.echo(f"next: microau-sweep predict {outcome.path} --onset ONSET.jpg --apex APEX.jpg")


# ------------------------------------------------------------------------------------------------------
@click.command("predict")
@click.argument("model")
@click.option("--onset", help="onset frame: an image file, or a frame number with --clip")
@click.option("--apex", help="apex frame: an image file, or a frame number with --clip")
@click.option("--clip", "clip_dir", type=click.Path(file_okay=False),
              help="folder of numbered frames (img46.jpg, 006_05566.jpg, ...); --onset/--apex are frame numbers")
@click.option("--sheet", type=click.Path(dir_okay=False), help="coding sheet in a dataset's layout: predict "
                                                                "every row (with --root)")
@click.option("--root", type=click.Path(), help="dataset folder holding the sheet's frames (with --sheet)")
@click.option("--reader", type=click.Choice(sorted(READERS)),
              help="layout of --sheet/--root [default: the reader the model was trained on]")
@click.option("--skip-bad", is_flag=True, help="with --sheet: leave unusable rows out (listed on stderr) "
                                               "instead of stopping with the list of problems")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda:1, ...")
@click.option("--tracking-uri", help="MLflow tracking URI to read a runs:/ or models:/ MODEL from")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option("--out", type=click.Path(dir_okay=False), help="write the predictions as CSV to this file")
def predict(model: str, onset: str | None, apex: str | None, clip_dir: str | None, sheet: str | None,
            root: str | None, reader: str | None, skip_bad: bool, device: str, tracking_uri: str | None,
            as_json: bool, out: str | None) -> None:
    """Run a model of `microau-sweep train` (its folder, or an MLflow runs:/ or models:/ URI) on clips:
    --onset A --apex B (two image files), --clip DIR --onset N --apex M (frame numbers in a folder), or
    --sheet S --root R (every row of a coding sheet; CSV on stdout or --out). Prints per AU P(active)
    and the decision, and the zero-shot MER class (Eq. 13) with its scores."""
    from orchestrator.api import load_model  # torch: only for `predict`, for start-up time
    from preprocessing.frames import describe, files_sample, folder_sample, sheet_samples

    mode = _mode(onset, apex, clip_dir, sheet, root)
    if mode == "clip":
        numbers = _frame_number(onset, "--onset"), _frame_number(apex, "--apex")
    with friendly_errors():
        predictor = load_model(model, device=device, tracking_uri=tracking_uri)
        if mode == "files":
            samples = [files_sample(onset, apex, reader=predictor.reader)]
            if predictor.preprocessing.magnification.method == "eulerian":
                print("note: the model's preprocessing magnifies the whole onset..apex clip (Eulerian); two frames "
                      "give it only these two: --clip DIR --onset N --apex M reads every frame in between",
                      file=sys.stderr, flush=True)
        elif mode == "clip":
            samples = [folder_sample(clip_dir, *numbers, reader=predictor.reader)]
        else:
            samples = sheet_samples(reader or predictor.reader, root, sheet)
        records, clips = predictor.run(samples, on_error="skip" if skip_bad and mode == "sheet" else "stop")
    trained_on = predictor.trained_on()
    skipped = [{"sample": p.sample.id, "reason": describe(p)} for p in clips.problems]
    if out:
        _write(out, _csv(records))
    if as_json:
        sys.stdout.write(json.dumps({"model": predictor.source, "trained_on": trained_on, "predictions": records,
                                     "skipped": skipped, "apex_estimated": clips.apex_estimated}) + "\n")
        return
    if mode == "sheet":
        _print_trained_on(trained_on, sys.stderr)
        for s in skipped:
            click.echo(f"skipped {s['reason']}", err=True)
        if out:
            click.echo(f"{len(records)} clips predicted; CSV written to {out}", err=True)
        else:
            sys.stdout.write(_csv(records))
        return
    _print_trained_on(trained_on, sys.stdout)
    _print_record(records[0], predictor.model.mer_texts)
    if out:
        click.echo(f"CSV written to {out}")


def _mode(onset, apex, clip_dir, sheet, root) -> str:
    if sheet or root:
        if not (sheet and root) or onset or apex or clip_dir:
            raise click.UsageError("give --sheet S --root R together, without --onset/--apex/--clip")
        return "sheet"
    if not (onset and apex):
        raise click.UsageError("give --onset A --apex B (image files), --clip DIR --onset N --apex M (frame "
                               "numbers), or --sheet S --root R")
    return "clip" if clip_dir else "files"


def _frame_number(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.UsageError(f"{option} {text!r}: with --clip, give a frame number (the number at the end of "
                               f"the frame's file name, e.g. 46 for img46.jpg)") from None


def _write(out: str, text: str) -> None:
    try:
        atomic_write_text(Path(out).expanduser(), text)
    except OSError as e:
        raise click.ClickException(f"{out}: cannot write the CSV ({e.strerror or e}); give --out a writable "
                                   f"file") from None


def _csv(records: list[dict[str, Any]]) -> str:
    import pandas as pd

    from orchestrator.serving.predictor import flat  # torch (model.inference): see predict

    buf = io.StringIO()
    pd.DataFrame(flat(records)).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def _print_trained_on(t: dict[str, Any], stream) -> None:
    subjects = t.get("subjects") or []
    print(f"model {t.get('model')}: trained on all {len(subjects)} subjects ({t.get('samples')} samples) of "
          f"{t.get('dataset')} (prepared data {t.get('data_key')}), sweep {t.get('sweep')} point {t.get('point')} "
          f"{t.get('point_label')}, seed {t.get('seed')}", file=stream)
    print(f"evaluation: {t.get('evaluation')}", file=stream, flush=True)


def _print_record(r: dict[str, Any], mer_texts) -> None:
    from rich.table import Table

    c = console()
    c.print(f"clip: onset {r['onset']}, apex {r['apex']}", highlight=False, soft_wrap=True)
    t = Table()
    t.add_column("AU")
    t.add_column("P(active)", justify="right")
    t.add_column("decision")
    for au, p in r["probs"].items():
        t.add_row(au, f"{p:.3f}", "active" if r["preds"][au] else "-")
    c.print(t)
    if "mer_pred" in r:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in r["mer_scores"].items())
        text = mer_texts[r["mer_text"]][1] if 0 <= r.get("mer_text", -1) < len(mer_texts) else ""
        c.print(f"MER (zero-shot, Eq. 13): {r['mer_pred']}  (scores: {scores}; best label text: {text!r})",
                highlight=False, soft_wrap=True)
