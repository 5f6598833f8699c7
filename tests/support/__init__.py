"""Test support shared by the test modules: `REPO` (the checkout), `data` (synthetic prepared
datasets, the test preprocessing), `sweeps` (sweep files, fake results, and the `Backend`s that stand in for
Ray Tune)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
