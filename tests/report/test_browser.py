"""The report in a real browser: headless Chromium (Debian package `chromium`; `make browser` installs it)
opens the page of a tiny run; every image must decode and the page must log no error.

The checker script is added to a copy of the page here (reports have no scripts): it records every
failed resource and script error from the first moment, and once the page has loaded writes how many
images decoded into the DOM that `--dump-dom` prints. Set PIXELWISE_SCREENSHOT=FILE.png to keep the
screenshot.
"""
import os
import re
import shutil
import subprocess

import pytest

from pixelwise.report.run import write_report
from conftest import tiny_fcn_run

CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__errors.push(t.tagName ? ('failed to load ' + t.tagName + ' ' + String(t.src || t.href).slice(0, 60))
                                 : ('script error: ' + e.message));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var out = document.createElement('pre');
  out.id = 'pixelwise-check';
  out.textContent = 'images ' + ok.length + '/' + imgs.length + ' errors ' + JSON.stringify(window.__errors);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed for the report's browser check and is not installed; run `make browser` "
                "(apt-get install chromium), which `make test` does")


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path):
    run = tiny_fcn_run(tmp_path / "run")
    page = write_report([run]).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1))
    dom = run_chromium("--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="pixelwise-check">images (\d+)/(\d+) errors (.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check did not run; chromium said:\n{dom.stderr[-2000:]}"
    ok, total, errors = int(found[1]), int(found[2]), found[3]
    assert total >= 7 and ok == total, f"{total - ok} of {total} images did not render"
    assert errors == "[]", errors
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = tmp_path / "report.png"
    result = run_chromium(f"--screenshot={shot}", "--window-size=1280,2400", (run / "report.html").as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, result.stderr[-2000:]
    if os.environ.get("PIXELWISE_SCREENSHOT"):
        shutil.copy(shot, os.environ["PIXELWISE_SCREENSHOT"])


def test_reproduce_overview_renders_in_headless_chromium(tmp_path):
    """`pixelwise reproduce --all`'s page: every claim's row links to its experiment's section, every image decodes."""
    import json

    from pixelwise.reproduce import Claim, Experiment, Planned, summarise, write_overview

    (tmp_path / "environment.json").write_text(json.dumps({"cpu": "cpu", "cpu_count": 2, "threads": 2, "torch": "2"}))
    summaries = []
    for name in ("first", "second"):
        exp = Experiment(name, f"{name} experiment", "paper", "miou", 10, runs=(Planned("A", "r"), Planned("B", "r")),
                         claims=(Claim("A", "B", "A > B"),))
        values = {"A": [0.5, 0.6, 0.55], "B": [0.4, 0.45, 0.5]}
        results = {(run, s): {"metrics": {"miou": v}, "steps": 5, "params": 1, "folder": str(tmp_path)}
                   for run, vals in values.items() for s, v in enumerate(vals)}
        summaries.append(summarise(exp, 10, 3, results))
    page = write_overview(tmp_path / "index.html", summaries).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1))
    dom = run_chromium("--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="pixelwise-check">images (\d+)/(\d+) errors (.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check did not run; chromium said:\n{dom.stderr[-2000:]}"
    assert int(found[1]) == int(found[2]) == 2 and found[3] == "[]"  # one seeds figure per experiment
    links = re.findall(r'<a href="#(exp-[a-z-]+)">', dom.stdout)
    assert links == ["exp-first", "exp-second"] and all(f'id="{a}"' in dom.stdout for a in links)
