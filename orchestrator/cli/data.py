"""`microau-sweep synth` and `microau-sweep preprocess`: the data layer from the command line."""
from __future__ import annotations

import json

import click

from orchestrator.cli.errors import friendly_errors
from orchestrator.execution.parallel import MIN_SAMPLES, LocalRay, RaySamples
from preprocessing.annotations import READERS
from preprocessing.synth import LAYOUTS


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--layout", type=click.Choice(list(LAYOUTS)), default="casme2", show_default=True,
              help="Real dataset layout to write (folders, frame names, coding sheet): CASME II, SAMM or "
                   "CAS(ME)^3 Part A (casme3; --per-subject MEs, two per video).")
@click.option("--subjects", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--per-subject", type=click.IntRange(min=1), default=6, show_default=True,
              help="Samples per subject.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--intensity", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Scales the AU motion (1: 0.8-2 px at the apex).")
@click.option("--noise", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Scales the sensor noise (1: sigma 1.5 grey levels).")
def synth(out, layout, subjects, per_subject, seed, intensity, noise):
    """Write a synthetic micro-expression dataset in the real CASME II, SAMM or CAS(ME)^3 layout to OUT."""
    from preprocessing.synth import generate
    with friendly_errors():
        root = generate(out, layout=layout, subjects=subjects, per_subject=per_subject, seed=seed,
                        intensity=intensity, noise=noise)
    click.echo(f"wrote {subjects * per_subject} {layout} samples of {subjects} subjects to {root}")
    click.echo(f"next: microau-sweep preprocess --reader {layout} --root {root}")


@click.command("preprocess")
@click.option("--reader", required=True, type=click.Choice(sorted(READERS)),
              help="Dataset reader: casme2 (CASME II), samm (SAMM), casme3 (CAS(ME)^3 Part A).")
@click.option("--root", required=True, type=click.Path(), help="Dataset folder as its holders unpack it.")
@click.option("--sheet", type=click.Path(), default=None,
              help="Coding sheet (.xlsx/.csv) when --root is the frames folder itself.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=".microau/cache", show_default=True,
              help="Where prepared datasets are cached.")
@click.option("--flow", type=click.Choice(["tvl1", "farneback", "dis"]), default=None,
              help="Optical flow method [default: tvl1].")
@click.option("--magnification", type=click.Choice(["none", "eulerian", "learned"]), default=None,
              help="Motion magnification method [default: eulerian].")
@click.option("--factor", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Magnification factor [default: 3].")
@click.option("--magnet-weights", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of the learned magnification network (with --magnification learned).")
@click.option("--predictor", type=click.Path(dir_okay=False), default=None,
              help="dlib 68-point predictor .dat [default: the one in face-recognition-models].")
@click.option("--corrections", "corrections_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of fixes of sheet rows, {sample id: {onset?, apex?, offset?, aus?}}, e.g. "
                   "'006/006_1_2': {aus: '14'}; applied before validation, the sheet is not edited.")
@click.option("--skip-bad", is_flag=True, help="Skip unusable samples (listed in the summary) instead of "
                                               "stopping with the list of problems and caching nothing.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="CPUs to prepare samples on, one sample per CPU as Ray tasks; 1: in this process "
                   "[default: every CPU here, or of the cluster with --address; in this process when fewer "
                   "than 16 samples are left to prepare].")
@click.option("--address", default=None, help="Ray cluster to prepare the samples on (e.g. auto).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preprocess(reader, root, sheet, cache_dir, flow, magnification, factor, magnet_weights, predictor,
               corrections_file, skip_bad, workers, address, as_json, quiet):
    """Read, validate and preprocess a dataset (landmarks, magnification, optical flow) into the cache,
    and print its summary. Samples are prepared in parallel as Ray tasks, each kept in the cache as soon as
    it is done: a run that is stopped goes on where it stopped. A second run with nothing changed is a
    cache hit."""
    from pydantic import ValidationError

    from preprocessing.config import PreprocessConfig
    from preprocessing.pipeline import prepare_dataset

    update: dict = {}
    mag: dict = {}
    if flow:
        update["flow"] = flow
    if predictor:
        update["predictor"] = predictor
    if magnification:
        mag["method"] = magnification
    if factor:
        mag["factor"] = factor
    if magnet_weights:
        mag["weights"] = magnet_weights
        mag.setdefault("method", "learned")
    if mag:
        update["magnification"] = mag
    try:
        cfg = PreprocessConfig.model_validate(update)
    except ValidationError as e:
        raise click.ClickException(f"invalid preprocessing options: {e}") from None
    with friendly_errors():
        if corrections_file:
            from preprocessing.corrections import load_file
            fixes = {"corrections": load_file(corrections_file), "corrections_where": str(corrections_file)}
        else:
            fixes = {"corrections_where": "a corrections file (--corrections FILE.yaml)"}
        session = LocalRay(workers, address)
        asked = bool(workers or address)  # asked for Ray: used whatever the number of samples
        mapper = None if workers == 1 and not address else RaySamples(session, 0 if asked else MIN_SAMPLES)
        try:
            data = prepare_dataset(reader, root, cfg, cache_dir, sheet=sheet,
                                   on_error="skip" if skip_bad else "stop", progress=not quiet and not as_json,
                                   map_samples=mapper, **fixes)
        finally:
            session.close()
    summary = data.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{s['reader']}[/bold]: {s['samples']} samples of {s['subjects']} subjects "
                  f"(prepared dataset {s['key']})")
    t = Table(title="AU counts")
    t.add_column("AU", justify="right")
    t.add_column("samples", justify="right")
    for au, n in s["au_counts"].items():
        t.add_row(au, str(n))
    console.print(t)
    t = Table(title="Emotions")
    t.add_column("emotion")
    t.add_column("samples", justify="right")
    for emo, n in s["emotion_counts"].items():
        t.add_row(emo, str(n))
    console.print(t)
    console.print("MER classes: " + ", ".join(f"{k} {v}" for k, v in s["mer_counts"].items()))
    if s["skipped"]:
        t = Table(title=f"Skipped ({len(s['skipped'])})")
        t.add_column("sample")
        t.add_column("reason")
        for d in s["skipped"]:
            t.add_row(d["sample"], d["reason"])
        console.print(t)
    if s.get("corrected"):
        t = Table(title=f"Corrected ({len(s['corrected'])})")
        t.add_column("sample")
        t.add_column("fields (sheet -> corrected)")
        for d in s["corrected"]:
            t.add_row(d["sample"], "; ".join(f"{k}: {v['sheet']!r} -> {v['corrected']!r}"
                                             for k, v in d["fields"].items())
                      + (f" (built-in erratum {d['erratum']})" if d.get("erratum") else ""))
        console.print(t)
    if s.get("apex_estimated"):
        t = Table(title=f"Apex estimated ({len(s['apex_estimated'])})",
                  caption="no apex frame in the sheet: the frame of largest optical flow from the onset")
        t.add_column("sample")
        t.add_column("sheet cell")
        t.add_column("apex", justify="right")
        for d in s["apex_estimated"]:
            t.add_row(d["sample"], repr(d["sheet"]), str(d["apex"]))
        console.print(t)
    for d in s.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {escape(d['warning'])}", highlight=False, soft_wrap=True)
