"""The web view in a real browser: headless Chromium opens /ui/ of an appliance in namespaces while a
download runs through it; the flow shows up with growing counts, the graph is drawn, and its close
button resets the download (curl says so). Screenshots go to the test's tmp_path."""

import importlib.util
import json
import shutil
import sys
import time

import pytest
from conftest import HERE, Lan, need

pytestmark = pytest.mark.linux_root

SECRET = "web-view-test-secret"
API = "127.0.0.1:9090"
SIZE = 64 << 20  # bytes of the download; at the rate limit it would take 32 s, the test closes it long before


def _need_browser():
    need("curl", "curl")
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` (apt-get install {package}) for the real-browser test")
    for module in ("selenium", "wsproto"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module} (pip install {module}, in the test extra)")


def test_the_web_view_shows_and_closes_a_download(lan, tmp_path):
    _need_browser()
    lan.server.server("http", 8080)
    app = lan.appliance("--api-listen", API, "--api-secret", SECRET)
    assert f"web view on http://{API}/ui/" in app.log, app.log
    out = tmp_path / "download"
    curl = lan.client.spawn("curl", "-sS", "--limit-rate", "2M", "--max-time", "60", "-o", str(out),
                            f"http://{Lan.SERVER4}:8080/bytes/{SIZE}")
    deadline = time.monotonic() + 20
    while not (out.exists() and out.stat().st_size > 0):
        assert time.monotonic() < deadline and curl.poll() is None, "the download did not start"
        time.sleep(0.05)
    r = lan.client.run(sys.executable, str(HERE / "web_view_driver.py"), f"http://{API}/ui/#token={SECRET}",
                       f"{Lan.SERVER4}:8080", str(tmp_path), timeout=120)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print("web view:", result, "screenshots in", tmp_path)
    assert result["appeared_s"] is not None, f"the flow did not appear within 2 s: {result}"
    first, last = result["download_counts"]
    assert last > first > 0, result
    assert result["row"][0] == "tcp" and result["row"][4] == "direct", result  # proto, outbound
    assert result["graph_pixels"] > 100, result
    assert (tmp_path / "web-view.png").stat().st_size > 0
    assert result["closed"], result
    curl.wait(30)
    log = (tmp_path / f"{lan.client.name}-proc-{len(lan.client.procs) - 1}.log").read_text(errors="replace")
    assert curl.returncode == 56 and "reset" in log.lower(), (curl.returncode, log)  # CURLE_RECV_ERROR: reset by peer
    assert out.stat().st_size < SIZE
    assert app.stop() == 0
    assert "closed by the API" in app.log, app.log
