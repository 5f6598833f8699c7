"""Pooled LOSO F1/ACC of the full model on the synthetic CASME II-layout data (the data and config of
tests/unit/model/test_train_synth.py: 4 subjects x 6 samples, tiny backbone, 20 epochs), against the constant
baselines (the row of docs/model.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/synthetic_loso.py
"""
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import loso, metrics
from model.config import ModelConfig, TrainConfig
from preprocessing import prepare_dataset
from preprocessing.config import QUICK_PREPROCESS, PreprocessConfig
from preprocessing.synth import generate

SPEC = SimpleNamespace(reader="casme2", aus=[1, 2, 4, 7, 12, 14, 15, 17], seed=1,
                       model=ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1),
                       training=TrainConfig(epochs=20, batch_size=8, lr_step_epoch=15, device="cpu",
                                            alpha=0.6, beta=1.0))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "casme2", layout="casme2", subjects=4, per_subject=6, seed=0)
        data = prepare_dataset("casme2", root, PreprocessConfig.model_validate(QUICK_PREPROCESS),
                               Path(tmp) / "cache", progress=False)
    folds = loso(SPEC, data)
    m, b = metrics.pooled_metrics(folds), metrics.baselines(folds)
    print(f"pooled F1 {m['f1']:.3f} ACC {m['acc']:.3f} (95% CI F1 {m['ci']['f1'][0]:.3f}-{m['ci']['f1'][1]:.3f}); "
          f"all-positive F1 {b['all_positive']['f1']:.3f}, all-negative F1 {b['all_negative']['f1']:.3f}")


if __name__ == "__main__":
    main()
