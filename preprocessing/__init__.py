"""Datasets -> prepared tensors: readers (CASME II, SAMM, CAS(ME)^3 Part A), synthetic generator, dlib landmarks, motion
magnification, optical flow and the content-addressed cache of `PreparedDataset`s.

Light names are imported here; `prepare_dataset` (OpenCV, dlib) is loaded on first use so that reading a
sweep file does not import them.
"""
from __future__ import annotations

from preprocessing.dataset import PreparedDataset
from preprocessing.errors import DatasetError

__all__ = ["DatasetError", "PreparedDataset", "prepare_dataset", "find_prepared", "prepared_key", "SCHEMA_VERSION"]


def __getattr__(name):
    if name in ("prepare_dataset", "find_prepared", "prepared_key", "prepared_key", "SCHEMA_VERSION"):
        from preprocessing import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'preprocessing' has no attribute {name!r}")
