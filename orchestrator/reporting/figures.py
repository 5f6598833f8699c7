"""Figures of a sweep, drawn from the results store alone (no training): PNGs for `report --figures` and
the same figures on the MLflow parent runs at the end of `run` (orchestrator/execution/state.py).

Per (dataset, point, seed), from that point's folds:
  fig5-attention  the paper's Fig. 5: for the highest-confidence true positives of each AU (then its
                  missed positives with the highest P(active), where it has too few), the AU's PTA
                  weights (Eq. 2) on the patch tokens of its Table I landmarks, over the apex face
                  crop, and GDA's W_d (Eq. 5) as a bar per AU
  mer-confusion   zero-shot MER (Eq. 13) confusion matrix, pooled over the folds
  loss            the loss terms of Eq. 12 per epoch: mean over the folds, min..max shaded
Per (dataset, seed), comparing points:
  f1              per-AU pooled F1 of every point with its 95% subject-bootstrap CI, and the mean over AUs
                  (the paper's F1) with the table's CI
  fig6-similarity the paper's Fig. 6: cosine similarity of one AU's final visual features over positive
                  and negative samples of one test subject (one fold's model), side by side for two points
  fig7-tsne       the paper's Fig. 7: t-SNE of one AU's final features of every test sample, activated vs
                  not, one panel per point

A point with missing folds is left out with a note. The apex face crops of Fig. 5 are cut again from the
dataset's apex frames (preprocessing.pipeline.apex_face_crops, the same box and grid as the flow image the
model saw, checked against the stored landmarks); where the data is not at hand the figure draws the
stored landmarks alone. matplotlib (Agg canvas, no pyplot) and scikit-learn are imported on first use.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.planning.data import data_ids, expand_paths
from orchestrator.planning.store import atomic_write_bytes
from orchestrator.reporting.results import Group, SweepResults
from preprocessing.errors import MicroAUError, SampleProblem
from preprocessing.pipeline import apex_face_crops

FIGURES_VERSION = 1  # bump when a figure's content changes: MLflow parents get them again
DPI = 100
PER_AU = 2  # Fig. 5: samples per AU
PER_CLASS = 2  # Fig. 6: positive and negative samples (the paper's {1, 0, 1, 0})
MAX_TSNE_POINTS = 4  # Fig. 7 default: the first points of the sweep
EXACT_TSNE = 1000
LOSS_TERMS = ("total", "multitask", "contrastive", "gd")
_TERM_TITLES = {"total": "total (Eq. 12)", "multitask": "multi-task CE", "contrastive": "contrastive",
                "gd": "GD loss (Eq. 8)"}


logger = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet():
    """The figures' notes off for the block (the end of `run` draws them for MLflow, where they are noise)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------------------
# what to draw
@dataclass
class Planned:
    """One figure to draw: its file name (no extension), the groups (MLflow parents) it is logged on, the
    groups whose folds it reads, and how to draw it."""
    name: str
    parents: list[str]
    inputs: list[str]
    draw: Callable[[], Any]


def complete(g: Group) -> bool:
    return bool(g.folds) and g.done == len(g.folds)


