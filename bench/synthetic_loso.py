"""Pooled LOSO F1/ACC of the full model on the synthetic CASME II-layout data, with the data and config
of tests/test_train_synth.py, against the constant baselines (the row of docs/model.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/synthetic_loso.py
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import TEST_PREPROCESS  # noqa: E402
from model import compute_prefix, metrics, train_fold  # noqa: E402
from preprocessing import prepare_dataset  # noqa: E402
from preprocessing.config import PreprocessConfig  # noqa: E402
from preprocessing.synth import generate  # noqa: E402
from test_train_synth import AUS, MODEL, SPEC  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "casme2", layout="casme2", subjects=4, per_subject=6, seed=0)
        data = prepare_dataset("casme2", root, PreprocessConfig.model_validate(TEST_PREPROCESS),
                               Path(tmp) / "cache", progress=False)
    prefix = compute_prefix(MODEL, data, AUS)
    folds = [train_fold(SPEC, data, s, prefix=prefix) for s in sorted(set(data.subjects))]
    m, b = metrics.pooled_metrics(folds), metrics.baselines(folds)
    print(f"pooled F1 {m['f1']:.3f} ACC {m['acc']:.3f} (95% CI F1 {m['ci']['f1'][0]:.3f}-{m['ci']['f1'][1]:.3f}); "
          f"all-positive F1 {b['all_positive']['f1']:.3f}, all-negative F1 {b['all_negative']['f1']:.3f}")


if __name__ == "__main__":
    main()
