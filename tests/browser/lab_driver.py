"""Helpers of the browser test: find Chromium and Playwright, start JupyterLab the README's way, drive a notebook.

Kept apart from the test so that a human can reuse them from a Python prompt:

    with jupyter_lab(tmp_dir) as lab, chromium(tmp_dir / "profile") as browser:
        page = browser.new_page(); open_notebook(page, lab, "02_flash_attention_llama.ipynb")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURE_CHECKS_JS = (Path(__file__).with_name("figure_checks.js")).read_text(encoding="utf-8")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}  # a laptop screen: the notebook area is what is left beside the sidebar
# Code that shows figures or widgets: the notebooks the browser has something to check in.
SHOWS_SOMETHING = re.compile(r"\.show\(\)|LayerPicker\(|LiveSweepPlot\(|TilingExplainer\(|FigureWidget\(|ipywidgets|interact\(")


def chromium_path() -> str | None:
    """Debian's Chromium (`apt-get install chromium`), or $LABKIT_CHROMIUM."""
    for candidate in (os.environ.get("LABKIT_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def playwright_missing() -> str | None:
    """Why Playwright cannot be used here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"the playwright package is not installed ({err}); pip install -r requirements.txt"
    return None


def why_no_browser() -> str | None:
    """The reason the browser test cannot run on this machine, or None when it can."""
    if chromium_path() is None:
        return ("no Chromium on PATH: `make test` installs it with `apt-get install -y chromium` (needs root); "
                "or point LABKIT_CHROMIUM at a Chromium binary")
    return playwright_missing()


def notebooks_to_open(folder: Path = REPO / "notebooks") -> list[Path]:
    """Every lesson notebook whose code shows a figure or a widget (the rest has nothing for a browser to see)."""
    out = []
    for path in sorted(folder.glob("[0-9]*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if SHOWS_SOMETHING.search(code):
            out.append(path)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def jupyter_lab(work: Path, notebooks: list[Path], env: dict | None = None, timeout: float = 180) -> Iterator[Lab]:
    """JupyterLab as the README starts it (127.0.0.1, a token, a fresh port), on copies of `notebooks` in
    `work/notebooks`, with the project's JupyterLab settings (etc/jupyterlab) and a fresh user settings folder."""
    root = work / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        shutil.copy(nb, root / nb.name)
    user = work / "user-settings" / "@jupyterlab"
    # a fresh user, minus the news prompt; every cell stays in the page so that every figure can be read
    (user / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (user / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (user / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (user / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    token, port = secrets.token_hex(16), _free_port()
    log = work / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.app_settings_dir={REPO / 'etc' / 'jupyterlab'}",
           f"--LabApp.user_settings_dir={work / 'user-settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    full_env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "jupyter-config"), "IPYTHONDIR": str(work / "ipython"),
                "JUPYTER_RUNTIME_DIR": str(work / "jupyter-runtime"),
                **(env or {})}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=root)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{lab.url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start (exit {proc.poll()}):\n{lab.log_tail()}")
            time.sleep(0.5)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Debian Chromium driven by Playwright, with a fresh user-data folder."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()


# -- driving a notebook ---------------------------------------------------------------------------------------

NOTEBOOK_STATE_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter((c) => c.model.type === 'code');
  const busy = cells.filter((c) => (c.promptNode && c.promptNode.textContent.includes('*'))).length;
  const unrun = cells.filter((c) => c.model.executionCount === null).length;
  return {kernel: kernel ? kernel.status : 'none', busy, unrun, cells: cells.length};
}"""


def open_notebook(page, lab: Lab, name: str, timeout_s: float = 180) -> None:
    """Open a notebook and wait until its kernel is idle."""
    page.goto(lab.notebook_url(name))
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=timeout_s * 1000)
    page.evaluate("async () => { await window.jupyterapp.shell.currentWidget.sessionContext.ready; }")
    page.wait_for_function(f"() => ({NOTEBOOK_STATE_JS})()?.kernel === 'idle'", timeout=timeout_s * 1000)


def run_all(page, timeout_s: float) -> dict:
    """Run → Run All Cells, and wait until nothing is queued or running (JupyterLab stops at an error)."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        state = page.evaluate(NOTEBOOK_STATE_JS)
        done = state and state["busy"] == 0 and state["kernel"] == "idle"
        quiet = quiet + 1 if done else 0
        if quiet >= 3:
            return state
    raise TimeoutError(f"the notebook was still running after {timeout_s:.0f} s: {page.evaluate(NOTEBOOK_STATE_JS)}")


def save(page) -> None:
    page.evaluate("async () => { await window.jupyterapp.commands.execute('docmanager:save'); }")


def error_outputs(notebook: dict) -> list[str]:
    """Every error output of a saved notebook: the cell's first line, the exception."""
    out = []
    for i, cell in enumerate(notebook["cells"]):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                first = "".join(cell["source"]).splitlines()[:1]
                out.append(f"cell {i} ({first[0] if first else ''}): {o.get('ename')}: {o.get('evalue')}")
    return out


# A widget output is a JupyterLab output node holding a widget view (or the manager's error text in its place).
WIDGET_OUTPUT = ".jp-OutputArea-output:has(> .jupyter-widgets), .jp-OutputArea-output.jupyter-widgets"
WIDGET_OUTPUTS_JS = """() => Array.from(document.querySelectorAll('%s')).map((el) => ({
    text: el.innerText.slice(0, 200),
    error: el.innerText.includes('Error displaying widget') || !!el.querySelector('.jupyter-widgets-error-widget'),
    loading: el.innerText.includes('Loading widget')}))""" % WIDGET_OUTPUT


def widget_outputs(notebook: dict) -> int:
    """How many widget outputs of a saved notebook should be drawn: top level (not inside an Output widget), and
    when the widget state was saved, only those whose widget is in it (a closed one, such as a finished progress
    bar that does not stay, has nothing to draw)."""
    state = notebook.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    live = state.get("state")
    views = [o["data"]["application/vnd.jupyter.widget-view+json"].get("model_id") for c in notebook["cells"]
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    return sum(1 for m in views if m and (live is None or m in live))


def widget_problems(page, expected: int | None = None) -> list[str]:
    """Widget outputs that did not render: 'Error displaying widget', a widget's error view, or still loading;
    and fewer widget outputs on the page than the notebook holds (`expected`)."""
    shown = page.evaluate(WIDGET_OUTPUTS_JS)
    problems = [f"widget output {i}: {w['text']!r}" for i, w in enumerate(shown) if w["error"] or w["loading"]]
    if expected is not None and len(shown) < expected:
        problems.append(f"the page shows {len(shown)} of the notebook's {expected} widget outputs")
    return problems


def figure_report(page) -> list[dict]:
    """The figure checks of figure_checks.js, one record per plotly figure on the page."""
    return page.evaluate(FIGURE_CHECKS_JS)
