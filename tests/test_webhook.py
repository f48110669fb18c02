"""`conveyor watch --webhook`: verified pushes queue runs; bad signatures, bad bodies and other branches do not."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import commit_all, git
from conveyor.processes import alive
from conveyor.triggers.webhook import judge

SECRET = "webhook-secret-for-tests"
SHA = "0123456789abcdef0123456789abcdef01234567"
START_TIMEOUT_S = 120.0
FLOOD_TIMEOUT_S = 600.0


def _github(event: str, body: bytes, secret: str | None = SECRET) -> dict[str, str]:
    headers = {"x-github-event": event, "content-type": "application/json"}
    if secret is not None:
        headers["x-hub-signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return headers


def _push(ref: str = "refs/heads/main", after: object = SHA) -> bytes:
    return json.dumps({"ref": ref, "after": after, "repository": {"full_name": "acme/iris"}}).encode()


@pytest.mark.parametrize(("headers", "body", "status", "message"), [
    (_github("push", _push()), _push(), 202, "queued 0123456789"),
    (_github("push", _push(), secret="wrong"), _push(), 401, "missing or bad X-Hub-Signature-256"),
    (_github("push", _push(), secret=None), _push(), 401, "missing or bad X-Hub-Signature-256"),
    (_github("ping", b'{"zen": "hi"}'), b'{"zen": "hi"}', 200, "pong"),
    (_github("push", b"{not json"), b"{not json", 400, "body is not JSON"),
    (_github("push", b'{"after": "x"}'), b'{"after": "x"}', 400, "field 'ref' is missing or not a string"),
    (_github("push", _push(after="$(touch pwned)")), _push(after="$(touch pwned)"), 400,
     "field 'after' is not a full commit id"),
    (_github("push", _push(ref="refs/heads/feature")), _push(ref="refs/heads/feature"), 202,
     "ignored: refs/heads/feature is not refs/heads/main"),
    (_github("push", _push(ref="refs/tags/v1")), _push(ref="refs/tags/v1"), 202,
     "ignored: refs/tags/v1 is not refs/heads/main"),
    (_github("push", _push(after="0" * 40)), _push(after="0" * 40), 202, "ignored: the push deleted the branch"),
    (_github("issues", b"{}"), b"{}", 202, "ignored: event 'issues' is not a push"),
    ({"x-gitlab-event": "Push Hook", "x-gitlab-token": SECRET},
     b'{"ref": "refs/heads/main", "checkout_sha": "' + SHA.encode() + b'"}', 202, "queued 0123456789"),
    ({"x-gitlab-event": "Push Hook", "x-gitlab-token": "nope"}, b"{}", 401, "missing or bad X-Gitlab-Token"),
    ({"x-gitlab-event": "Push Hook"}, b"{}", 401, "missing or bad X-Gitlab-Token"),
    ({}, _push(), 400, "not a GitHub or GitLab event (no X-GitHub-Event or X-Gitlab-Event header)"),
], ids=["github-push", "bad-signature", "no-signature", "ping", "malformed", "no-ref", "shell-in-sha",
        "other-branch", "tag", "branch-deleted", "other-event", "gitlab-push", "gitlab-bad-token",
        "gitlab-no-token", "unknown-sender"])
def test_judge(headers: dict[str, str], body: bytes, status: int, message: str) -> None:
    verdict = judge(headers, body, SECRET, "main")
    assert (verdict.status, verdict.message) == (status, message)
    assert (verdict.commit is not None) == message.startswith("queued")


def _runs(root: Path) -> list[dict[str, object]]:
    records = []
    for path in sorted((root / ".conveyor" / "runs").glob("*/run.json")):
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return records


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`conveyor watch --webhook` on a free loopback port in the iris example: (project, base URL)."""
    from conveyor.scaffold import init_project

    root = tmp_path / "iris"
    init_project(root, "iris")
    config = root / "conveyor.yaml"  # release from another branch: runs on main register and start no server
    config.write_text(config.read_text().replace("  branch: main\n", "  branch: release\n"))
    commit_all(root, "release from the release branch")
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\nanother commit, so HEAD and HEAD~1 both release from elsewhere\n")
    commit_all(root, "another commit")
    env = {**os.environ, "CONVEYOR_WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen([sys.executable, "-m", "conveyor", "watch", "--branch", "main", "--webhook",
                                "127.0.0.1:0"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield root, line.split()[2].rstrip("/")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
        for record in _runs(root):
            pid = int(str(record["pid"]))
            if record["status"] == "running" and alive(pid):
                os.kill(pid, signal.SIGTERM)
        subprocess.run([sys.executable, "-m", "conveyor", "deployments", "stop"], cwd=root, capture_output=True,
                       check=False, timeout=120)  # none should have started; never leave one behind


def _post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["message"]
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())["message"]


@pytest.mark.slow
def test_a_flood_of_pushes_runs_every_one_one_at_a_time_and_bad_ones_queue_nothing(
        receiver: tuple[Path, str]) -> None:
    root, url = receiver
    head = git(root, "rev-parse", "HEAD")
    parent = git(root, "rev-parse", "HEAD~1")
    bad = _push(after=head)
    assert _post(url, _github("push", bad, secret="wrong"), bad)[0] == 401
    assert _post(url, _github("push", b"[]"), b"[]") == (400, "body is not a JSON object")
    other = _push(ref="refs/heads/feature", after=head)
    assert _post(url, _github("push", other), other)[0] == 202
    assert _post(url, _github("ping", b"{}"), b"{}") == (200, "pong")

    commits = [head, parent] * 3
    def send(i_commit: tuple[int, str]) -> tuple[int, str]:
        i, commit = i_commit
        if i % 2:
            body = json.dumps({"ref": "refs/heads/main", "checkout_sha": commit}).encode()
            return _post(url, {"x-gitlab-event": "Push Hook", "x-gitlab-token": SECRET}, body)
        body = _push(after=commit)
        return _post(url, _github("push", body), body)

    with ThreadPoolExecutor(max_workers=len(commits)) as pool:
        answers = list(pool.map(send, enumerate(commits)))
    assert [status for status, _ in answers] == [202] * len(commits)
    deadline = time.monotonic() + FLOOD_TIMEOUT_S
    while time.monotonic() < deadline:
        done = [r for r in _runs(root) if r["status"] != "running"]
        if len(done) >= len(commits):
            break
        time.sleep(0.5)
    records = _runs(root)
    assert len(records) == len(commits)  # every push ran, and nothing else (not the bad ones) did
    assert sorted(str(r["commit"]) for r in records) == sorted(commits)
    assert {(r["trigger"], r["branch"], r["status"]) for r in records} == {("webhook", "main", "passed")}
    spans = sorted((float(str(r["started_at"])), float(str(r["finished_at"]))) for r in records)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # never two at once
