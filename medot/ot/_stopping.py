"""Per-problem stopping for batched iterative solvers.

Each problem of a batch stops on its own: once it meets its stopping rule it is frozen (its
iterates are no longer updated), so a batched solve gives the same result and iteration count as a
loop of unbatched solves. The loop itself exits when every problem is frozen; asking that is a
device synchronisation, so off the CPU it is asked every :data:`ACCELERATOR_POLL` iterations only
(the result does not depend on when it is asked).
"""

from __future__ import annotations

import torch
from torch import Tensor

ACCELERATOR_POLL = 10
"""Iterations between two "all stopped?" checks off the CPU (each one is a device sync)."""


class BatchStopping:
    """Tracks which problems still iterate, and for how long each one did.

    Args:
        active: ``[B]`` bool, the problems to iterate (the others are left untouched).
        may_stop: whether a problem can stop before the iteration budget (``tol > 0``); if not,
            no masking is needed while all problems start active.
    """

    def __init__(self, active: Tensor, may_stop: bool) -> None:
        self.started = active
        self.active = active
        self.failed = torch.zeros_like(active)
        self.iterations = torch.zeros(active.shape, dtype=torch.long, device=active.device)
        self._on_cpu = active.device.type == "cpu"
        self._masking = not bool(active.all()) or (may_stop and not self._on_cpu)

    def keep(self, new: Tensor, old: Tensor) -> Tensor:
        """``new`` for problems still active, ``old`` for frozen ones (``[B, ...]`` tensors)."""
        if not self._masking:
            return new
        return torch.where(self.active.view(-1, *([1] * (new.ndim - 1))), new, old)

    def stop(self, met: Tensor, completed: int, failed: Tensor | None = None) -> bool:
        """Freeze the active problems where ``met`` or ``failed``, after ``completed`` iterations.

        ``failed`` marks problems whose iterates became non-finite: they stop at once (instead of
        running out the budget) and are reported by :meth:`finish` as not converged, with
        :attr:`failed` set. Returns True when no problem is left active (checked every call on
        CPU, every :data:`ACCELERATOR_POLL` calls elsewhere).
        """
        if failed is not None:
            failed = self.active & failed
            self.failed = self.failed | failed
            met = met | failed
        stopping = self.active & met
        self.iterations = torch.where(stopping, completed, self.iterations)
        self.active = self.active & ~stopping
        if self._on_cpu or completed % ACCELERATOR_POLL == 0:
            if not bool(self.active.any()):
                return True
            self._masking = self._masking or not bool(self.active.all())
        return False

    def finish(self, completed: int) -> tuple[Tensor, Tensor]:
        """``(iterations, converged)`` once the loop ends after ``completed`` iterations."""
        iterations = torch.where(self.active, completed, self.iterations)
        return iterations, self.started & ~self.active & ~self.failed
