"""Hyper-parameters of an OPTiML pretraining run (:class:`OptimlConfig`) and its baselines.

One config selects the method by name and the ablation switches; every method shares one code path
(:class:`medot.methods.optiml.model.OptimlModel`):

* ``optiml`` - CV-SIM + dense projector + dense OT loss + dense var/cov (+ optional global VICReg);
* ``vicreg`` - global VICReg only (Bardes et al., ICLR 2022): invariance, variance, covariance of
  the pooled, projected features;
* ``vicregl`` - VICRegL (Bardes, Ponce & LeCun, NeurIPS 2022): dense VICReg whose tokens are paired by
  nearest neighbours instead of OT - the average of its feature-based (L2) and location-based (crop
  geometry, top-(20, 4)) matchings - weighted ``1 - alpha`` against the global VICReg term's ``alpha``
  (VICRegL's ``alpha = 0.75``).

Switches: ``cvsim=False`` (no cross-view attention), ``varcov=False`` (no dense var/cov terms),
``ot=False`` (no dense matching term). ``stages`` adds dense terms on earlier encoder stages (one
CV-SIM, projector, plan and var/cov per stage, averaged over the stages). Defaults and their
sources are in docs/methods/optiml.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from medot.errors import MedotError

METHODS = ("optiml", "vicreg", "vicregl")
ENCODERS = ("resnet18", "resnet50", "lite", "tiny")
#: dense stages by ResNet stage number: block outputs at stride 8 (layer2), 16 (layer3), and the
#: final dense map (4: layer4, or lite's 1280-channel head map); lite's blocks at the same strides
STAGES = {2: "stride8", 3: "stride16", 4: "dense"}


@dataclass(frozen=True)
class OptimlConfig:
    """One pretraining recipe.

    * ``encoder``: ``resnet18`` / ``resnet50`` (torchvision, random init: the paper's setting) or
      ``lite`` (EfficientNet-Lite0 with its packaged ImageNet weights: domain-adaptive pretraining);
    * ``alpha``, ``beta``, ``eta``: weights of L_OT, the variance and the covariance terms
      (L = alpha L_OT + beta [var(q_s) + var(q_t)] + eta [cov(q_s) + cov(q_t)]; VICReg's 25/25/1);
    * ``epsilon``, ``sinkhorn_iterations``: entropic OT on the cost 1 - cos (uniform marginals);
    * ``projector``: widths of the dense (1x1-conv) and global projectors (BN + ReLU between);
    * ``global_weight``: weight of the global VICReg term on pooled features (0 = off; None =
      the method's default, see :attr:`global_term_weight`);
    * ``cvsim_heads``, ``cvsim_ffn_ratio``: CV-SIM's attention heads and FFN width ratio;
    * ``stages``: encoder stages whose dense tokens get the dense terms (:data:`STAGES`; must hold 4,
      the final map; default ``(4,)``: the last stage only);
    * ``vicregl_alpha``: VICRegL's weight of the global term (local: ``1 - vicregl_alpha``);
    * ``vicregl_matches``: VICRegL's location-based top-k per direction (``num_matches``);
    * ``vicregl_nn_matches``: the feature-based top-k per direction (0 = all: VICRegL's default).
    """

    method: str = "optiml"
    encoder: str = "resnet18"
    image_size: int = 224
    cvsim: bool = True
    varcov: bool = True
    ot: bool = True
    alpha: float = 25.0
    beta: float = 25.0
    eta: float = 1.0
    epsilon: float = 0.1
    sinkhorn_iterations: int = 100
    projector: tuple[int, ...] = (512, 512, 512)
    global_weight: float | None = None
    cvsim_heads: int = 8
    cvsim_ffn_ratio: int = 2
    min_scale: float = 0.2
    stages: tuple[int, ...] = (4,)
    vicregl_alpha: float = 0.75
    vicregl_matches: tuple[int, int] = (20, 4)
    vicregl_nn_matches: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "projector", tuple(int(d) for d in self.projector))
        object.__setattr__(self, "stages", tuple(sorted({int(k) for k in self.stages})))
        object.__setattr__(self, "vicregl_matches", tuple(int(k) for k in self.vicregl_matches))
        object.__setattr__(self, "vicregl_nn_matches", tuple(int(k) for k in self.vicregl_nn_matches))
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.encoder not in ENCODERS:
            problems.append(f"encoder {self.encoder!r}: choose one of {', '.join(ENCODERS)}")
        if self.image_size < 32:
            problems.append(f"image_size must be >= 32, got {self.image_size}")
        if min(self.alpha, self.beta, self.eta, self.global_term_weight) < 0:
            problems.append("alpha, beta, eta and global_weight must be >= 0")
        if not self.epsilon > 0:
            problems.append(f"epsilon must be > 0, got {self.epsilon}")
        if self.sinkhorn_iterations < 1:
            problems.append(f"sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        if not self.projector or min(self.projector) < 1:
            problems.append(f"projector widths must be >= 1, got {list(self.projector)}")
        if self.cvsim_heads < 1 or self.cvsim_ffn_ratio < 1:
            problems.append("cvsim_heads and cvsim_ffn_ratio must be >= 1")
        if not 0 < self.min_scale <= 1:
            problems.append(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not set(self.stages) <= set(STAGES) or 4 not in self.stages:
            problems.append(
                f"stages {list(self.stages)}: choose among {', '.join(map(str, STAGES))}, always with 4 (the final map)"
            )
        if self.method == "vicreg" and self.stages != (4,):
            problems.append("vicreg has no dense terms: stages other than 4 do not apply")
        if not 0 <= self.vicregl_alpha <= 1:
            problems.append(f"vicregl_alpha must be in [0, 1], got {self.vicregl_alpha}")
        if len(self.vicregl_matches) != 2 or min(self.vicregl_matches) < 1:
            problems.append(f"vicregl_matches must be two counts >= 1, got {list(self.vicregl_matches)}")
        if len(self.vicregl_nn_matches) != 2 or min(self.vicregl_nn_matches) < 0:
            problems.append(f"vicregl_nn_matches must be two counts >= 0 (0: all), got {list(self.vicregl_nn_matches)}")
        if self.method == "vicreg" and self.global_term_weight == 0:
            problems.append("vicreg is the global term only: global_weight must be > 0")
        if problems:
            raise MedotError("invalid OPTiML settings: " + "; ".join(problems))

    @property
    def global_term_weight(self) -> float:
        """``global_weight``, or by default 1 for ``vicreg`` (VICReg's loss), ``vicregl_alpha``
        (0.75) for ``vicregl`` (VICRegL's global branch) and 0 for ``optiml`` (the issue makes the
        global term optional)."""
        if self.global_weight is not None:
            return float(self.global_weight)
        return {"optiml": 0.0, "vicreg": 1.0}.get(self.method, float(self.vicregl_alpha))

    @property
    def dense_weight(self) -> float:
        """Weight of the dense (local) terms: ``1 - vicregl_alpha`` for ``vicregl`` (VICRegL's
        ``(1 - alpha)``), 1 otherwise (OPTiML's loss has its own alpha, beta, eta)."""
        return 1.0 - float(self.vicregl_alpha) if self.method == "vicregl" else 1.0

    @property
    def dense(self) -> bool:
        """Whether the dense branch (projector on tokens, dense terms) runs at all."""
        return self.method != "vicreg" and (self.ot or self.varcov)

    @property
    def uses_cvsim(self) -> bool:
        """CV-SIM is OPTiML's module; the baselines never use it."""
        return self.method == "optiml" and self.cvsim and self.dense

    @property
    def matching(self) -> str | None:
        """How the dense tokens of the two views are paired: ``"ot"``, ``"nn"`` or None."""
        if not self.dense or not self.ot:
            return None
        return "ot" if self.method == "optiml" else "nn"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("projector", "stages", "vicregl_matches", "vicregl_nn_matches"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimlConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def with_changes(self, **changes: Any) -> OptimlConfig:
        return replace(self, **changes)