def plan_figures(state: SweepResults, au: int | None = None, points: Sequence[int] | None = None,
                 dpi: int = DPI) -> list[Planned]:
    """Every figure of the sweep's complete points. au: the AU of Fig. 6 and 7 (default AU1 where the
    dataset has it, else its first AU); points: the point indices Fig. 6 (the first two) and Fig. 7
    (all) compare (default: the sweep's first points, up to 4)."""
    n_points = len(state.sweep.points)
    if points is not None:
        bad = [p for p in points if not 0 <= p < n_points]
        if bad or not points:
            raise ConfigError(f"{state.sweep.source}: --figure-points {','.join(map(str, points))}: points are "
                              f"0..{n_points - 1} (see `report`)")
    aus_seen = {int(a) for g in state.groups.values() for a in g.trial.aus}
    if au is not None and au not in aus_seen:
        raise ConfigError(f"{state.sweep.source}: --figure-au {au}: the sweep's AUs are {sorted(aus_seen)}")
    out: list[Planned] = []
    crops = CropCache(state)
    by_ds: dict[tuple[str, int], list[Any]] = {}
    for g in state.groups.values():
        if not complete(g):
            logger.warning(f"note: figures: {_where(g)} has {g.done}/{len(g.folds)} folds; left out until the "
                           f"sweep has "
                           f"trained them all")
            continue
        by_ds.setdefault((g.trial.dataset, g.trial.seed), []).append(g)
        stem, title = f"{g.trial.dataset}-p{g.trial.point}-seed{g.trial.seed}", _title(g)
        out += [Planned(f"{stem}-fig5-attention", [g.key], [g.key], functools.partial(
                    _draw_attention, state, g, crops, title, dpi)),
                Planned(f"{stem}-mer-confusion", [g.key], [g.key], functools.partial(
                    _draw_results, confusion_figure, state, g, title, dpi, pooled=g.pooled)),
                Planned(f"{stem}-loss", [g.key], [g.key], functools.partial(
                    _draw_results, loss_figure, state, g, title, dpi))]
    for (dataset, seed), gs in by_ds.items():
        keys, stem, title = [g.key for g in gs], f"{dataset}-seed{seed}", f"{dataset}, seed {seed}"
        out.append(Planned(f"{stem}-f1", keys, keys, functools.partial(_draw_f1, state, gs, title, dpi)))
        ds_aus = [int(a) for a in gs[0].trial.aus]
        the_au = au if au is not None else (1 if 1 in ds_aus else ds_aus[0])
        if the_au not in ds_aus:
            logger.warning(f"note: figures: {dataset} has no AU{the_au} (AUs {ds_aus}); no Fig. 6 / 7 for it")
            continue
        chosen = _chosen_points(gs, points, dataset, seed)
        if not chosen:
            continue
        used = [g.key for g in chosen]
        out += [Planned(f"{stem}-fig6-similarity-AU{the_au}", keys, used[:2], functools.partial(
                    _draw_similarity, state, chosen[:2], the_au, title, dpi)),
                Planned(f"{stem}-fig7-tsne-AU{the_au}", keys, used, functools.partial(
                    _draw_tsne, state, chosen, the_au, title, dpi))]
    return out


def _draw_attention(state: SweepResults, g: Group, crops: CropCache, title: str, dpi: int):
    return attention_figure(attention_samples(state, g, crops), g.trial.aus, title, dpi=dpi)


def _draw_results(fn, state: SweepResults, g: Group, title: str, dpi: int, **kwargs):
    return fn(state.group_results(g), title, dpi=dpi, **kwargs)


def _draw_f1(state: SweepResults, groups, title: str, dpi: int):
    return f1_figure(_f1_rows(state, groups), title, dpi=dpi)


def _draw_similarity(state: SweepResults, groups, au: int, title: str, dpi: int):
    panels = similarity_panels(state, groups, au)
    if not panels:
        logger.warning(f"note: figures: no test subject of {title} has both a positive and a negative sample "
                       f"of AU{au}; "
                       f"no Fig. 6 (try another --figure-au)")
    return similarity_figure(panels, au, title, dpi=dpi)


def _draw_tsne(state: SweepResults, groups, au: int, title: str, dpi: int):
    panels = tsne_panels(state, groups, au)
    if not panels:
        logger.warning(f"note: figures: {title} has fewer than 5 test samples; no Fig. 7")
    return tsne_figure(panels, au, title, dpi=dpi)


def _chosen_points(gs, points, dataset, seed) -> list[Any]:
    by_point = {g.trial.point: g for g in gs}
    if points is None:
        return [by_point[p] for p in sorted(by_point)][:MAX_TSNE_POINTS]
    missing = [p for p in points if p not in by_point]
    if missing:
        logger.warning(f"note: figures: point(s) {missing} of {dataset} seed {seed} are not complete; Fig. 6 / 7 "
                       f"compare the others")
    return [by_point[p] for p in points if p in by_point]


def _where(g: Group) -> str:
    return f"{g.trial.dataset} point {g.trial.point} ({g.trial.point_label}) seed {g.trial.seed}"


def _title(g: Group) -> str:
    return f"{g.trial.dataset}, point {g.trial.point} ({g.trial.point_label}), seed {g.trial.seed}"


