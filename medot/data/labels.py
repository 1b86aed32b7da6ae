"""Class labels as a user types them (the zero-shot label list of the CLI and the app).

Kept apart from :mod:`medot.zeroshot` (which imports torch) so that a bad list is refused before
any model library is imported; :mod:`medot.zeroshot` re-exports these names.
"""

from __future__ import annotations

#: most labels one zero-shot request may name (each is a text-encoder pass), and their longest length
MAX_LABELS = 100
MAX_LABEL_CHARS = 200


def parse_labels(text: str) -> list[str]:
    """``"normal, pneumonia"`` -> ``["normal", "pneumonia"]``; two to :data:`MAX_LABELS` distinct
    labels of at most :data:`MAX_LABEL_CHARS` characters."""
    labels = [label.strip() for label in (text or "").split(",") if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError("give at least two distinct class labels, separated by commas")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"give at most {MAX_LABELS} class labels, got {len(labels)}")
    longest = max(labels, key=len)
    if len(longest) > MAX_LABEL_CHARS:
        raise ValueError(f"a class label may have at most {MAX_LABEL_CHARS} characters; {longest[:20]!r}... has {len(longest)}")
    return labels
