"""`conveyor report`: what a reviewer reads, in Markdown, HTML, JUnit XML, and one PR comment kept up to date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.etree import ElementTree as ET

import pytest

from conftest import commit_all
from conveyor.report.github import PullRequest, pull_request_from, upsert_comment
from conveyor.report.junit import junit_xml
from conveyor.report.render import COMMENT_MARKER
from conveyor.runs import Run, Step
from conveyor.scaffold import init_project

PNG = b"\x89PNG\r\n\x1a\n"


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris example after two passing runs: v1, then v2 trained with another C (so a param changed)."""
    root = tmp_path_factory.mktemp("report") / "iris"
    with pytest.MonkeyPatch.context() as patch:  # the autouse git identity is per test, this fixture per module
        for role in ("AUTHOR", "COMMITTER"):
            patch.setenv(f"GIT_{role}_NAME", "Conveyor Tests")
            patch.setenv(f"GIT_{role}_EMAIL", "tests@conveyor.local")
        init_project(root, "iris")
        assert _cli(root, "run", "--no-deploy").returncode == 0
        params = root / "params.yaml"
        params.write_text(params.read_text().replace("C: 1.0", "C: 0.5"))
        commit_all(root, "weaker regularisation")
        done = _cli(root, "run", "--no-deploy")
        assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.mark.slow
def test_markdown_shows_gates_candidate_vs_production_changes_and_steps(project: Path) -> None:
    done = _cli(project, "report")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "passed · commit" in text and "trigger manual" in text
    assert "| accuracy >= 0.9 | 0.955556 | >= 0.9 | pass |" in text
    assert "#### Candidate iris@2 vs production iris@1" in text
    assert "| accuracy | 0.955556 | 0.955556 | 0 |" in text
    assert "| train.C | 1 | 0.5 |" in text  # the param that changed, and only that one
    assert "train.max_iter" not in text
    steps = text.split("#### Steps", 1)[1]
    for step in ("stage:prepare | cached", "stage:train | ran", "tests | ran", "gates | passed", "promote | ran"):
        assert step in steps


@pytest.mark.slow
def test_html_page_with_metric_and_confusion_matrix_plots(project: Path, tmp_path: Path) -> None:
    from conveyor.report.build import build
    from conveyor.report.render import write
    from conveyor.registry import Registry
    from conveyor.runs import RunStore

    matrix = tmp_path / "confusion_matrix.json"
    matrix.write_text(json.dumps({"labels": ["setosa", "versicolor", "virginica"],
                                  "matrix": [[15, 0, 0], [0, 14, 1], [0, 1, 14]]}))
    registry = Registry(f"sqlite:///{project / '.conveyor' / 'registry.db'}", create=False)
    try:
        data = build(project, "iris", RunStore(project / ".conveyor" / "runs"), None, registry,
                     confusion_matrix=matrix)
    finally:
        registry.close()
    assert [version for version, _ in data.history] == [1, 2]
    page = write(data, tmp_path / "out", "html")
    assert page.name == "report.html"
    html = page.read_text()
    assert '<img src="metric-history.png"' in html and '<img src="confusion-matrix.png"' in html
    assert "<td>train.C</td><td>1</td><td>0.5</td>" in html
    for png in ("metric-history.png", "confusion-matrix.png"):
        assert (tmp_path / "out" / png).read_bytes().startswith(PNG)


@pytest.mark.slow
def test_output_directory_and_junit_for_the_ci_engines(project: Path, tmp_path: Path) -> None:
    done = _cli(project, "report", "--output", str(tmp_path / "r"), "--junit", str(tmp_path / "r" / "junit.xml"))
    assert done.returncode == 0, done.stderr
    assert "![Metrics across versions](metric-history.png)" in (tmp_path / "r" / "report.md").read_text()
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("7", "0")


def test_junit_marks_failed_gates_and_skipped_steps() -> None:
    run = Run(id="r1", commit="c", branch="main", dirty=False, trigger="ci", started_at=0.0, pid=1, status="failed")
    run.steps = [
        Step("stage:train", "stage", status="ran", duration_s=1.5),
        Step("gates", "gates", status="failed", data={"results": [
            {"gate": "accuracy >= 0.99", "passed": False, "detail": "accuracy is 0.95, below 0.99"},
            {"gate": "f1 >= 0.5", "passed": True, "detail": ""}]}),
        Step("promote", "promote", status="skipped", summary="gates failed"),
    ]
    suite = ET.fromstring(junit_xml(run).split("\n", 1)[1])
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    failed = suite.find("testcase[@name='accuracy >= 0.99']/failure")
    assert failed is not None and failed.get("message") == "accuracy is 0.95, below 0.99"


