"""MADPOT's hyper-parameters (:class:`MadpotConfig`), its prompt phrases and the MVFA object names.

Every default is documented with its source in ``docs/methods/madpot.md`` (MADPOT's abstract and
Fig. 1, the authors' previous method MadCLIP, MVFA, or the issue that specified medot's build).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from medot.errors import MedotError

MADPOT, MVFA_BASELINE, ZEROSHOT, PATCHCORE = "madpot", "mvfa", "zeroshot", "patchcore"
METHODS = (MADPOT, MVFA_BASELINE, ZEROSHOT, PATCHCORE)
TRAINED = (MADPOT, MVFA_BASELINE)

#: state phrases around the object name (MadCLIP / MVFA state lists; the issue's list of seven each)
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
    "disease {}",
    "abnormal {}",
)
#: prompt templates of the fixed ensembles (WinCLIP / April-GAN, used by MVFA)
TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
#: the MVFA benchmark's objects (and medot's synthetic organs) -> the name written in prompts
OBJECT_NAMES = {
    "Brain": "brain MRI",
    "Liver": "liver CT",
    "Retina_RESC": "retinal OCT",
    "Retina_OCT2017": "retinal OCT",
    "Chest": "chest X-ray",
    "Histopathology": "histopathology image",
    "Phantom": "head CT",
    "Retina": "retinal OCT",
    "Histo": "histopathology image",
}


class MadpotError(MedotError):
    """A MADPOT setting, support set or model cannot be used as asked."""


def object_prompt_name(obj: str, override: str | None = None) -> str:
    """The object name written in prompts: ``override``, else :data:`OBJECT_NAMES`, else ``obj``
    with underscores as spaces (user-typed names for new data)."""
    if override:
        return " ".join(override.split())
    return OBJECT_NAMES.get(obj, " ".join(obj.replace("_", " ").split()))


@dataclass(frozen=True)
class MadpotConfig:
    """One MADPOT (or MVFA-baseline) model and its training.

    * ``layers``: backbone layers whose patch tokens are adapted (None: the backbone's default
      layers -- open_clip ViTs: four evenly spaced blocks, as MVFA; ``lite``: its feature layers);
    * ``n_prompts`` (K) learnable prompts per class, ``n_ctx`` context tokens each;
    * ``mass`` (gamma), ``epsilon``, ``ot_iterations``: the partial-OT solve; ``balanced_prompts``:
      every prompt receives exactly gamma/K (balanced OT with a dummy column) instead of at most 1/K;
    * ``pot`` / ``cl`` / ``seg_loss``: the POT branch, the contrastive branch, focal + Dice (ablations);
    * ``lambda_cl``: weight of the contrastive loss; ``lambda_diversity``: optional penalty on the
      mean cosine between prompts of one class (0: off);
    * ``lr``, ``betas``, ``batch_size``, ``epochs``: Adam; ``views``: fixed augmentations per
      support image (MadCLIP: 16, the first is the image itself);
    * ``memory_weight``: MVFA baseline's fusion weight of the memory-bank map with the text map.
    """

    layers: tuple[str, ...] | None = None
    n_prompts: int = 7
    n_ctx: int = 8
    mass: float = 0.8
    epsilon: float = 0.1
    ot_iterations: int = 100
    balanced_prompts: bool = False
    pot: bool = True
    cl: bool = True
    seg_loss: bool = True
    lambda_cl: float = 1.0
    lambda_diversity: float = 0.0
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 16
    epochs: int = 60
    views: int = 16
    memory_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "betas", tuple(self.betas))
        problems = []
        if self.n_prompts < 1 or self.n_ctx < 1:
            problems.append(f"n_prompts and n_ctx must be >= 1 (got {self.n_prompts}, {self.n_ctx})")
        if not 0 < self.mass <= 1:
            problems.append(f"the transported mass must be in (0, 1], got {self.mass}")
        # written as `not x > 0` so that NaN (every comparison False) is refused too
        if not math.isfinite(self.epsilon) or not self.epsilon > 0 or self.ot_iterations < 1:
            problems.append(f"epsilon must be > 0 and ot_iterations >= 1 (got {self.epsilon}, {self.ot_iterations})")
        if not (self.pot or self.cl):
            problems.append("MADPOT needs at least one of its branches: drop --no-pot or --no-cl")
        if not (math.isfinite(self.lambda_cl) and self.lambda_cl >= 0
                and math.isfinite(self.lambda_diversity) and self.lambda_diversity >= 0):
            problems.append(f"lambda_cl and lambda_diversity must be finite and >= 0 "
                            f"(got {self.lambda_cl}, {self.lambda_diversity})")
        if not math.isfinite(self.lr) or not self.lr > 0 or self.batch_size < 1 or self.epochs < 1 or not 1 <= self.views <= 16:
            problems.append(
                f"need a finite lr > 0, batch_size >= 1, epochs >= 1 and 1 <= views <= 16 "
                f"(got {self.lr}, {self.batch_size}, {self.epochs}, {self.views})"
            )
        if not 0 <= self.memory_weight <= 1:
            problems.append(f"memory_weight must be in [0, 1], got {self.memory_weight}")
        if problems:
            raise MadpotError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = None if self.layers is None else list(self.layers)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MadpotConfig:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if values.get("layers") is not None:
            values["layers"] = tuple(values["layers"])
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)
