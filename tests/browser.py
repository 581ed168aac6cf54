"""Open an HTML file in headless Chromium and report the JavaScript errors it raised.

How errors are caught: a small script is injected at the very start of a copy of the page. It
records uncaught exceptions (window "error", which with capture also sees resources that fail to
load), unhandled promise rejections and every console.error call, and writes them as JSON into a
<pre id="__js_errors__"> element. Chromium's --dump-dom prints the DOM once the page has loaded
(and the virtual time budget has run out), and we read the element back. A missing element means
the capture script itself never ran, which counts as a failure too. Chromium's own stderr log is
searched for "Uncaught" lines as a second source.

Usage in tests:
    from browser import CHROMIUM, open_page, skip_without_chromium
    result = open_page(path)        # result.errors: list[str], result.dom: str
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ERRORS_ID = "__js_errors__"

CAPTURE = """<script>(function () {
  var errors = [];
  function flush() {
    if (!document.body) return;
    var el = document.getElementById("%(id)s");
    if (!el) { el = document.createElement("pre"); el.id = "%(id)s"; el.style.display = "none";
               document.body.appendChild(el); }
    el.textContent = JSON.stringify(errors);
  }
  function record(kind, message) { errors.push(kind + ": " + message); flush(); }
  window.addEventListener("error", function (e) {
    var where = e.filename ? " at " + e.filename + ":" + e.lineno : "";
    var what = e.message || ("failed to load " + (e.target && (e.target.src || e.target.href) || "a resource"));
    record("error", what + where);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { record("unhandledrejection", String(e.reason)); });
  var original = console.error;
  console.error = function () {
    record("console.error", Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", flush);
  window.addEventListener("load", flush);
})();</script>""" % {"id": ERRORS_ID}


def skip_without_chromium():
    return pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless browser tests need {CHROMIUM}")


@dataclass
class PageResult:
    errors: list[str]
    dom: str
    stderr: str


def _inject(html: str) -> str:
    m = re.search(r"<head[^>]*>", html, flags=re.IGNORECASE)
    if m:
        return html[: m.end()] + CAPTURE + html[m.end():]
    return CAPTURE + html


def open_page(path, timeout: float = 90.0, budget_ms: int = 5000) -> PageResult:
    """Load `path` in headless Chromium; return the errors its scripts raised and the final DOM."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        page = Path(tmp) / path.name
        page.write_text(_inject(path.read_text(encoding="utf-8")), encoding="utf-8")
        profile = Path(tmp) / "profile"
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--mute-audio",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri(),
        ]
        env = {**os.environ, "HOME": tmp}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    dom = proc.stdout
    m = re.search(r'<pre id="%s"[^>]*>(.*?)</pre>' % ERRORS_ID, dom, flags=re.DOTALL)
    if proc.returncode != 0 or not dom.strip():
        errors = [f"chromium exited {proc.returncode} without a DOM: {proc.stderr[-2000:]}"]
    elif m is None:
        errors = ["the error-capture script did not run (no error element in the DOM)"]
    else:
        import html as html_lib

        errors = list(json.loads(html_lib.unescape(m.group(1)) or "[]"))
    errors += [line for line in proc.stderr.splitlines() if "Uncaught" in line and line not in errors]
    return PageResult(errors=errors, dom=dom, stderr=proc.stderr)


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None
