"""The line: stages → tests → gates → register → promote → deploy, for one commit.

`run_line` is what `conveyor run` (and later every trigger) calls. It records
each step in the run store as it goes, so `conveyor runs show` tells the same
story after a crash. A fully cached commit avoids importing the registry's
database layer: when the candidate's digest is already registered and is
what production points to, two read-only SQLite look-ups settle it.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from conveyor import __version__, defaults
from conveyor import config as config_module
from conveyor import git as git_module
from conveyor.candidate_tests import run_tests
from conveyor.exceptions import ConveyorError, DirtyWorkingTree
from conveyor.lock import project_lock
from conveyor.metrics import read_metrics
from conveyor.pipeline import Pipeline, StageCache, StageResult
from conveyor.project import Project
from conveyor.runs import Run, RunStore, Step
from conveyor.store import ArtifactStore

if TYPE_CHECKING:
    from conveyor.registry import ModelVersion, Registry


@dataclass(frozen=True)
class LineOptions:
    """How to run the line; resolved by the caller (flags > env > conveyor.yaml > defaults)."""

    registry_url: str | None = None  # None: conveyor.yaml's `registry`, else the project's SQLite file
    host: str | None = None  # None: conveyor.yaml's deploy.host
    port: int | None = None  # None: conveyor.yaml's deploy.port
    force: bool = False
    jobs: int = defaults.JOBS
    allow_dirty: bool = False
    wait_s: float = 0.0
    trigger: str = "manual"
    deploy: bool = True
    actor: str | None = None  # who promotes; None: git's user.email
    ci_branch: str | None = None  # the branch a CI engine built, for its detached checkout (git.ci_branch)


StepCallback = Callable[[Step], None]
"""Called when a step starts (status `running`) and again when it ends."""


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    from urllib.parse import unquote

    return Path(unquote(url[len(prefix):]))


class _Line:
    def __init__(self, project: Project, config: config_module.Config, options: LineOptions,
                 run: Run, runs: RunStore, git: git_module.GitState, on_step: StepCallback) -> None:
        self.project = project
        self.config = config
        self.options = options
        self.run = run
        self.runs = runs
        self.git = git
        self.on_step = on_step
        self.store = ArtifactStore(project.cache_dir)
        self._registry: Registry | None = None
        self.production_judged: int | None | Literal["any"] = "any"  # production as the gates compared with it
        assert options.registry_url is not None, "run_line resolves the registry URL"
        self.registry_url: str = options.registry_url

    # -- bookkeeping -------------------------------------------------------------
    def _start(self, name: str, kind: str) -> Step:
        step = Step(name=name, kind=kind)
        self.run.steps.append(step)
        self.runs.save(self.run)
        self.on_step(step)
        return step

    def _finish(self, step: Step, status: str, summary: str = "", **data: Any) -> Step:
        step.status = status
        step.duration_s = time.time() - step.started_at
        step.summary = summary
        step.data.update(data)
        self.runs.save(self.run)
        self.on_step(step)
        return step

    def _skip_rest(self, reason: str, *names: tuple[str, str]) -> None:
        for name, kind in names:
            step = Step(name=name, kind=kind, status="skipped", duration_s=0.0, summary=reason)
            self.run.steps.append(step)
            self.on_step(step)
        self.runs.save(self.run)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from conveyor.registry import Registry

            self._registry = Registry(self.registry_url)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    @property
    def on_release_branch(self) -> bool:
        return self.git.branch == self.config.triggers.branch

    # -- steps -------------------------------------------------------------------
    def stages(self) -> list[StageResult] | None:
        pipeline = Pipeline(self.project.root, self.config, self.store, StageCache(self.project.stage_cache_dir))
        steps: dict[str, Step] = {}

        def on_event(name: str, result: StageResult | None) -> None:
            if result is None:
                steps[name] = self._start(f"stage:{name}", "stage")
                steps[name].log = self.runs.log_path(self.run, f"stage:{name}").name
                return
            summary = {"ran": "ran", "cached": "unchanged", "restored": "restored outs from cache"}.get(
                result.status, result.error or "failed")
            step = steps[name]
            step.exit_code = result.exit_code
            self._finish(step, result.status, summary, key=result.key, deps=result.deps,
                         params=result.params, outs=result.outs)

        results = pipeline.run(force=self.options.force, jobs=self.options.jobs, on_event=on_event,
                               log_path_for=lambda name: self.runs.log_path(self.run, f"stage:{name}"))
        failed = [r for r in results if r.status == "failed"]
        if failed:
            self.run.error = f"stage '{failed[0].name}' failed: {failed[0].error}"
            return None
        return results

    def candidate_digest(self, results: list[StageResult]) -> str:
        model_path = self.config.model.path.rstrip("/")
        for result in results:
            for out, digest in result.outs.items():
                if out.rstrip("/") == model_path:
                    return digest
        return self.store.put(self.project.root / model_path)

    def tests(self, digest: str) -> bool:
        tests = self.config.tests
        if tests is None:
            return True
        step = self._start("tests", "tests")
        log_path = self.runs.log_path(self.run, "tests")
        step.log = log_path.name
        result = run_tests(tests, root=self.project.root, candidate_path=self.project.root / self.config.model.path,
                           candidate_digest=digest, cache_dir=self.project.stage_cache_dir, log_path=log_path,
                           registry_url=self.registry_url, force=self.options.force)
        step.exit_code = result.exit_code
        counts = f"{result.passed} passed" if result.passed is not None else "passed"
        if result.status == "failed":
            shown = ", ".join(result.failures[:5]) or f"exit code {result.exit_code}"
            self._finish(step, "failed", f"failing: {shown}", failures=result.failures)
            self.run.error = f"tests failed: {shown}"
            return False
        summary = f"{counts} before; tests and model unchanged" if result.status == "cached" else counts
        self._finish(step, result.status, summary, passed=result.passed)
        return True

    def metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for stage in self.config.stages.values():
            for path in stage.metrics:
                merged.update(read_metrics(self.project.root / path))
        return merged

    def already_registered(self, digest: str) -> tuple[int | None, int | None]:
        """(registered version, production version) via the fast read-only probe, when possible."""
        db_path = _sqlite_path(self.registry_url)
        name = self.config.model.name
        if db_path is not None:
            from conveyor.registry import probe

            return (probe.registered_version(db_path, name, digest, dirty=self.git.dirty),
                    probe.alias_version(db_path, name, defaults.PRODUCTION_ALIAS))
        found = self.registry.find_by_digest(name, digest, dirty=self.git.dirty)
        aliases = self.registry.aliases(name)
        return (found.version if found else None, aliases.get(defaults.PRODUCTION_ALIAS))

    def gates(self, metrics: dict[str, float]) -> bool:
        from conveyor import gates as gates_module
        from conveyor.exceptions import ModelNotFound

        step = self._start("gates", "gates")
        baselines: dict[str, ModelVersion | None] = {}
        for gate in self.config.gates:
            alias = gate.no_worse_than
            if alias and alias not in baselines:
                try:
                    baselines[alias] = self.registry.resolve(f"{self.config.model.name}@{alias}")
                except ModelNotFound:
                    baselines[alias] = None
        if defaults.PRODUCTION_ALIAS in baselines:  # promotion must find production where the gates saw it
            judged = baselines[defaults.PRODUCTION_ALIAS]
            self.production_judged = judged.version if judged is not None else None
        results = gates_module.evaluate(self.config.gates, metrics, baselines,
                                        model_path=self.project.root / self.config.model.path)
        table = [r.as_dict() for r in results]
        if not gates_module.passed(results):
            failing = [r.gate for r in results if not r.passed]
            self._finish(step, "failed", "failed: " + "; ".join(failing), results=table)
            self.run.error = "gates failed: " + "; ".join(failing) + "; production was not changed"
            return False
        self._finish(step, "passed", f"{len(results)} of {len(results)} passed" if results else "no gates configured",
                     results=table)
        return True

    def register(self, digest: str, metrics: dict[str, float], results: list[StageResult]) -> ModelVersion:
        from conveyor.model import read_metadata

        step = self._start("register", "register")
        metadata = read_metadata(self.project.root / self.config.model.path)
        gates_step = self.run.step("gates")
        params: dict[str, Any] = {}
        for result in results:
            params.update(result.params)
        lineage = {
            "git": self.git.as_dict(),
            "stages": {r.name: {"key": r.key, "deps": r.deps, "outs": r.outs, "params": r.params} for r in results},
            "run_id": self.run.id,
            "environment": {"python": platform.python_version(), "platform": sys.platform,
                            "conveyor": __version__, **metadata.environment},
        }
        if (self.project.root / "dvc.lock").is_file():  # an imported DVC pipeline: keep DVC's own md5s too
            from conveyor.dvc import lock_md5s

            lineage["dvc_lock"] = lock_md5s(self.project.root)
        version, created = self.registry.register(
            name=self.config.model.name, digest=digest, flavor=metadata.flavor, signature=metadata.signature,
            metrics=metrics, params=params, lineage=lineage,
            gates=gates_step.data.get("results", []) if gates_step else [], run_id=self.run.id,
        )
        self.run.model = {"name": version.name, "version": version.version, "digest": digest, "new": created}
        self._finish(step, "ran" if created else "cached",
                     f"{version.ref} registered" if created else f"already registered as {version.ref}",
                     version=version.version)
        return version

    def serving_form(self, version: ModelVersion) -> None:
        """With `package.runtime: onnx`, make the version's verified ONNX form now, so that packaging it
        (a model-only rebuild) does not import scikit-learn and skl2onnx to convert it. A model that
        cannot be converted faithfully is said so, and the run goes on: packaging it native still works."""
        if self.config.package.runtime != "onnx" or version.flavor == "onnx":
            return
        from conveyor.packaging import serving_form

        step = self._start("serving form", "serving")
        known = serving_form.recorded(version)
        if known is not None and self.store.has(known.digest):
            self._finish(step, "cached", f"{known.summary()}, made before", serving=known.as_dict())
            return
        try:
            form = serving_form.convert(self.store, self.project.models_dir, version)
        except serving_form.NotConvertible as exc:
            self._finish(step, "skipped", f"no onnx form: {exc.problem}; `conveyor package` will need "
                                          "package.runtime: native")
            return
        self.registry.record_serving_form(version.name, version.version, form.as_dict())
        self._finish(step, "ran", form.summary(), serving=form.as_dict())

    def promote(self, version: int) -> int | None:
        """Move production to `version` when this run may; return the production version after."""
        name = self.config.model.name
        step = self._start("promote", "promote")
        current = self.registry.aliases(name).get(defaults.PRODUCTION_ALIAS)
        if current == version:
            self._finish(step, "cached", f"production is already v{version}")
            return current
        if not self.on_release_branch:
            self._finish(step, "skipped", f"branch {self.git.branch or '(detached)'} is not the release branch "
                         f"{self.config.triggers.branch}")
            return current
        if self.git.dirty:
            self._finish(step, "skipped", "a model built from uncommitted changes is never promoted")
            return current
        history = self.registry.alias_history(name, defaults.PRODUCTION_ALIAS)
        demoted = next((m for m in history if m.from_version == version and m.kind == "rollback"), None)
        if demoted is not None:  # a person rolled it back: the line does not undo that
            self._finish(step, "skipped", f"v{version} was rolled back by {demoted.actor} "
                         f"({demoted.reason}); `conveyor models promote` brings it back")
            return current
        actor = self.options.actor or git_module.user(self.project.root)
        move = self.registry.set_alias(name, defaults.PRODUCTION_ALIAS, version, actor=actor,
                                       reason=f"gates passed in run {self.run.id}", run_id=self.run.id, kind="line",
                                       expected=current if self.production_judged == "any" else self.production_judged)
        before = f"v{move.from_version}" if move.from_version else "(none)"
        self._finish(step, "ran", f"production: {before} → v{version}")
        return version

    def deploy(self, production: int | None, digest: str | None) -> None:
        """Make the local server serve production (`digest`), unless it already does."""
        if not self.options.deploy:
            return
        if not self.on_release_branch:
            self._skip_rest(f"only the release branch {self.config.triggers.branch} deploys", ("deploy", "deploy"))
            return
        if production is None or digest is None:
            self._skip_rest("no production version yet", ("deploy", "deploy"))
            return
        if self.config.deploy.target != "local":
            self._deploy_elsewhere(production)
            return
        from conveyor.deploy import local

        step = self._start("deploy", "deploy")
        ref = f"{self.config.model.name}@{defaults.PRODUCTION_ALIAS}"
        live = local.current(self.project)
        if live is not None and live.ref == ref and live.digest == digest:
            self._finish(step, "cached", f"v{live.version} is live at {live.url}", url=live.url)
            return
        assert self.options.host is not None and self.options.port is not None, "run_line resolves them"
        deployment = local.ensure_serving(self.project, ref, host=self.options.host, port=self.options.port,
                                          registry_url=self.registry_url, expected_digest=digest,
                                          workers=self.config.deploy.workers,
                                          follow_interval_s=self.config.deploy.follow_interval_s,
                                          predictions_need_token=self.config.deploy.predictions_need_token)
        self._finish(step, "ran", f"v{deployment.version} is live at {deployment.url}", url=deployment.url)

    def _deploy_elsewhere(self, production: int) -> None:
        """Put production live on the container or Kubernetes target (`deploy.target`)."""
        from conveyor.deploy import targets

        step = self._start("deploy", "deploy")
        version = self.registry.get(self.config.model.name, production)
        if self.config.deploy.target == "container":
            assert self.options.port is not None, "run_line resolves it"
            placed = targets.to_container(self.project, self.config, self.registry, version, port=self.options.port)
        else:
            placed = targets.to_kubernetes(self.project, self.config, self.registry, version)
        self._finish(step, "ran" if placed.changed else "cached", placed.summary, url=placed.url)

    # -- the whole line ----------------------------------------------------------------
    def execute(self) -> None:
        results = self.stages()
        if results is None:
            self._skip_rest("an earlier step failed", *self._later_steps())
            return
        digest = self.candidate_digest(results)
        if not self.tests(digest):
            self._skip_rest("tests failed", ("gates", "gates"), ("register", "register"), ("promote", "promote"))
            return
        metrics = self.metrics()
        registered, production = self.already_registered(digest)
        if registered is not None and (registered == production or not self.on_release_branch):
            name = self.config.model.name
            self.run.model = {"name": name, "version": registered, "digest": digest, "new": False}
            self._skip_rest(f"{name}@{registered} already passed its gates", ("gates", "gates"))
            self._skip_rest(f"already registered as {name}@{registered}", ("register", "register"))
            self.deploy(production, digest if production == registered else None)
            return
        if not self.gates(metrics):
            self._skip_rest("gates failed", ("register", "register"), ("promote", "promote"))
            return
        version = self.register(digest, metrics, results)
        self.serving_form(version)
        production = self.promote(version.version)
        if production is None:
            self.deploy(None, None)
        else:
            live = version if production == version.version else self.registry.get(version.name, production)
            self.deploy(production, live.digest)

    def _later_steps(self) -> list[tuple[str, str]]:
        later = [("gates", "gates"), ("register", "register"), ("promote", "promote")]
        return ([("tests", "tests")] if self.config.tests else []) + later


def run_line(project: Project, options: LineOptions, on_step: StepCallback | None = None) -> Run:
    """Run the line for the current commit and return its record (status `passed` or `failed`).

    Errors found before the run starts (bad config, dirty tree, lock held) are
    raised; failures of a step are recorded in the run and reflected in its status.
    """
    notify = on_step or (lambda _step: None)
    with project_lock(project.lock_path, holder="conveyor run", wait_s=options.wait_s):
        config = config_module.load(project.root, project.state_dir)
        products = tuple(out for stage in config.stages.values() for out in stage.all_outs)
        git = git_module.state(project.root, ignore=(defaults.STATE_DIR, *products),
                                detached_branch=options.ci_branch)
        if git.dirty and not options.allow_dirty:
            raise DirtyWorkingTree(git.dirty_paths)
        options = replace(
            options,
            registry_url=options.registry_url or config.registry or project.default_registry_url,
            host=options.host or config.deploy.host,
            port=options.port or config.deploy.port,
        )
        runs = RunStore(project.runs_dir)
        run = runs.create(commit=git.commit, branch=git.branch, dirty=git.dirty, trigger=options.trigger)
        line = _Line(project, config, options, run, runs, git, notify)
        try:
            line.execute()
            run.status = "failed" if run.error else "passed"
        except ConveyorError as exc:
            run.status, run.error = "failed", str(exc)
        except KeyboardInterrupt:
            run.status, run.error = "interrupted", "interrupted by the user"
            raise
        finally:
            run.finished_at = time.time()
            for step in run.steps:
                if step.status == "running":
                    step.status = "failed" if run.status == "failed" else "interrupted"
                    step.duration_s = time.time() - step.started_at
                    step.summary = step.summary or (run.error or "")
                    notify(step)
            runs.save(run)
            line.close()
    return run
