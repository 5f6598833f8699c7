"""Draw the small PNGs of README.md and docs/figures.md (docs/figures/) from a finished quick start.

    WD=$(mktemp -d)
    .venv/bin/microau-sweep run sweeps/quickstart.yaml --set workdir=$WD --set datasets.casme2.root=$WD/data
    .venv/bin/python scripts/docs_figures.py sweeps/quickstart.yaml --set workdir=$WD \
        --set datasets.casme2.root=$WD/data

One figure of each kind, from the stored folds like `report --figures` (orchestrator/reporting/figures.py), at 80 dpi
and with a 128-colour palette so each stays small; Fig. 5 shows one sample per AU (the report: two).
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DPI = 80


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(REPO / "docs" / "figures"))
    args = ap.parse_args(argv)

    from PIL import Image

    from orchestrator.planning.plan import plan_from_store
    from orchestrator.reporting import figures
    from orchestrator.reporting.results import results_from_store as state_from_store
    from orchestrator.spec.resolved import load_sweep

    state = state_from_store(plan_from_store(load_sweep(args.sweep, args.overrides), strict=True))
    g = next(g for g in state.groups.values() if g.trial.point == 0 and figures.complete(g))
    crops = figures._CropCache(state, print)
    drawn = {
        "fig5-attention": figures.attention_figure(figures.attention_samples(state, g, crops, per_au=1),
                                                   g.trial.aus, figures._title(g), dpi=DPI),
        "mer-confusion": figures.confusion_figure(state.group_results(g), figures._title(g), g.pooled, dpi=DPI),
        "loss": figures.loss_figure(state.group_results(g), figures._title(g), dpi=DPI),
    }
    for p in figures.plan_figures(state, dpi=DPI):  # the figures comparing points: f1, fig6, fig7
        m = re.fullmatch(r".+-seed\d+-(f1|fig6-similarity|fig7-tsne)(-AU\d+)?", p.name)
        if m and m.group(1) not in drawn:
            drawn[m.group(1)] = p.draw()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, fig in drawn.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        buf.seek(0)
        path = out / f"{kind}.png"
        Image.open(buf).convert("RGB").quantize(colors=128).save(path, optimize=True)
        print(f"{path}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
