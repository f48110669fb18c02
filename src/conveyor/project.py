"""Where a project's files live: the repository root and its `.conveyor/` state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conveyor import defaults
from conveyor.exceptions import NotAProjectError


@dataclass(frozen=True)
class Project:
    """Paths of one project; nothing here touches the disk until asked."""

    root: Path

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The project containing `start` (default: the current directory)."""
        here = (start or Path.cwd()).resolve()
        for candidate in (here, *here.parents):
            if (candidate / defaults.CONFIG_FILE).is_file():
                return cls(candidate)
        raise NotAProjectError(str(here))

    @property
    def config_path(self) -> Path:
        return self.root / defaults.CONFIG_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / defaults.STATE_DIR

    @property
    def cache_dir(self) -> Path:
        """Content-addressed objects (see `conveyor.store`)."""
        return self.state_dir / "cache"

    @property
    def stage_cache_dir(self) -> Path:
        """One small JSON entry per stage cache key (see `conveyor.pipeline`)."""
        return self.state_dir / "stages"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def models_dir(self) -> Path:
        """Verified, unpacked model artifacts, one directory per digest."""
        return self.state_dir / "models"

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.db"

    @property
    def default_registry_url(self) -> str:
        from urllib.parse import quote

        return f"sqlite:///{quote(str(self.registry_path))}"  # '?' or '%' in a path must not read as URL syntax

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "run.lock"

    @property
    def server_state_path(self) -> Path:
        """JSON written by the local deployment: pid, port, token, model."""
        return self.state_dir / "server.json"

    @property
    def server_log_path(self) -> Path:
        return self.state_dir / "server.log"
