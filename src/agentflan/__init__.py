"""agentflan: the Agent-FLAN recipe for tuning LLMs as tool-using agents, end to end.

The core import is light (no torch): the schema, readers and writers. Training and evaluation
live in submodules that import their heavy dependencies lazily.
"""

from agentflan.schema import (
    AssistantMessage,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
    check,
)
from agentflan.versions import __version__

__all__ = [
    "AssistantMessage",
    "Source",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "ToolSpec",
    "Trajectory",
    "UserMessage",
    "__version__",
    "check",
]