def digest(planned: Sequence[Planned], state: SweepResults) -> str:
    """Identity of a set of figures: their names, the stored folds they read and FIGURES_VERSION. MLflow
    parents carry it (a tag): figures are drawn and logged again only when it changes."""
    folds = {k: sorted(f.key for f in state.groups[k].folds) for p in planned for k in p.inputs}
    doc = {"v": FIGURES_VERSION, "names": sorted(p.name for p in planned), "folds": folds}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_figures(state: SweepResults, out_dir, au: int | None = None, points: Sequence[int] | None = None,
                  dpi: int = DPI, only: Sequence[Planned] | None = None) -> list[str]:
    """Draw every figure (or `only` these, from plan_figures) as `<out_dir>/<name>.png` (atomic); the
    paths written, in plan order."""
    planned = plan_figures(state, au, points, dpi=dpi) if only is None else list(only)
    out_dir = Path(out_dir)
    paths = []
    for p in planned:
        fig = p.draw()
        if fig is None:
            continue
        path = out_dir / f"{p.name}.png"
        save_png(fig, path, dpi)
        paths.append(str(path))
    return paths


def save_png(fig, path: Path, dpi: int = DPI) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue())


def _figure(w: float, h: float, dpi: int):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=dpi, layout="constrained")


# ------------------------------------------------------------------------------------------------------
# Fig. 5: PTA and GDA attention
@dataclass
class AttentionSample:
    """What one panel of Fig. 5 draws, all from the fold record but the apex crop."""
    sample_id: str
    au: int
    au_index: int
    prob: float  # P(active) of the AU
    hit: bool  # a true positive (else a missed positive)
    tokens: np.ndarray  # (N_L,) patch token index of each weight (row-major in the grid)
    weights: np.ndarray  # (N_L,) PTA weights (sum to 1)
    landmarks: np.ndarray  # (68, 2) apex landmarks in the flow image's pixels
    group: list[int]  # the AU's landmark indices (Table I or the sweep's landmark_groups)
    grid: tuple[int, int]  # patch grid (h, w)
    image: tuple[int, int]  # flow image (h0, w0)
    w_d: np.ndarray | None  # (A,) GDA weights, None without GDA
    crop: np.ndarray | None = None  # apex face crop RGB (h0, w0, 3), None when not at hand


def attention_samples(state: SweepResults, g: Group, crops: CropCache | None = None,
                      per_au: int = PER_AU) -> list[AttentionSample]:
    """The samples of Fig. 5 for one (dataset, point, seed): per AU its `per_au` positives with the
    highest P(active) (its true positives first), each with its stored PTA weights, tokens, landmarks
    and W_d."""
    results = state.group_results(g)
    if not any((r.extras or {}).get("pta") for r in results):
        logger.warning(f"note: figures: {_where(g)} has no PTA weights (pooling {g.trial.model.pooling}, lsi "
                       f"{g.trial.model.lsi}); its Fig. 5 is left out")
        return []
    if not all("landmarks" in (r.extras or {}) for r in results):
        logger.warning(f"note: figures: the fold records of {_where(g)} were written by an older version, without the "
                       f"landmarks Fig. 5 needs; its Fig. 5 is left out (delete them from the results store and run "
                       f"the sweep to write them again)")
        return []
    out = []
    for j, au in enumerate(g.trial.aus):
        # the AU's positives by P(active): its true positives first (P > 0.5), then, where it has fewer
        # than per_au, its missed positives (the panel says FN)
        cands = [(float(r.probs[i, j]), k, i) for k, r in enumerate(results) for i in range(len(r.sample_ids))
                 if r.labels[i, j] == 1 and str(au) in r.extras["pta"]]
        for prob, k, i in sorted(cands, key=lambda c: (-c[0], results[c[1]].sample_ids[c[2]]))[:per_au]:
            r = results[k]
            ex = r.extras
            weights = np.asarray(ex["pta"][str(au)][i], dtype=np.float32)
            grid = tuple(ex["token_grid"]["grid"])
            tokens = (np.asarray(ex["pta_tokens"][str(au)][i]) if ex.get("pta_tokens")
                      else np.arange(grid[0] * grid[1]))
            out.append(AttentionSample(
                sample_id=r.sample_ids[i], au=int(au), au_index=j, prob=prob, hit=bool(r.preds[i, j]),
                tokens=tokens, weights=weights,
                landmarks=np.asarray(ex["landmarks"][i], dtype=np.float32),
                group=[int(x) for x in ex["landmark_groups"][str(au)]], grid=grid,
                image=tuple(ex["token_grid"]["image"]),
                w_d=None if ex.get("w_d") is None else np.asarray(ex["w_d"][i], dtype=np.float32)))
    if crops is not None:
        found = crops.get(g, [s.sample_id for s in out])
        for s in out:
            s.crop = crops.checked(s.sample_id, found.get(s.sample_id), s.landmarks)
    return out


