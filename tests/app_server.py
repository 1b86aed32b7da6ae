"""A live ``python app.py`` for the app's HTTP tests, on a temporary MEDOT_HOME / MEDOT_DATA_ROOT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``python app.py`` in its own process group, on a free port, logging to ``home/app.log``."""

    def __init__(self, home: Path, data_root: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        """``env`` adds to the environment, ``args`` to the command line (e.g. deployment limits)."""
        self.home, self.port = home, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "MEDOT_HOME": str(home), "MEDOT_DATA_ROOT": str(data_root), "MEDOT_BACKBONE": "lite",
               "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "MEDOT_WARM_UMAP": "0",  # no background numba compile per test server (the app warms UMAP at start)
               **(env or {})}
        self.log = (home / "app.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(self.url, timeout=5).close()
                return
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise AssertionError("the app did not start:\n" + (home / "app.log").read_text())

    def kill(self) -> None:
        """SIGKILL the app and everything it started (as when its container dies)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()
