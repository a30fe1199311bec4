"""The lab as the learner sees it: each notebook with figures or widgets runs in JupyterLab in headless Chromium.

For each notebook: open it in JupyterLab (started the README's way), Run All in quick mode, then check what a
learner sees: no error output, every widget drawn, the layer picker answering a preset and refusing a filter
that matches nothing, the live sweep plot growing point by point, the tiling explainer answering its stepper and
a block-size slider, and for every plotly figure (read from the
page) axis ranges near their data, readable tick labels and no subplot past the width it is shown in. The saved
notebook is then reopened on a fresh kernel (widgets must still be drawn) and exported to HTML the way
`make run` does, and the same figure checks run on that page. Screenshots go to build/screenshots/.

Notebooks executed here are not executed again by nbmake in the same session (see conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_driver import (REPO, WIDGET_OUTPUT, chromium, error_outputs, figure_report, jupyter_lab, notebooks_to_open,
                        open_notebook, run_all, save, why_no_browser, widget_outputs, widget_problems)

NOTEBOOKS = notebooks_to_open()
SHOTS = REPO / "build" / "screenshots"
TIMEOUT_S = float(os.environ.get("LABKIT_BROWSER_TIMEOUT", 1200))  # per notebook, as nbmake's
pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One JupyterLab server and one Chromium for every notebook (starting them is most of the fixed cost)."""
    work = tmp_path_factory.mktemp("lab")
    # the kernels render figures as `make run`'s do, so the saved notebooks export to the same HTML
    env = {"LABKIT_PROFILE": os.environ.get("LABKIT_PROFILE", "quick"), "PLOTLY_RENDERER": "plotly_mimetype+notebook"}
    with jupyter_lab(work, NOTEBOOKS, env) as lab, chromium(work / "chromium-profile") as browser:
        yield lab, browser, work


def _fail(what: str, items: list, lab=None) -> None:
    if items:
        tail = f"\n--- jupyter log ---\n{lab.log_tail(15)}" if lab else ""
        pytest.fail(f"{what}:\n  " + "\n  ".join(map(str, items)) + tail, pytrace=False)


def _figure_problems(page, where: str) -> tuple[int, list[str]]:
    figures = figure_report(page)
    problems = [f"{where} figure {f['index']} '{f['title'][:60]}': {p}" for f in figures for p in f["problems"]]
    return len(figures), problems


def _screenshots(page, stem: str) -> None:
    """The top of the notebook, every widget output and every figure, one PNG each."""
    folder = SHOTS / stem
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "00-top.png"))
    widgets = page.locator(WIDGET_OUTPUT)
    for i in range(widgets.count()):
        _shot(widgets.nth(i), folder / f"widget-{i + 1:02d}.png")
    figures = page.locator(".js-plotly-plot")
    for i in range(figures.count()):
        _shot(figures.nth(i), folder / f"figure-{i + 1:02d}.png")


def _shot(element, path: Path) -> None:
    try:
        element.screenshot(path=str(path), timeout=15_000)
    except Exception as err:  # noqa: BLE001  a screenshot that fails is not a finding; say so and go on
        print(f"screenshot {path.name} skipped: {err}", file=sys.stderr)


# -- the widgets -----------------------------------------------------------------------------------------------

COUNT = re.compile(r"(\d+) of (\d+) Linear layers selected")


