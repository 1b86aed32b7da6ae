"""The README's set-up commands, read from the README itself so tests prove what users run."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(marker: str) -> str:
    """The fenced block that follows ``<!-- medot:<marker> -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- medot:{marker} -->\s*```[a-z]*\n(.*?)\n```", text, re.S)
    assert match, f"README has no <!-- medot:{marker} --> block"
    return match.group(1).strip()
