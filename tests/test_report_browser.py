"""The report of a tiny run opened in headless Chromium (Debian's `chromium`; .ci/run installs it), driven over the
DevTools protocol (websocket-client): it renders (non-blank screenshot), logs no console error, loads every
<img>, and no request leaves the page (only data: URIs and the file itself)."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_command

pytestmark = pytest.mark.slow


class DevTools:
    """One page target of a headless Chromium, commands sent and events collected over its websocket."""

    def __init__(self, socket_url: str):
        import websocket

        self.socket = websocket.create_connection(socket_url, timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        call = next(self.ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout}s"
            self.events.append(json.loads(self.socket.recv()))


def _open_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
    args += ["--no-first-run", "--disable-background-networking", "--window-size=1280,2000", "about:blank"]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    while True:  # the page target appears shortly after the port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.loads(reply.read()) if t.get("type") == "page"]
        if pages:
            return proc, pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.2)


def test_report_renders_in_headless_chromium(tmp_path, finished_run, cache_dir):
    pytest.importorskip("websocket", reason="pip install websocket-client (the dev extra)")
    from PIL import Image

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns("eval"))
    run_command("evaluate", f"run={run_dir}", "device=cpu", output_dir=tmp_path / "ev", cache_dir=cache_dir)
    page = (run_dir / "eval" / "report.html").resolve()

    proc, socket_url = _open_chromium(tmp_path / "profile")
    try:
        tools = DevTools(socket_url)
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        tools.send("Page.navigate", url=page.as_uri())
        tools.wait_for("Page.loadEventFired")
        images = tools.send(
            "Runtime.evaluate",
            expression="JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth]))",
            returnByValue=True,
        )["result"]["value"]
        shot = tools.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    loaded = json.loads(images)
    assert len(loaded) >= 6 and all(done and width > 0 for done, width in loaded), loaded
    errors = [e for e in tools.events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [
        e for e in tools.events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    errors += [
        e for e in tools.events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"
    ]
    assert not errors, errors[:3]
    requested = [e["params"]["request"]["url"] for e in tools.events if e.get("method") == "Network.requestWillBeSent"]
    left = [url for url in requested if not url.startswith(("data:", page.as_uri()))]
    assert not left, left
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(shot))).convert("L")
    histogram = image.histogram()
    assert image.size[0] >= 1000 and image.size[1] > 2000  # the whole page, not a blank viewport
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour"
