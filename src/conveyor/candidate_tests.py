"""The line's test step: the project's own test command, run against the candidate.

The command sees the candidate model through `CONVEYOR_CANDIDATE_PATH` (the
`candidate_model` fixture of Conveyor's pytest plugin reads it) and reports
failing test names through `CONVEYOR_TEST_REPORT`. A passing result is cached
under a key of the test files' content and the candidate's digest, so an
unchanged commit does not run its tests again.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.config import TestsConfig
from conveyor.lock import held_fds
from conveyor.pipeline import command_env
from conveyor.store import atomic_write_text, hash_bytes, hash_path


@dataclass
class TestsResult:
    status: str  # ran | cached | failed
    key: str
    duration_s: float = 0.0
    exit_code: int | None = None
    passed: int | None = None
    failed: int | None = None
    failures: list[str] = field(default_factory=list)


def _key(tests: TestsConfig, root: Path, candidate_digest: str) -> str:
    deps = {dep: hash_path(root / dep) for dep in tests.deps if (root / dep).exists()}
    payload = {"cmd": tests.cmd, "deps": deps, "candidate": candidate_digest}
    return hash_bytes(json.dumps(payload, sort_keys=True).encode())


def run_tests(tests: TestsConfig, *, root: Path, candidate_path: Path, candidate_digest: str,
              cache_dir: Path, log_path: Path, registry_url: str, force: bool = False) -> TestsResult:
    """Run the test command unless a passing result for the same key is cached.

    The key leaves out the production version the `production_model` fixture
    compares with: a candidate already tested is already registered, and the line
    will not promote it again, so re-testing it when production moves decides nothing.
    """
    started = time.perf_counter()
    key = _key(tests, root, candidate_digest)
    entry_path = cache_dir / f"tests-{key}.json"
    if not force and entry_path.is_file():
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
            passed = entry["passed"]
            if passed is None or isinstance(passed, int):
                return TestsResult(status="cached", key=key, passed=passed, failed=0,
                                   duration_s=time.perf_counter() - started)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt entry is a miss
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-tests-") as scratch:
        report_path = Path(scratch) / "report.json"
        env = command_env(CONVEYOR_CANDIDATE_PATH=str(candidate_path), CONVEYOR_TEST_REPORT=str(report_path),
                          CONVEYOR_REGISTRY_URL=registry_url)
        with open(log_path, "wb") as log:
            log.write(f"$ {tests.cmd}\n".encode())
            log.flush()
            # The command comes from the project's own conveyor.yaml, as a Makefile recipe does.
            process = subprocess.run(tests.cmd, shell=True, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, check=False, pass_fds=held_fds())
        report: dict[str, object] = {}
        if report_path.is_file():
            try:
                report = json.loads(report_path.read_text(encoding="utf-8"))
            except ValueError:
                report = {}
    passed = report.get("passed")
    failed = report.get("failed")
    failures = report.get("failures")
    result = TestsResult(
        status="ran" if process.returncode == 0 else "failed", key=key, exit_code=process.returncode,
        passed=passed if isinstance(passed, int) else None,
        failed=failed if isinstance(failed, int) else None,
        failures=[str(f) for f in failures] if isinstance(failures, list) else [],
        duration_s=time.perf_counter() - started,
    )
    if result.status == "ran":
        atomic_write_text(entry_path, json.dumps({"passed": result.passed, "created_at": time.time()}))
    return result
