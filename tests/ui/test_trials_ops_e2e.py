"""End to end: the Trials and Operations pages of `medtwin demo`, in headless Chromium.

A clinician runs a short trial (four adults, one day): the progress bar advances live to
done, the AGP and CVGA plots and the outcome table show, the CSV downloads with one row a
subject, and the run is in the audit trail. A researcher runs the treatment-centre model
under a scenario (waits with 95% CIs, utilisation) and the ED + ward model with its occupancy
forecast. A patient is refused. No request leaves 127.0.0.1. Screenshots go to tmp_path.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ZONE = "Europe/Paris"  # the browser's; times on the pages are shown in it
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium is not installed")
# records each value the progress bar takes, from before the click to the end of the run
WATCH_PROGRESS = """(testid) => {
  window.__progress = [];
  const bar = document.querySelector(`[data-testid="${testid}"]`);
  new MutationObserver(() => window.__progress.push(Number(bar.getAttribute('aria-valuenow'))))
    .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
}"""


@pytest.fixture(scope="module")
def demo(demo_launcher):
    """A small live demo (two patients) in a subprocess; yields (base URL, {user: password})."""
    d = demo_launcher(patients=2, duration=300)
    return d.base, d.logins


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _sign_in(browser, base: str, user: str, password: str, requests: list[str]):  # noqa: ANN202
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True,
                            timezone_id=ZONE)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{base}/ui/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/(?!login)"), timeout=15000)
    # the first page asks the browser for its time zone, then reloads once in it
    page.wait_for_selector(f"[data-zone]:has-text('{ZONE}')", timeout=15000)
    return page


def _table(page, testid: str) -> list[list[str]]:
    rows = page.locator(f'[data-testid="{testid}"] tbody tr')
    return [[c.strip() for c in r.locator("td").all_inner_texts()] for r in rows.all()]


def _local_only(requests: list[str]) -> None:
    hosts = {urlparse(u).hostname for u in requests if u.startswith(("http", "ws"))}
    assert hosts == {"127.0.0.1"}, hosts


def test_the_pages_need_a_session(demo):
    base, _ = demo
    with httpx.Client(base_url=base) as c:
        for path in ("/ui/trials", "/ui/ops"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code in (302, 303, 307), path
            assert r.headers["location"].endswith("/ui/login")


@needs_chromium
def test_clinician_runs_a_trial_sees_the_plots_and_downloads_the_csv(demo, browser, tmp_path):
    base, logins = demo
    requests: list[str] = []
    page = _sign_in(browser, base, "dr.north", logins["dr.north"], requests)
    page.get_by_role("link", name="Trials").click()
    page.wait_for_selector('[data-testid="run-trial"]')
    # an invalid number of days says what to do, and nothing runs
    page.get_by_label("Subjects").fill("adult#001, adult#002, adult#003, adult#004")
    page.get_by_label("Days").fill("0")
    page.get_by_role("button", name="Run trial").click()
    status = page.get_by_test_id("trial-status")
    page.wait_for_function("() => document.querySelector('[data-testid=\"trial-status\"]')"
                           ".innerText.includes('Cannot run')")
    assert "days: must be more than 0" in status.inner_text()
    assert page.get_by_test_id("outcome-table").count() == 0
    assert "4 subject(s): adult#001, adult#002, adult#003 … adult#004" in \
        page.get_by_test_id("trial-selection").inner_text()
    # a valid one runs, with the progress bar moving live to done
    page.get_by_label("Days").fill("1")
    page.evaluate(WATCH_PROGRESS, "trial-progress")
    page.get_by_role("button", name="Run trial").click()
    page.wait_for_selector('[data-testid="outcome-table"]', timeout=90000)
    assert status.inner_text().startswith("Done: 4 of 4 subjects")
    seen = page.evaluate("window.__progress")
    assert seen[-1] == 1 and len({v for v in seen if 0 < v < 1}) >= 1, seen
    assert seen == sorted(seen), seen
    # the plots and the table
    page.wait_for_selector('[data-testid="agp-plot"] .main-svg')
    page.wait_for_selector('[data-testid="cvga-plot"] .main-svg')
    assert "Ambulatory glucose profile" in page.get_by_test_id("agp-plot").inner_text()
    assert "CVGA" in page.get_by_test_id("cvga-plot").inner_text()
    rows = _table(page, "outcome-table")
    assert [r[0] for r in rows] == ["adult#001", "adult#002", "adult#003", "adult#004"]
    summary = page.get_by_test_id("trial-summary").inner_text()
    assert summary.startswith("4 subjects × 1 day(s), controller pid, seed 0: mean glucose")
    page.screenshot(path=str(tmp_path / "trials.png"), full_page=True)
    # the CSV: one row a subject, every outcome column, the numbers the table shows
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename == "trial-pid-4subjects-1d-seed0.csv"
    csv = pd.read_csv(io.BytesIO(Path(download.path()).read_bytes()), index_col=0)
    assert list(csv.index) == ["adult#001", "adult#002", "adult#003", "adult#004"]
    assert {"mean [mg/dL]", "time 70-180 [%]", "cvga zone", "gmi [%]"} <= set(csv.columns)
    headers = page.locator('[data-testid="outcome-table"] thead th').all_inner_texts()
    col = next(i for i, h in enumerate(headers) if "time 70-180 [%]" in h)  # + sort icon
    for r, (_, full) in zip(rows, csv.iterrows(), strict=True):
        assert float(r[col]) == pytest.approx(full["time 70-180 [%]"], abs=0.06)
    page.close()
    _local_only(requests)
    # the run and the download are in the audit trail, as the API's would be
    with httpx.Client(base_url=base) as c:
        token = c.post("/auth/token", data={"username": "admin",
                                            "password": logins["admin"]}).json()["access_token"]
        text = c.get("/audit/AuditEvent", params={"count": 5000},
                     headers={"Authorization": f"Bearer {token}"}).text
    assert re.search(r"trial:[0-9a-f]{12}", text) and "clinician:dr.north" in text


@needs_chromium
def test_researcher_runs_operations_with_a_scenario_and_a_forecast(demo, browser, tmp_path):
    base, logins = demo
    requests: list[str] = []
    page = _sign_in(browser, base, "researcher", logins["researcher"], requests)
    page.goto(f"{base}/ui/ops")
    page.wait_for_selector('[data-testid="run-ops"]')
    page.get_by_test_id("ops-scenario").click()
    page.get_by_role("option", name=re.compile(r"^\+1 exam_rooms")).click()
    page.get_by_label("Replications").fill("5")
    page.evaluate(WATCH_PROGRESS, "ops-progress")
    page.get_by_role("button", name="Run replications").click()
    page.wait_for_selector('[data-testid="wait-table"]', timeout=90000)
    status = page.get_by_test_id("ops-status").inner_text()
    assert status.startswith("Done: 5 of 5 replications"), status
    seen = page.evaluate("window.__progress")
    assert seen[-1] == 1 and len({v for v in seen if 0 < v < 1}) >= 2, seen
    assert "scenario '+1 exam_rooms (3 → 4)': 5 replications" in \
        page.get_by_test_id("ops-summary").inner_text()
    waits = _table(page, "wait-table")
    assert [r[0] for r in waits] == ["triage", "registration", "examination",
                                     "non_trauma_treatment", "stabilisation", "trauma_treatment"]
    for name, mean, low, high, waited, n in waits:
        assert float(low) <= float(mean) <= float(high), name
        assert 0 <= float(waited) <= 100 and n == "5"
    util = {r[0]: float(r[1]) for r in _table(page, "util-table")}
    assert set(util) >= {"exam_rooms", "triage_bays"} and all(0 < u <= 100 for u in
                                                                 util.values())
    assert page.locator(".js-plotly-plot").count() == 3  # waits, utilisation, over the day
    assert page.get_by_text("names no census activity").count() == 1
    page.screenshot(path=str(tmp_path / "ops-nelson.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download KPIs (CSV)").click()
    kpis = pd.read_csv(io.BytesIO(Path(info.value.path()).read_bytes()), index_col=0)
    assert list(kpis.columns) == ["mean", "sd", "n", "ci_low", "ci_high"]
    assert (kpis["n"] == 5).all() and "wait:examination" in kpis.index
    # the ED + ward model forecasts ward occupancy from the store's census
    page.get_by_test_id("ops-model").click()
    page.get_by_role("option", name="ed_inpatient").click()
    page.get_by_label("Replications").fill("2")
    page.get_by_label("Forecast hours").fill("12")
    page.get_by_role("button", name="Run replications").click()
    page.wait_for_selector('[data-testid="forecast-summary"], [data-testid="forecast-empty"]',
                           timeout=90000)
    assert page.get_by_test_id("forecast-summary").count() == 1
    forecast = page.get_by_test_id("forecast-summary").inner_text()
    assert re.search(r"Census \d+ in 'ward_stay' \(capacity 150\)", forecast), forecast
    assert re.search(r"census at \d\d \w{3} \d\d:\d\d:\d\d CES?T\.", forecast), forecast
    page.wait_for_selector('[data-testid="forecast-plot"] .main-svg')
    page.screenshot(path=str(tmp_path / "ops-forecast.png"), full_page=True)
    page.close()
    _local_only(requests)


@needs_chromium
def test_a_patient_may_not_run_simulations(demo, browser):
    base, logins = demo
    page = _sign_in(browser, base, "patient", logins["patient"], [])
    for path in ("/ui/trials", "/ui/ops"):
        page.goto(f"{base}{path}")
        page.wait_for_selector("text=clinicians, researchers and admins")
        assert page.get_by_role("button", name=re.compile("Run")).count() == 0
    assert page.get_by_role("link", name="Trials").count() == 0
    page.close()
