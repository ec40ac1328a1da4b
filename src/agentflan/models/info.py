"""What `agentflan train` records beside a model, read back by the engines, eval and serve."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agentflan.errors import ConfigError
from agentflan.formats.protocols import get_protocol
from agentflan.training.models import INFO_FILE


@dataclass
class ModelInfo:
    """What `agentflan train` records beside a model: the template and the protocols it was trained on."""

    template: str = "hf"
    protocols: dict[str, int] = field(default_factory=dict)
    """Trained records per protocol (`tflan`, `react:random`, `agentinstruct:db`, `chat`, ...)."""
    base_model: str | None = None
    trained: bool = False

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        """The record beside the model folder `path` (an untrained default when there is none)."""
        f = Path(path) / INFO_FILE
        if not f.is_file():
            return cls()
        data = json.loads(f.read_text(encoding="utf-8"))
        return cls(template=data.get("template", "hf"), protocols=dict(data.get("protocols", {})),
                   base_model=data.get("base_model"), trained=True)

    def episode_protocols(self, env: str | None = None) -> list[str]:
        """The trained protocols an episode can be played in (most trained first; `native` when
        the model was not trained by agentflan), limited to those that fit `env` (None: protocols
        that fit any environment are kept, and those tied to one as well).

        What fits is read from the protocol's traits (`episodic`, `plays_envs`, `task`), never
        from its name; a recorded name that is no protocol (`chat`, plain conversations) is left out.
        """
        out = []
        for name, _ in sorted(self.protocols.items(), key=lambda kv: (-kv[1], kv[0])):
            try:
                proto = get_protocol(name)
            except ConfigError:
                continue
            if not proto.episodic or not proto.plays_envs:
                continue
            if proto.task is not None and env is not None and proto.task != env:
                continue
            out.append(name)
        return out or ["native"]
