"""Preprocessing section of a sweep file (paper III-A/B, IV-A)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MagnificationConfig(_Strict):
    # Paper IV-A: learning-based magnification (Oh et al. 2018) with factor 3. `learned` needs the
    # checkpoint of a public PyTorch port; `eulerian` needs no weights; `none` switches it off.
    method: Literal["none", "eulerian", "learned"] = "eulerian"
    factor: float = Field(3.0, gt=0)
    weights: str | None = None  # path to the learned network's checkpoint (method: learned)
    # Eulerian (linear, band-limited): temporal pass band [low, high] in cycles per frame of the onset..apex
    # clip (the mean, frequency 0, is never amplified) and the number of Laplacian pyramid levels that are
    # amplified. The default [0, 0.5] passes every non-zero frequency up to Nyquist, so an onset->apex
    # ramp is magnified by `factor` whatever the clip's length (CASME II / SAMM at 200 fps: tens of frames);
    # a narrower band leaves part of the ramp's spectrum unamplified (x2.4 instead of x3 at 21+ frames with
    # [0.05, 0.4]).
    low: float = Field(0.0, ge=0, lt=0.5)
    high: float = Field(0.5, gt=0, le=0.5)
    levels: int = Field(4, ge=1, le=8)

    @model_validator(mode="after")
    def _band(self):
        if self.low >= self.high:
            raise ValueError(f"magnification.low ({self.low}) must be below magnification.high ({self.high}) "
                             f"(cycles per frame, 0..0.5)")
        return self


class PreprocessConfig(_Strict):
    size: int = Field(224, ge=32)  # flow image side; ViT-B/32 at 224 gives the 7x7 patch grid
    flow: Literal["tvl1", "farneback", "dis"] = "tvl1"
    magnification: MagnificationConfig = MagnificationConfig()
    crop_margin: float = Field(0.15, ge=0, le=1)  # face box = landmark box grown by this share per side
    detector_upsample: int = Field(1, ge=0, le=3)  # dlib frontal detector upsampling
    predictor: str | None = None  # dlib 68-point predictor .dat; default: face-recognition-models'


# The fastest sensible preprocessing of generated data (tests, bench/): DIS flow (0.03 s/pair vs ~0.4 s for
# TV-L1), Eulerian x3 magnification (no weights), everything else at the paper's defaults (224 flow image).
QUICK_PREPROCESS = {"flow": "dis", "magnification": {"method": "eulerian", "factor": 3.0}}