def attention_figure(samples: Sequence[AttentionSample], aus: Sequence[int], title: str, cols: int = 4,
                     dpi: int = DPI):
    """Fig. 5: per sample, the AU's PTA weights on its landmark tokens over the apex face crop (cells
    coloured by weight relative to the panel's largest, the weight printed where there are few tokens),
    its landmarks as white dots, and W_d as a bar per AU (the sample's AU highlighted). None when there
    is no sample."""
    if not samples:
        return None
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cmap = colormaps["jet"]
    n = len(samples)
    cols = min(cols, n)
    rows = -(-n // cols)
    has_wd = any(s.w_d is not None for s in samples)
    missing = [a for a in aus if a not in {s.au for s in samples}]
    lines = [f"Fig. 5 attention: {title}",
             "PTA weights on each AU's landmark tokens (colour relative to the panel's largest); " +
             ("GDA's W_d per AU below." if has_wd else "no GDA here, so no W_d.")]
    if not all(s.crop is not None for s in samples):
        lines.append("Grey panels: the apex frame was not at hand; stored landmarks only.")
    if missing:
        lines.append(f"No positive sample of AU{', AU'.join(map(str, missing))}.")
    # a fixed layout in inches (a layout engine over this many axes costs seconds per figure): the header,
    # then per panel a title, the image, and the W_d bars with their tick labels
    cell_w, img, head, title_h, bar_h = 2.3, 1.9, 0.2 + 0.15 * len(lines), 0.45, 0.55
    cell_h = title_h + img + (0.12 + bar_h + 0.4 if has_wd else 0.15)
    width, height = cols * cell_w + 0.1, head + rows * cell_h
    fig = Figure(figsize=(width, height), dpi=dpi)
    for k, s in enumerate(samples):
        left = 0.05 + (k % cols) * cell_w + 0.3
        bottom = height - head - (k // cols) * cell_h - title_h - img
        ax = fig.add_axes((left / width, bottom / height, img / width, img / height))
        bx = (fig.add_axes((left / width, (bottom - 0.12 - bar_h) / height, img / width, bar_h / height))
              if has_wd else None)
        h0, w0 = s.image
        if s.crop is not None:
            ax.imshow(s.crop, extent=(-0.5, w0 - 0.5, h0 - 0.5, -0.5))
        else:
            ax.set_facecolor("0.85")
            ax.plot(s.landmarks[:, 0], s.landmarks[:, 1], ".", color="0.45", ms=2)
        ax.set_xlim(-0.5, w0 - 0.5)
        ax.set_ylim(h0 - 0.5, -0.5)
        gh, gw = s.grid
        ch, cw = h0 / gh, w0 / gw
        per_token: dict[int, float] = {}
        for t, w in zip(s.tokens.tolist(), s.weights.tolist(), strict=False):
            per_token[int(t)] = per_token.get(int(t), 0.0) + float(w)  # two landmarks in one token: summed
        top = max(per_token.values()) or 1.0
        for t, w in per_token.items():
            r, c = divmod(t, gw)
            ax.add_patch(Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, facecolor=cmap(w / top), alpha=0.45,
                                   edgecolor="white", lw=0.6))
            if len(per_token) <= 12:
                ax.text((c + 0.5) * cw - 0.5, (r + 0.5) * ch - 0.5, f"{w:.2f}", ha="center", va="center",
                        fontsize=6.5, color="white", fontweight="bold")
        pts = s.landmarks[s.group]
        ax.plot(pts[:, 0], pts[:, 1], "o", ms=2.5, mfc="white", mec="black", mew=0.4)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"AU{s.au} {'TP' if s.hit else 'FN'}  P={s.prob:.2f}\n{s.sample_id}", fontsize=7.5)
        if bx is not None:
            if s.w_d is None:
                bx.axis("off")
            else:
                colours = ["tab:orange" if i == s.au_index else "0.6" for i in range(len(aus))]
                bx.bar(range(len(aus)), s.w_d, color=colours)
                bx.set_xticks(range(len(aus)), [str(a) for a in aus], fontsize=6)
                bx.tick_params(axis="y", labelsize=6)
                bx.set_ylim(0, max(float(np.max(s.w_d)) * 1.15, 1e-6))
                bx.set_ylabel("W_d", fontsize=6.5)
                bx.set_xlabel("AU", fontsize=6.5, labelpad=0)
    fig.suptitle("\n".join(lines), fontsize=8, y=1 - 0.08 / height, va="top")
    return fig