class _StandInGitHub:
    """A local HTTP server answering the few REST endpoints a PR comment needs, 100 per page."""

    TOKEN = "ghs_s3cr3t-token-value"

    def __init__(self, existing: int) -> None:
        self.comments: list[dict[str, Any]] = [{"id": i + 1, "body": f"review comment {i + 1}"} for i in range(existing)]
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, link: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if link:
                    self.send_header("Link", link)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                stand_in.requests.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {stand_in.TOKEN}":
                    return self._reply(401, {"message": "Bad credentials"})
                url = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                if url.path == "/repos/acme/iris/issues/7/comments" and method == "GET":
                    query = parse_qs(url.query)
                    per_page, page = int(query["per_page"][0]), int(query.get("page", ["1"])[0])
                    chunk = stand_in.comments[(page - 1) * per_page:page * per_page]
                    more = page * per_page < len(stand_in.comments)
                    link = (f'<http://{self.headers["Host"]}{url.path}?per_page={per_page}&page={page + 1}>; '
                            'rel="next"') if more else None
                    return self._reply(200, chunk, link)
                if url.path == "/repos/acme/iris/issues/7/comments" and method == "POST":
                    comment = {"id": 1000 + len(stand_in.comments), "body": body["body"],
                               "html_url": "https://github.invalid/acme/iris/pull/7#c"}
                    stand_in.comments.append(comment)
                    return self._reply(201, comment)
                if url.path.startswith("/repos/acme/iris/issues/comments/") and method == "PATCH":
                    comment_id = int(url.path.rsplit("/", 1)[1])
                    comment = next(c for c in stand_in.comments if c["id"] == comment_id)
                    comment["body"] = body["body"]
                    return self._reply(200, comment)
                return self._reply(404, {"message": "Not Found"})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ours(self) -> list[dict[str, Any]]:
        return [c for c in self.comments if str(c["body"]).startswith(COMMENT_MARKER)]


@pytest.fixture
def github() -> Iterator[_StandInGitHub]:
    stand_in = _StandInGitHub(existing=130)
    stand_in.thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()
        stand_in.thread.join(timeout=10)


def test_one_comment_per_pull_request_across_pushes_with_stand_in_github(github: _StandInGitHub) -> None:
    pr = PullRequest(github.url, "acme/iris", 7)
    first = upsert_comment(pr, github.TOKEN, "### run 1 passed")
    assert first.action == "created"
    assert [m for m, _ in github.requests] == ["GET", "GET", "POST"]  # both pages read before creating
    assert "page=2" in github.requests[1][1]
    second = upsert_comment(pr, github.TOKEN, "### run 2 failed")
    assert (second.action, second.comment_id) == ("updated", first.comment_id)
    assert len(github.comments) == 131 and len(github.ours()) == 1
    assert github.ours()[0]["body"] == f"{COMMENT_MARKER}\n### run 2 failed"


def test_pr_comment_from_the_cli_never_prints_the_token_with_stand_in_github(
        project: Path, github: _StandInGitHub, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7}}))
    env = {**os.environ, "GITHUB_API_URL": github.url, "GITHUB_REPOSITORY": "acme/iris",
           "GITHUB_EVENT_PATH": str(event), "GITHUB_TOKEN": github.TOKEN}
    for expected in ("created", "updated"):
        done = _cli(project, "report", "--github-comment", env=env)
        assert done.returncode == 0, done.stderr
        assert f"{expected} comment" in done.stdout and "acme/iris#7" in done.stdout
        assert github.TOKEN not in done.stdout + done.stderr
    (ours,) = github.ours()
    assert "#### Candidate iris@2 vs production iris@1" in ours["body"]
    bad = _cli(project, "report", "--github-comment", env={**env, "GITHUB_TOKEN": "wrong-token"})
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: GitHub answered 401") and "wrong-token" not in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_run_that_is_not_for_a_pull_request_says_so() -> None:
    from conveyor.exceptions import ConveyorError

    assert pull_request_from({"GITHUB_REPOSITORY": "a/b", "GITHUB_REF": "refs/pull/12/merge"}, None).number == 12
    with pytest.raises(ConveyorError, match="not for a pull request"):
        pull_request_from({"GITHUB_REPOSITORY": "a/b", "GITHUB_REF": "refs/heads/main"}, {"ref": "x"})