def _wait_text(locator, predicate, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if predicate(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting; last text: {text!r}")


def check_layer_picker(page, picker) -> list[str]:
    """A preset changes the count; a half-typed regex is not refused; a filter matching nothing is refused on
    Enter; the whole grid is in view (no inner scroll box)."""
    problems = []
    status = picker.locator(".widget-html", has_text=re.compile("Linear layers selected|Refused")).last
    before = COUNT.search(status.inner_text())
    if not before:
        return [f"the picker's status line shows no count: {status.inner_text()!r}"]
    preset = picker.locator("select").first
    target = "all linear" if preset.input_value() != "all linear" else "feed-forward only"
    preset.select_option(label=target)
    after = COUNT.search(_wait_text(status, lambda t: bool(COUNT.search(t)) and COUNT.search(t)[1] != before[1]))
    print(f"picker: {before[0]!r} -> preset {target!r} -> {after[0]!r}")
    grid = picker.locator(".widget-gridbox").first
    inner = grid.evaluate("(g) => [g.scrollHeight, g.clientHeight]")
    if inner[0] > inner[1] + 2:
        problems.append(f"the picker's grid scrolls inside its box ({inner[0]} px of rows in {inner[1]} px)")
    box = picker.locator("input[type='text']").first
    box.click()
    box.press_sequentially(r"layers\.(1", delay=30)  # half of a valid regex
    time.sleep(1.5)
    if "Refused" in status.inner_text():
        problems.append(f"a half-typed filter is refused while typing: {status.inner_text()!r}")
    box.fill("no_such_layer")
    box.press("Enter")
    refused = _wait_text(status, lambda t: "Refused" in t, 30)
    print(f"picker: filter 'no_such_layer' -> {refused[:90]!r}")
    box.fill("")
    box.press("Enter")
    _wait_text(status, lambda t: bool(COUNT.search(t)), 30)
    return problems


POINTS_JS = """(el) => { const gd = el.querySelector('.js-plotly-plot'); if (!gd || !gd.data) return -1;
  return gd.data.filter((t) => (t.mode || '').includes('lines') && (t.mode || '').includes('markers'))
                .reduce((n, t) => n + (t.x ? t.x.length : 0), 0); }"""


WATCH_JS = """(el) => { const gd = el.querySelector('.js-plotly-plot'); window.__labkitCounts = [];
  if (!gd || !gd.on) return false;
  const count = () => (gd.data || []).filter((t) => (t.mode || '').includes('lines') && (t.mode || '').includes('markers'))
                .reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
  gd.on('plotly_afterplot', () => window.__labkitCounts.push(count())); return true; }"""


def check_live_sweep(page, live) -> list[str]:
    """Short lengths, Run sweep: the FigureWidget gains points one by one; the status says when it is done and
    that the cells below still show the earlier run."""
    lengths = live.locator("input[placeholder*='512,1024']").first
    lengths.fill("64,96")  # four points (eager, sdpa at two lengths): enough to see it grow, short on a CPU
    lengths.press("Tab")
    time.sleep(1.0)
    status = live.locator(".widget-html").first
    button = live.get_by_role("button", name=re.compile("Run sweep"))
    # every redraw of the figure records its point count, so a sweep faster than the polling below is still seen
    # growing (polling alone saw [0, 2] for two quick points on an idle machine)
    watching = live.evaluate(WATCH_JS)
    button.click()
    seen, started, deadline = [], False, time.monotonic() + 600
    while time.monotonic() < deadline:
        seen.append(live.evaluate(POINTS_JS))
        started = started or button.is_disabled()
        if ("done:" in status.inner_text() or (started and button.is_enabled())) and len(seen) > 2:
            break  # the widget says it is done, or at least gave its button back
        time.sleep(0.25)
    redraws = page.evaluate("() => window.__labkitCounts || []") if watching else []
    counts = sorted(set(seen) | set(redraws))
    print(f"live sweep: point counts seen after Run sweep: {counts} ({len(redraws)} redraws); status {status.inner_text()[:120]!r}")
    problems = []
    if "done:" not in status.inner_text():
        problems.append(f"the live sweep did not finish: {status.inner_text()!r}")
    if "run them again" not in status.inner_text():
        problems.append("after Run sweep nothing says that the cells below still show the earlier run")
    final = seen[-1]
    if final < 2 or not any(0 < c < final for c in counts):
        problems.append(f"the live plot did not grow point by point (counts seen: {counts})")
    return problems


EXPLAINER_JS = """(el) => { const gd = el.querySelector('.js-plotly-plot'); if (!gd || !gd.layout) return null;
  const shapes = gd.layout.shapes || [];
  return {title: (gd.layout.title && gd.layout.title.text) || '', x0: shapes.length ? shapes[0].x0 : null,
          traces: (gd.data || []).length}; }"""


def check_tiling_explainer(page, explainer) -> list[str]:
    """The stepper moves the outlined tile and the status; a block-size slider rebuilds the steps; the last step
    says the output equals softmax attention."""
    problems = []
    status = explainer.locator(".widget-html", has_text=re.compile("step \\d+ of")).first
    deadline, before = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # a FigureWidget draws after its cell has finished
        before = explainer.evaluate(EXPLAINER_JS)
        if before and before["traces"] >= 4:
            break
        time.sleep(0.5)
    else:
        return [f"the tiling explainer drew no figure within 60 s: {before}"]
    explainer.get_by_role("button", name=re.compile("next tile")).click()
    moved = _wait_text(status, lambda t: "step 2 of" in t, 30)
    after = explainer.evaluate(EXPLAINER_JS)
    print(f"explainer: next tile -> {moved[:60]!r}, outline x0 {before['x0']} -> {after['x0']}, title {after['title'][:50]!r}")
    if after["x0"] == before["x0"] or "tile 2 of" not in after["title"]:
        problems.append(f"'next tile' did not move the figure: {before} -> {after}")
    total = int(re.search(r"step \d+ of (\d+)", moved)[1])
    slider = explainer.locator(".widget-hslider", has_text="Bc").locator(".noUi-handle").first
    slider.focus()
    slider.press("ArrowRight")  # the next key block size: fewer key/value tiles
    rebuilt = _wait_text(status, lambda t: (m := re.search(r"step 1 of (\d+)", t)) is not None and int(m[1]) < total,
                         30)
    print(f"explainer: Bc slider -> {rebuilt[:40]!r} (was {total} tiles)")
    steps = int(re.search(r"step 1 of (\d+)", rebuilt)[1])
    for _ in range(steps - 1):
        explainer.get_by_role("button", name=re.compile("next tile")).click()
    last = _wait_text(status, lambda t: f"step {steps} of {steps}" in t, 30)
    if "✓ last step" not in last:
        problems.append(f"the explainer's last step does not show the check against softmax attention: {last[-160:]!r}")
    return problems


# -- the test --------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_browser(session, notebook: Path):
    lab, browser, work = session
    page = browser.new_page()
    console_errors = []
    page.on("pageerror", lambda err: console_errors.append(str(err)))
    t0 = time.monotonic()
    try:
        open_notebook(page, lab, notebook.name)
        state = run_all(page, TIMEOUT_S)
        ran_s = time.monotonic() - t0
        save(page)
        saved = json.loads((lab.root / notebook.name).read_text(encoding="utf-8"))
        _fail(f"{notebook.name}: error output in the browser", error_outputs(saved), lab)
        _fail(f"{notebook.name}: cells left unrun", [state] if state["unrun"] else [])
        _fail(f"{notebook.name}: widgets not drawn", widget_problems(page, widget_outputs(saved)))

        problems = []
        # found by its filter box: the status text it would be found by changes as the test drives it
        for picker in page.locator(".jp-OutputArea-output", has=page.locator("input[placeholder*='regex']")).all():
            problems += check_layer_picker(page, picker)
        for live in page.locator(".jp-OutputArea-output", has=page.get_by_role("button", name="Run sweep")).all():
            problems += check_live_sweep(page, live)
        for explainer in page.locator(".jp-OutputArea-output",
                                      has=page.get_by_role("button", name=re.compile("next tile"))).all():
            problems += check_tiling_explainer(page, explainer)
        n_figures, figure_problems = _figure_problems(page, "JupyterLab")
        _screenshots(page, notebook.stem)
        save(page)

        # reopen on a fresh kernel, as a learner does the next day
        page.evaluate("async () => { await window.jupyterapp.shell.currentWidget.sessionContext.shutdown(); }")
        page.close()
        page = browser.new_page()
        open_notebook(page, lab, notebook.name)
        page.wait_for_timeout(3000)
        reopened = widget_problems(page, widget_outputs(saved))
        page.screenshot(path=str(SHOTS / notebook.stem / "99-reopened.png"))

        html_figures, html_problems = _static_html(browser, lab.root / notebook.name, work)
        expected = _plotly_outputs(json.loads((lab.root / notebook.name).read_text(encoding="utf-8")))
        print(f"{notebook.name}: ran in {ran_s:.0f} s, whole check {time.monotonic() - t0:.0f} s; "
              f"{n_figures} figures in JupyterLab, {html_figures} of {expected} in the exported HTML")
        _fail(f"{notebook.name}: what a learner sees", problems + figure_problems
              + [f"after reopening: {p}" for p in reopened] + html_problems
              + ([f"the exported HTML draws {html_figures} of the notebook's {expected} figures"]
                 if html_figures != expected else []))
    finally:
        if not page.is_closed():
            page.close()


def _plotly_outputs(notebook: dict) -> int:
    return sum("application/vnd.plotly.v1+json" in o.get("data", {})
               for c in notebook["cells"] for o in c.get("outputs", []))


def _static_html(browser, saved: Path, work: Path) -> tuple[int, list[str]]:
    """Export the executed notebook to HTML as `make run` does, open it, and run the figure checks there."""
    out = work / "html"
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--output-dir", str(out), str(saved)],
                   check=True, capture_output=True)
    page = browser.new_page()
    try:
        page.goto((out / saved.with_suffix(".html").name).as_uri(), wait_until="load")
        page.wait_for_timeout(2000)
        n, problems = _figure_problems(page, "exported HTML")
        page.screenshot(path=str(SHOTS / saved.stem / "98-html-top.png"))
        return n, problems
    finally:
        page.close()