class CropCache:
    """Apex face crops of a sweep's samples, read once (preprocessing.pipeline.apex_face_crops: the sheet
    once per call, dlib once per sample) and checked against the landmarks the model saw; None where
    that fails (a note says why, once per dataset)."""

    def __init__(self, state: SweepResults):
        self.state = state
        self.crops: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.failed: set = set()

    def get(self, g, sample_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{sample id: (crop, its landmarks)} of the group's test samples (their dataset: the trial's, or a
        unit's test dataset across datasets); {} when not at hand."""
        sweep, t = self.state.sweep, g.trial
        name, reader, did = (t.test, t.test_reader, data_ids(t)[-1]) if t.cross else (t.dataset, t.reader, g.data_id)
        todo = [s for s in dict.fromkeys(sample_ids) if (did, s) not in self.crops]
        if todo and did not in self.failed:
            ds = sweep.datasets[name]
            info = self.state.data.get(did) or {}
            apex = {a["sample"]: a["apex"] for a in info.get("apex_estimated", []) if a.get("apex") is not None}
            try:
                found = apex_face_crops(
                    reader, ds.root, todo, expand_paths(t.preprocessing, f"{sweep.source}: preprocessing"),
                    sheet=ds.sheet, corrections=dict(ds.spec.corrections), apex=apex,
                    corrections_where=f"datasets.{name}.corrections (in {sweep.source})")
                self.crops.update({(did, s): v for s, v in found.items()})
            except (MicroAUError, SampleProblem, OSError) as e:
                self.failed.add(did)
                logger.warning(f"note: figures: Fig. 5 of {t.dataset} draws the stored landmarks without the face: "
                               f"its apex frames cannot be read here ({str(e).splitlines()[0]})")
        return {s: self.crops[(did, s)] for s in sample_ids if (did, s) in self.crops}

    def checked(self, sample_id: str, found, landmarks: np.ndarray) -> np.ndarray | None:
        """The crop when its landmarks are within 1 px of those its fold was trained on, else None."""
        if found is None:
            return None
        crop, lm = found
        off = float(np.abs(lm - landmarks).max())
        if off > 1.0:
            logger.warning(f"note: figures: the apex frame of {sample_id} gives landmarks {off:.1f} px away from "
                           f"those its fold was trained on (the data changed?); its Fig. 5 panel has no face")
            return None
        return crop


# ------------------------------------------------------------------------------------------------------
# Fig. 6: cosine similarity of one AU's features, positive vs negative samples
@dataclass
class SimilarityPanel:
    label: str  # the point
    subject: str  # the test subject whose fold's model made the features
    sample_ids: list[str]
    labels: list[int]  # the AU's label per sample (1, 0, 1, 0, ...)
    matrix: np.ndarray  # (k, k) cosine similarity


def similarity_panels(state: SweepResults, groups: Sequence[Group], au: int,
                      per_class: int = PER_CLASS) -> list[SimilarityPanel]:
    """One panel per point: `per_class` positive and negative samples of the AU, interleaved like the
    paper's {1, 0, 1, 0}, all of one test subject (so one model made their features: the subject with the
    most of both classes, the same subject and samples in every panel)."""
    if not groups:
        return []
    per_point = [{r.test_subject: r for r in state.group_results(g)} for g in groups]
    j = [int(a) for a in groups[0].trial.aus].index(au)
    common = sorted(set.intersection(*(set(p) for p in per_point)))
    best, best_n = None, 0
    for s in common:
        y = per_point[0][s].labels[:, j]
        n = min(int((y == 1).sum()), int((y == 0).sum()), per_class)
        if n > best_n:
            best, best_n = s, n
    if best is None:
        return []
    r0 = per_point[0][best]
    y = r0.labels[:, j]
    pos = [i for i in range(len(y)) if y[i] == 1][:best_n]
    neg = [i for i in range(len(y)) if y[i] == 0][:best_n]
    order = [i for pair in zip(pos, neg, strict=False) for i in pair]
    panels = []
    for g, p in zip(groups, per_point, strict=False):
        r = p[best]
        idx = [r.sample_ids.index(r0.sample_ids[i]) for i in order]
        f = r.features[idx, j].astype(np.float64)
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        panels.append(SimilarityPanel(label=g.trial.point_label, subject=best,
                                      sample_ids=[r.sample_ids[i] for i in idx],
                                      labels=[int(r.labels[i, j]) for i in idx], matrix=f @ f.T))
    return panels


def similarity_figure(panels: Sequence[SimilarityPanel], au: int, title: str, dpi: int = DPI):
    """Fig. 6: the panels' similarity matrices side by side on one colour scale, each cell written."""
    if not panels:
        return None
    k = len(panels[0].sample_ids)
    fig = _figure(0.6 + 3.0 * len(panels), 3.5, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    lo = min(float(p.matrix.min()) for p in panels)
    vmin = min(lo, 0.0)
    im = None
    for ax, p in zip(axes, panels, strict=False):
        im = ax.imshow(p.matrix, cmap="viridis", vmin=vmin, vmax=1.0)
        for a in range(k):
            for b in range(k):
                v = p.matrix[a, b]
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > vmin + 0.6 * (1 - vmin) else "white")
        ticks = [f"{'+' if y else '-'} {s.split('/')[-1]}" for s, y in zip(p.sample_ids, p.labels, strict=False)]
        ax.set_xticks(range(k), ticks, rotation=35, ha="right", fontsize=6.5)
        ax.set_yticks(range(k), ticks, fontsize=6.5)
        ax.set_title(p.label, fontsize=8.5)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="cosine similarity")
    fig.suptitle(f"Fig. 6 AU{au} feature similarity: {title}, test subject {panels[0].subject}\n"
                 f"(+ AU{au} active, - not active; final AU features of that fold's model)", fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------------------
# Fig. 7: t-SNE of one AU's features
@dataclass
class TsnePanel:
    label: str
    xy: np.ndarray  # (n, 2)
    labels: np.ndarray  # (n,) the AU's label


def tsne_panels(state: SweepResults, groups: Sequence[Group], au: int) -> list[TsnePanel]:
    """Per point: t-SNE (scikit-learn, cosine metric, PCA init, seed 0) of the AU's final features of every test
    sample, pooled over the folds (each sample's features come from the model of the fold that tested
    it)."""
    from sklearn.manifold import TSNE

    panels = []
    for g in groups:
        results = state.group_results(g)
        j = [int(a) for a in g.trial.aus].index(au)
        x = np.concatenate([r.features[:, j] for r in results]).astype(np.float64)
        y = np.concatenate([r.labels[:, j] for r in results]).astype(np.int64)
        if len(x) < 5:
            continue
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        # exact gradients below EXACT_TSNE samples (a few hundred per dataset: faster here than Barnes-Hut)
        xy = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=0,
                  method="exact" if len(x) <= EXACT_TSNE else "barnes_hut").fit_transform(x)
        panels.append(TsnePanel(label=g.trial.point_label, xy=xy, labels=y))
    return panels


