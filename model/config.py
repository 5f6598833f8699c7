"""Model and training sections of a sweep file (paper III, IV-A; ablation switches of Tables II-VIII)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The ModelConfig fields a frozen prefix depends on: all model.prefix's `_identity` reads of the config.
# Configs that agree on these (and on the data and the AU list) share one prefix, whatever their head,
# losses or training. Here, not in model.prefix: the orchestrator groups trials by prefix in processes that
# never compute one (a search's candidate coordinators), and model.prefix imports torch and open_clip.
PREFIX_FIELDS = ("arch", "pretrained", "trainable_blocks", "prompts", "emotion_texts")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    arch: str = "ViT-B-32"  # open_clip model name
    pretrained: str = "openai"  # 'openai', a local checkpoint path, or 'none' (random init)
    trainable_blocks: int = Field(3, ge=0)  # last k blocks of both towers train (paper IV-A)
    lsi: bool = True  # Table II: LSI on/off
    # What the AU features are when `lsi` is false (read only then; docs/model.md, "w/o LSI"):
    # 'shared_global': every AU reads the one global image feature (CLIP's class token in the joint space);
    # 'per_au_all_tokens': each AU pools all h*w patch tokens with its own `pooling` module.
    lsi_off_feature: Literal["shared_global", "per_au_all_tokens"] = "shared_global"
    pooling: Literal["pta", "mean", "max"] = "pta"  # Table VI
    gsd: bool = True  # Table II: GSD on/off
    dependency: Literal["gda", "add_mlp", "cat_mlp"] = "gda"  # Table VII
    text: Literal["finetune", "fixed"] = "finetune"  # Table III
    contrastive: Literal["miaucl", "local_origcl", "global_origcl", "none"] = "miaucl"  # Table VIII
    # How MiAUCL reads Eq. 10's same-label targets (read only with contrastive: miaucl; docs/protocol.md,
    # "MiAUCL targets"): 'literal' = the 0/1 matrix as written, unnormalised; 'normalized' = each row
    # divided by its sum (then equal to local OrigCL, the reading of releases before it was named);
    # 'bce' = binary cross-entropy of each scaled similarity against its 0/1 target.
    miaucl_targets: Literal["literal", "normalized", "bce"] = "literal"
    pta_hidden: int = Field(128, ge=1)  # hidden width of the PTA MLP (Eq. 2)
    head_hidden: int = Field(256, ge=1)  # hidden width of the per-AU classifier MLP (Eq. 7)
    # Optional overrides of the defaults in model/text.py and model/lsi.py, keyed by AU number.
    prompts: dict[int, list[str]] | None = None  # AU -> [positive text, negative text]
    landmark_groups: dict[int, list[int]] | None = None  # AU -> 0-based dlib indices (Table I)
    # MER class -> one label text or a list of them (Eq. 13: the best text decides); replaces the defaults
    emotion_texts: dict[str, str | list[str]] | None = None

    def identity(self) -> dict:
        """The fields as a results store keys them: every field, except `miaucl_targets` where it changes
        nothing (another contrastive loss) or is `normalized`, the reading every release computed before
        the key existed, so folds stored then keep their key under the reading they were trained with."""
        d = self.model_dump(mode="json")
        if d["contrastive"] != "miaucl" or d["miaucl_targets"] == "normalized":
            d.pop("miaucl_targets")
        return d


class TrainConfig(_Strict):
    epochs: int = Field(80, ge=1)
    batch_size: int = Field(8, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr_encoder: float = Field(1e-3, gt=0)  # visual and text encoders
    lr_head: float = Field(1e-2, gt=0)  # all other modules
    momentum: float = Field(0.9, ge=0)  # not stated in the paper
    weight_decay: float = Field(0.0, ge=0)
    lr_step_epoch: int = Field(40, ge=1)  # lr divided by lr_gamma^-1 at this epoch
    lr_gamma: float = Field(0.1, gt=0)
    alpha: float | None = Field(None, ge=0)  # Eq. 12 contrastive weight; None -> per-dataset default
    beta: float | None = Field(None, ge=0)  # Eq. 12 GD weight; None -> per-dataset default
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1'
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None leaves torch's default
    # Arithmetic of the trainable blocks: 'bf16' = bfloat16 autocast of the forward passes (weights, optimiser
    # state and updates stay fp32); 'fp32'; 'auto' = bf16 on a CUDA device that supports it, fp32 elsewhere
    # (docs/model.md, "Precision": bf16 predictions stay within 0.02 of fp32's)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Execution switch, not part of the config hash: the training step (forward + losses, and through it
    # the backward) wrapped in torch.compile: mode 'reduce-overhead' (CUDA graphs) on CUDA, the default
    # mode on CPU. Same mathematics; results within float rounding of the eager step (docs/model.md)
    compile: bool = False


# Paper IV-C: best alpha/beta per dataset (Tables IV, V). CAS(ME)^3, which the paper does not evaluate, takes
# CASME II's (same lab and coding practice; docs/protocol.md, "Readings"): a reading, not a tuned value.
DATASET_DEFAULTS = {
    "casme2": {"alpha": 0.6, "beta": 1.0},
    "samm": {"alpha": 1.0, "beta": 0.6},
    "casme3": {"alpha": 0.6, "beta": 1.0},
}


def with_dataset_defaults(training: TrainConfig, reader: str | None) -> TrainConfig:
    """`training` with alpha/beta, where unset, taken from the reader's paper defaults (DATASET_DEFAULTS).
    The one place they are filled: the sweep's resolution and `train_fold` both call it."""
    fill = {k: v for k, v in DATASET_DEFAULTS.get(reader, {}).items() if getattr(training, k) is None}
    return training.model_copy(update=fill) if fill else training


def check_aus(model: ModelConfig, aus: Sequence[int]) -> None:
    """Every AU has its landmark group (Table I or `model.landmark_groups`), its prompts and the MER
    texts it needs, so a config is refused when it is read rather than when a fold starts. Raises the
    model's ValueError naming the AU and the key to add."""
    from model.regions import landmark_groups
    from model.text import au_prompts, emotion_texts

    prompts = au_prompts(aus, model.prompts)
    landmark_groups(aus, model.landmark_groups)
    emotion_texts(aus, prompts, model.emotion_texts)
