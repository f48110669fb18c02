"""One Conveyor comment per pull request, created once and updated on every later push.

GitHub's REST API through urllib (no extra dependency): list the PR's comments
page by page following the `Link: rel="next"` header, find ours by its hidden
marker, then PATCH it, or POST a new one when there is none. The token only
ever goes into the Authorization header; errors name the URL and status.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.report.render import COMMENT_MARKER

API_URL = "https://api.github.com"
"""GitHub's REST API (GITHUB_API_URL overrides it, as on GitHub Enterprise)."""

MAX_COMMENT_CHARS = 65_000
"""GitHub rejects comment bodies over 65,536 characters."""

TIMEOUT_S = 30.0
"""Per request."""

_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PullRequest:
    api_url: str
    repository: str  # owner/name
    number: int


@dataclass(frozen=True)
class Posted:
    action: str  # created | updated
    comment_id: int
    url: str


def pull_request_from(environ: Mapping[str, str], event: Mapping[str, Any] | None) -> PullRequest:
    """The PR a GitHub Actions run is for, from GITHUB_REPOSITORY and the event payload
    (GITHUB_EVENT_PATH's content), or from GITHUB_REF `refs/pull/N/merge`."""
    repository = environ.get("GITHUB_REPOSITORY", "")
    if not _REPO.fullmatch(repository):
        raise ConveyorError("GITHUB_REPOSITORY (owner/name) is not set; --github-comment runs in GitHub Actions")
    number: Any = None
    if event and isinstance(event.get("pull_request"), Mapping):
        number = event["pull_request"].get("number")
    if number is None:
        match = re.fullmatch(r"refs/pull/([0-9]+)/(?:merge|head)", environ.get("GITHUB_REF", ""))
        number = match.group(1) if match else None
    if number is None or not str(number).isdigit():
        raise ConveyorError("this run is not for a pull request (no pull_request in the event, "
                            "GITHUB_REF is not refs/pull/N/merge); nothing to comment on")
    return PullRequest(environ.get("GITHUB_API_URL") or API_URL, repository, int(number))


def _request(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "conveyor",
        **({"Content-Type": "application/json"} if data is not None else {}),
    })
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"null"), response.headers.get("Link")
    except urllib.error.HTTPError as exc:
        raise ConveyorError(f"GitHub answered {exc.code} {exc.reason} to {method} {url}; "
                            "check that GITHUB_TOKEN may write pull requests (permissions: pull-requests: write)"
                            ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConveyorError(f"could not reach GitHub at {url}: {getattr(exc, 'reason', exc)}") from None


def upsert_comment(pr: PullRequest, token: str, body: str) -> Posted:
    """Update the PR's Conveyor comment (found by `COMMENT_MARKER`), or create it."""
    if not token:
        raise ConveyorError("GITHUB_TOKEN is not set; pass it to the step (env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }})")
    if not body.startswith(COMMENT_MARKER):
        body = f"{COMMENT_MARKER}\n{body}"
    if len(body) > MAX_COMMENT_CHARS:
        body = body[:MAX_COMMENT_CHARS] + "\n\n…(cut; the full report is in the run's artifacts)"
    base = f"{pr.api_url.rstrip('/')}/repos/{pr.repository}"
    url: str | None = f"{base}/issues/{pr.number}/comments?per_page=100"
    while url is not None:
        comments, link = _request("GET", url, token)
        for comment in comments or []:
            if isinstance(comment, dict) and str(comment.get("body", "")).startswith(COMMENT_MARKER):
                updated, _ = _request("PATCH", f"{base}/issues/comments/{int(comment['id'])}", token, {"body": body})
                return Posted("updated", int(updated["id"]), str(updated.get("html_url", "")))
        match = _NEXT.search(link or "")
        url = match.group(1) if match else None
    created, _ = _request("POST", f"{base}/issues/{pr.number}/comments", token, {"body": body})
    return Posted("created", int(created["id"]), str(created.get("html_url", "")))