def tsne_figure(panels: Sequence[TsnePanel], au: int, title: str, dpi: int = DPI):
    """Fig. 7: one scatter per point, activated (red) vs not (blue)."""
    if not panels:
        return None
    fig = _figure(0.4 + 2.9 * len(panels), 3.2, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels, strict=False):
        for value, colour, name in ((0, "tab:blue", "not active"), (1, "tab:red", "active")):
            m = p.labels == value
            ax.scatter(p.xy[m, 0], p.xy[m, 1], s=10, c=colour, alpha=0.75, lw=0, label=f"AU{au} {name} ({m.sum()})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(p.label, fontsize=8.5)
        ax.legend(fontsize=6.5, loc="best", frameon=False)
    fig.suptitle(f"Fig. 7 t-SNE of AU{au} features: {title} (test samples of every fold)", fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------------------
# per-AU F1 with CIs, MER confusion, loss curves
def _f1_rows(state: SweepResults, groups) -> list[dict[str, Any]]:
    from model.metrics import per_au_f1_ci

    rows = []
    for g in sorted(groups, key=lambda g: g.trial.point):
        results = state.group_results(g)
        pooled = g.pooled or {}
        rows.append({"label": f"{g.trial.point}: {g.trial.point_label}", "aus": [int(a) for a in g.trial.aus],
                     "f1": {int(a): v["f1"] for a, v in (pooled.get("per_au") or {}).items()},
                     "ci": per_au_f1_ci(results), "mean": pooled.get("f1"),
                     "mean_ci": (pooled.get("ci") or {}).get("f1")})
    return rows


def f1_figure(rows: Sequence[dict[str, Any]], title: str, dpi: int = DPI):
    """Per AU a bar per point (pooled F1, 95% subject-bootstrap CI as error bars), then the mean over AUs
    (the paper's F1) with the table's CI."""
    if not rows:
        return None
    aus = rows[0]["aus"]
    n = len(rows)
    width = 0.8 / n
    fig = _figure(max(5.0, 0.9 + (len(aus) + 1) * (0.25 + 0.14 * n)), 3.4, dpi)
    ax = fig.subplots()
    x = np.arange(len(aus) + 1)
    for k, r in enumerate(rows):
        vals = [r["f1"].get(a, np.nan) for a in aus] + [r["mean"] if r["mean"] is not None else np.nan]
        cis = [r["ci"].get(a, [v, v]) for a, v in zip(aus, vals, strict=False)] + [r["mean_ci"] or [vals[-1]] * 2]
        err = np.array([[max(v - c[0], 0), max(c[1] - v, 0)] for v, c in zip(vals, cis, strict=False)]).T
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width, yerr=err, capsize=2, label=r["label"],
               error_kw={"lw": 0.8})
    ax.set_xticks(x, [f"AU{a}" for a in aus] + ["mean"], fontsize=8)
    ax.axvline(len(aus) - 0.5, color="0.7", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pooled F1", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, ncols=min(n, 3), loc="upper left", bbox_to_anchor=(0, -0.1), frameon=False)
    ax.set_title(f"Per-AU F1 with 95% subject-bootstrap CIs: {title}", fontsize=8.5)
    return fig


def confusion_figure(results: Sequence[Any], title: str, pooled: dict[str, Any] | None = None,
                     dpi: int = DPI):
    """Zero-shot MER confusion matrix (rows: true class, columns: predicted), pooled over the folds;
    counts written, colour the row's share. None when no sample has a MER class."""
    from sklearn.metrics import confusion_matrix

    if not results:
        return None
    classes = list(results[0].mer_classes)
    y = [m for r in results for m in r.mer_labels]
    p = [m for r in results for m in r.mer_preds]
    keep = [i for i, m in enumerate(y) if m is not None]
    if not keep:
        return None
    cm = confusion_matrix([y[i] for i in keep], [p[i] for i in keep], labels=classes)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = _figure(3.9, 3.4, dpi)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for a in range(len(classes)):
        for b in range(len(classes)):
            ax.text(b, a, str(cm[a, b]), ha="center", va="center", fontsize=9,
                    color="white" if share[a, b] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, fontsize=7.5)
    ax.set_yticks(range(len(classes)), classes, fontsize=7.5)
    ax.set_xlabel("predicted (Eq. 13)", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
    mer = (pooled or {}).get("mer") or {}
    scores = (f"\nUF1 {mer['uf1']:.3f}  UAR {mer['uar']:.3f}  ACC {mer['acc']:.3f}  (n={len(keep)})"
              if "uf1" in mer else f"\nn={len(keep)}")
    ax.set_title(f"Zero-shot MER: {title}{scores}", fontsize=7.5)
    return fig


def loss_figure(results: Sequence[Any], title: str, dpi: int = DPI):
    """One panel per loss term: the mean over the folds per epoch, min..max of the folds shaded."""
    curves = {t: [r.loss_curve.get(t) for r in results if r.loss_curve.get(t)] for t in LOSS_TERMS}
    curves = {t: np.array(c, dtype=np.float64) for t, c in curves.items()
              if c and len({len(x) for x in c}) == 1}
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure(2.4 * len(curves) + 0.3, 2.6, dpi)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (term, c) in zip(axes, curves.items(), strict=False):
        epochs = np.arange(1, c.shape[1] + 1)
        ax.fill_between(epochs, c.min(0), c.max(0), alpha=0.25, lw=0)
        ax.plot(epochs, c.mean(0), lw=1.2)
        off = not np.any(c)
        ax.set_title(_TERM_TITLES.get(term, term) + (" (off)" if off else ""), fontsize=8)
        ax.set_xlabel("epoch", fontsize=7.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Loss per epoch: {title} (mean of {len(results)} folds, min..max shaded)", fontsize=8)
    return fig
