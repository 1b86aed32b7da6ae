"""Start the app exactly as the README does (its last step, `python app.py`) and fetch the page."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from readme_commands import readme_command

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readme_app_command_serves_the_page(tmp_path):
    command = readme_command("app-command")
    assert command.endswith("python app.py"), "the README's app command must end by starting the app"
    port = _free_port()
    env = {**os.environ, "MEDOT_HOME": str(tmp_path), "MEDOT_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        page = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(1)
        assert page is not None, "app did not serve its page:\n" + (tmp_path / "app.log").read_text()
        assert "medot" in page.lower()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
