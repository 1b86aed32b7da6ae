"""``medot train ...`` exactly as the console script runs it (``medot.cli.main``), recording what
only the process itself can see, for tests/test_distributed.py: the task's tensors before and
after training (``initial_rank<R>`` / ``final_rank<R>.safetensors``) and each feature-cache call's
hits and misses (``cache_rank<R>.jsonl``), in the folder ``$MEDOT_TEST_RECORD``.

Usage: ``torchrun --nproc_per_node=2 tests/distributed_train.py train kmat ...``; the test's
one-process reference runs :func:`recording` in-process around ``medot.cli.main``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import save_file

from medot.cli import main
from medot.train import FeatureCache, Trainer


def _save(task, path: Path) -> None:
    save_file({name: t.detach().cpu().contiguous() for name, t in task.checkpoint_tensors().items()}, str(path))


@contextlib.contextmanager
def recording(folder: Path, rank: str) -> Iterator[None]:
    """Patch :meth:`Trainer.fit` and :meth:`FeatureCache.encode` to record into ``folder``."""
    fit, encode = Trainer.fit, FeatureCache.encode

    def recording_fit(self, task, *args, **kwargs):
        _save(task, folder / f"initial_rank{rank}.safetensors")
        result = fit(self, task, *args, **kwargs)
        _save(task, folder / f"final_rank{rank}.safetensors")
        return result

    def recording_encode(self, *args, **kwargs):
        features = encode(self, *args, **kwargs)
        with (folder / f"cache_rank{rank}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"hits": features.hits, "misses": features.misses}) + "\n")
        return features

    Trainer.fit, FeatureCache.encode = recording_fit, recording_encode
    try:
        yield
    finally:
        Trainer.fit, FeatureCache.encode = fit, encode


if __name__ == "__main__":
    with recording(Path(os.environ["MEDOT_TEST_RECORD"]), os.environ.get("RANK", "0")):
        code = main(sys.argv[1:])
    sys.exit(code)
