"""MADPOT (Shiri, Beyan & Murino, ICIAP 2025): few-shot and zero-shot medical anomaly detection and
localisation with visual adapters, multi-prompt partial OT and contrastive learning, plus its
baselines (MVFA, text-only zero-shot, PatchCore) on the same code path.

* :mod:`.config` - :class:`MadpotConfig`, prompt states and templates, MVFA object names;
* :mod:`.model` - adapters, :class:`MultiPrompts`, partial-OT logits, :class:`MadpotModel`;
* :mod:`.losses` - POT cross-entropy, sigmoid contrastive loss, focal + Dice;
* :mod:`.baselines` - :class:`MvfaModel`, :class:`ZeroShotModel`, fixed prompt ensembles;
* :mod:`.data` - support sets (MVFA few-shot lists), 16 fixed augmentations, cached tokens;
* :mod:`.task` - :class:`MadpotTask` / :class:`MvfaTask` on :mod:`medot.train`, :func:`fit`;
* :mod:`.detector` - checkpoints and :class:`MadpotDetector` (images in, maps and scores out);
* :mod:`.cli` - ``medot train madpot`` and ``medot benchmark madpot``.
"""

from medot.methods.madpot.config import MadpotConfig, MadpotError

__all__ = ["MadpotConfig", "MadpotError"]
