"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real API server: with stored results every plot draws the stored points, filters change
what is drawn, a job page shows its curve and trials; without results it shows empty
states. Any console error fails the test. Screenshots go to artifacts/ (not committed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capacity_service.store.migrate import upgrade
from tests.api.conftest import start_server, stop

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


class Page:
    """A dashboard page that records console errors and failed requests."""

    def __init__(self, context: Any, base: str) -> None:
        self.page = context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, hash_part: str = "") -> None:
        before = None
        if "/dashboard" in self.page.url:  # a hash change renders without a reload
            before = self.page.evaluate("document.body.dataset.rendered")
        self.page.goto(f"{self.base}/dashboard{hash_part}")
        self.rendered(before)

    def rendered(self, after: str | None = None) -> str:
        """Wait for the app's next render (body[data-rendered] set, or changed)."""
        self.page.wait_for_function(
            "after => document.body.dataset.rendered && document.body.dataset.rendered !== after",
            arg=after or "",
            timeout=20_000,
        )
        return str(self.page.evaluate("document.body.dataset.rendered"))

    def traces(self, plot: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.page.evaluate(
            "id => (document.getElementById(id).data || []).map(t => ({name: t.name, "
            "x: Array.from(t.x || []), y: Array.from(t.y || []), mode: t.mode}))",
            plot,
        )
        return data

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture(scope="module")
def served(results_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = start_server(results_database, tmp_path_factory.mktemp("s") / "log")
    yield base
    stop(process)


def test_overview_draws_the_stored_results(browser_context: Any, served: str) -> None:
    curves = httpx.get(f"{served}/v1/curves").json()["items"]
    sweeps = httpx.get(f"{served}/v1/sweeps").json()["items"]
    page = Page(browser_context, served)
    page.open()

    points = [t for t in page.traces("plot-capacity-params") if t["mode"] == "markers"]
    drawn = sorted((x, y) for t in points for x, y in zip(t["x"], t["y"], strict=True))
    assert drawn == sorted((c["params"], c["capacity_bits"]) for c in curves)
    names = [t["name"] for t in page.traces("plot-capacity-params")]
    assert any("fcdnn fit" in n for n in names) and any("3.7" in n for n in names)

    compared = page.traces("plot-compare")
    assert len(compared) == min(3, len(curves))
    first = next(c for c in curves if f"job {c['job_id']} " in compared[0]["name"])
    assert compared[0]["x"] == [p["n"] for p in first["curve"]]

    quant = page.traces("plot-quant")
    retrained = [t for t in quant if t["name"].endswith("retrained")]
    expected = [p["accuracy_retrained"] for p in sweeps[0]["curves"][0]["points"]]
    assert retrained[0]["y"] == pytest.approx(expected)
    assert page.page.locator("#jobs-table tbody tr").count() == 4
    page.screenshot("dashboard-overview.png")
    assert page.errors == []


def test_filters_change_what_is_drawn(browser_context: Any, served: str) -> None:
    page = Page(browser_context, served)
    page.open()
    before = page.page.evaluate("document.body.dataset.rendered")
    page.page.select_option("#filter-kind", "rnn")
    page.page.click("#filters button[type=submit]")
    page.rendered(before)
    kinds = {t["name"] for t in page.traces("plot-capacity-params") if t["mode"] == "markers"}
    assert kinds == {"rnn"}
    assert page.page.locator("#results-table tbody tr").count() == 1
    assert page.page.is_visible("#empty-sweeps")  # no rnn sweeps stored

    before = page.page.evaluate("document.body.dataset.rendered")
    page.page.select_option("#filter-kind", "")
    page.page.fill("#filter-max", "100")
    page.page.click("#filters button[type=submit]")
    page.rendered(before)
    params = [
        x for t in page.traces("plot-capacity-params") if t["mode"] == "markers" for x in t["x"]
    ]
    assert params and max(params) <= 100
    assert page.errors == []


def test_job_page_shows_curve_and_trials(browser_context: Any, served: str) -> None:
    job = httpx.get(f"{served}/v1/curves").json()["items"][0]
    result = httpx.get(f"{served}/v1/jobs/{job['job_id']}/result").json()
    page = Page(browser_context, served)
    page.open(f"#/jobs/{job['job_id']}")
    traces = page.traces("plot-job")
    assert traces[0]["x"] == [p["n"] for p in result["curve"]]
    assert traces[2]["x"] == [result["best"]["n"]]  # the maximum, marked
    regions = page.page.evaluate(
        "document.getElementById('plot-job').layout.annotations.map(a => a.text)"
    )
    assert "over-parameterized" in regions or "under-parameterized" in regions
    assert page.page.locator("#trials-table tbody tr").count() == len(result["trials"])
    page.screenshot("dashboard-job.png")

    sweep = httpx.get(f"{served}/v1/sweeps").json()["items"][0]
    page.open(f"#/jobs/{sweep['job_id']}")
    drawn = {t["name"]: t for t in page.traces("plot-job")}
    curve = sweep["curves"][0]
    retrained = drawn[f"half {curve['n']} retrained"]
    assert retrained["x"] == [8, 4, 2]
    assert retrained["y"] == pytest.approx([p["accuracy_retrained"] for p in curve["points"]])
    boundary = curve["precision_boundary"]
    assert (f"half {curve['n']} boundary: {boundary} bits" in drawn) == (boundary is not None)
    assert page.errors == []


def test_empty_store_shows_empty_states(browser_context: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    process, base = start_server(url, tmp_path / "log")
    try:
        page = Page(browser_context, base)
        page.open()
        for empty in ("#empty-capacity", "#empty-sweeps", "#empty-jobs"):
            assert page.page.is_visible(empty)
        assert not page.page.is_visible("#error")
        page.screenshot("dashboard-empty.png")
        assert page.errors == []
    finally:
        stop(process)


def test_plotly_is_served_by_the_app(served: str) -> None:
    script = httpx.get(f"{served}/dashboard/static/plotly.min.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000
    assert shutil.which("chromium") or Path(CHROMIUM).exists()


def test_running_jobs_refresh_live(browser_context: Any, tmp_path: Path) -> None:
    from capacity_service.store.queries import Store
    from capacity_service.store.records import ResultSummary
    from capacity_service.store.vocabulary import JobState
    from tests.factories import capacity_result

    url = f"sqlite:///{tmp_path / 'live.db'}"
    upgrade(url)
    store = Store(url)
    job, _ = store.submit("capacity", {"model": {"kind": "fcdnn", "width": 8}}, "fcdnn")
    process, base = start_server(url, tmp_path / "log")
    try:
        page = Page(browser_context, base)
        page.open()
        state = page.page.locator("#jobs-table tbody tr td").nth(3)
        assert state.inner_text() == "queued"
        store.claim("w", 60)
        store.set_progress(job.id, "w", {"stage": "bayes", "trials_done": 7, "best_bits": 12.5})
        page.page.wait_for_function(
            "() => document.querySelector('#jobs-table tbody tr').innerText.includes('7 trials')",
            timeout=10_000,
        )
        store.finish(
            job.id,
            "w",
            JobState.SUCCEEDED,
            result=ResultSummary(
                result=capacity_result(90, 0.14),
                params=90,
                capacity_bits=12.5,
                bits_per_param=0.14,
                code_version="test",
            ),
        )
        page.page.wait_for_function(
            "() => document.querySelector('#jobs-table tbody tr').innerText.includes('succeeded')",
            timeout=10_000,
        )
        assert page.errors == []
    finally:
        stop(process)
        store.close()
