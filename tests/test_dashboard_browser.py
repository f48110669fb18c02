"""The dashboard in a real headless browser: Debian's chromium through chromedriver (selenium).

The iris example runs twice (a passing run, then a change that fails a gate);
the browser logs in with the token, clicks from the runs list to the failed
gate, to the model's chart, to a version's lineage and to the deployments,
checking what each page says, and saves a screenshot of each under
`test-artifacts/dashboard/`. The browser starts once for the module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import commit_all, git
from dashboard_support import UI, start_ui

from conveyor.scaffold import init_project

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
WAIT_S = 60.0
"""Generous: page loads and the live refresh on a busy machine."""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1100"]


SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conveyor(root: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    process = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                             timeout=600, env={**os.environ, **env}, check=False)
    if check and process.returncode != 0:
        raise AssertionError(f"conveyor {' '.join(args)} exited {process.returncode}\n{process.stdout}\n{process.stderr}")
    return process


@dataclass
class Example:
    root: Path
    first_commit: str
    failed_run: str
    ui: UI
    token: str
    port: int


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    """The iris example after a passing and a gate-failing run, its dashboard running with --auth."""
    root = tmp_path_factory.mktemp("browser") / "iris"
    port = _free_port()
    env = {"CONVEYOR_PORT": str(port), "CONVEYOR_REGISTRY_URL": "",
           **{f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER")
              for key, value in (("NAME", "Conveyor Tests"), ("EMAIL", "tests@conveyor.local"))}}
    with pytest.MonkeyPatch.context() as patch:  # a git identity for the commits, on a machine without one
        for key, value in env.items():
            patch.setenv(key, value)
        yield from _example(root, env, port)


def _example(root: Path, env: dict[str, str], port: int) -> Iterator[Example]:
    init_project(root, "iris")
    ui: UI | None = None
    try:
        _conveyor(root, env, "run")
        first = git(root, "rev-parse", "HEAD")
        params = root / "params.yaml"
        params.write_text(params.read_text().replace("C: 1.0", "C: 0.0001"))
        commit_all(root, "a much weaker model")
        failed = _conveyor(root, env, "run", "--json", check=False)
        assert failed.returncode == 1, failed.stderr
        failed_run = json.loads(failed.stdout)["id"]
        ui = start_ui(root, "--auth", env=env)
        yield Example(root, first, failed_run, ui, (root / ".conveyor" / "ui.token").read_text().strip(), port)
    finally:
        if ui is not None:
            ui.stop()
        _conveyor(root, env, "deployments", "stop", check=False)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium, driven by Debian's chromedriver; never a downloaded browser."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_click_from_runs_to_failed_gate_chart_lineage_and_deployments(example: Example, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)

    # Not logged in: the dashboard asks for the token, then goes where it was asked to.
    browser.get(example.ui.url + "/runs")
    wait.until(seen.presence_of_element_located((By.ID, "token")))
    _shot(browser, "0-login")
    browser.find_element(By.ID, "token").send_keys(example.token)
    browser.find_element(By.ID, "login").click()
    wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "table.runs")))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
    assert [row.get_attribute("data-run") for row in rows][0] == example.failed_run
    assert "failed" in rows[0].text and "passed" in rows[1].text
    _shot(browser, "1-runs")

    # The failed run: its gate table says which gate failed, actual against required.
    rows[0].find_element(By.LINK_TEXT, example.failed_run).click()
    table = wait.until(seen.presence_of_element_located((By.ID, "gate-table")))
    failing = table.find_elements(By.CSS_SELECTOR, "tr.gate.fail")
    assert len(failing) == 2
    assert "accuracy >= 0.9" in failing[0].text and "FAIL" in failing[0].text and ">= 0.9" in failing[0].text
    assert "gates failed" in browser.find_element(By.ID, "run-error").text
    _shot(browser, "2-failed-gate")

    # The model: a chart per metric with production marked (v1: the failed candidate was never registered).
    browser.find_element(By.ID, "nav-models").click()
    wait.until(seen.presence_of_element_located((By.LINK_TEXT, "iris"))).click()
    chart = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#chart-accuracy svg.chart")))
    assert "production v1" in chart.text
    _shot(browser, "3-model-chart")

    # A version's lineage: commit → data → model → image → deployments.
    browser.find_element(By.CSS_SELECTOR, "table.versions a[href='/models/iris/1']").click()
    lineage = wait.until(seen.presence_of_element_located((By.ID, "lineage")))
    assert example.first_commit in lineage.text
    assert "data/iris.csv" in lineage.text and "not packaged" in lineage.text
    assert "local http://127.0.0.1:" in lineage.text  # v1 is what the local server serves
    _shot(browser, "4-lineage")

    # Deployments: what is live, its traffic, the alias history, and numbers the script refreshes.
    browser.find_element(By.ID, "nav-deployments").click()
    live = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#live-table tr[data-live-url]")))
    assert "iris@1" in live.text and "stable v1: 100%" in live.text
    wait.until(lambda driver: live.get_attribute("data-refreshed"))  # live.js fetched /api/deployments/live
    # Traffic after the page loaded shows up in the numbers at the script's next refresh.
    for _ in range(20):
        answer = httpx.post(f"http://127.0.0.1:{example.port}/predict", json={"rows": [SETOSA]}, timeout=30)
        assert answer.status_code == 200
    p99 = live.find_element(By.CSS_SELECTOR, '[data-field="p99_ms"]')
    wait.until(lambda driver: p99.text.endswith(" ms"))
    assert live.find_element(By.CSS_SELECTOR, '[data-field="error_rate"]').text == "0%"
    history = browser.find_element(By.CSS_SELECTOR, "table.history")
    assert "line" in history.text and "gates passed in run" in history.text
    _shot(browser, "5-deployments")
    assert not [entry for entry in browser.get_log("browser") if entry.get("level") == "SEVERE"]
    saved = {p.name for p in ARTIFACTS.glob("*.png")}
    assert {"1-runs.png", "2-failed-gate.png", "3-model-chart.png", "4-lineage.png", "5-deployments.png"} <= saved

