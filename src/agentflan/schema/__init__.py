"""The trajectory schema and its structural checks."""

from agentflan.schema.checks import Issue, check, errors
from agentflan.schema.trajectory import (
    CAPABILITIES,
    SCHEMA_VERSION,
    AssistantMessage,
    Capability,
    Message,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
    trajectory_from_dict,
)

__all__ = [
    "CAPABILITIES",
    "SCHEMA_VERSION",
    "AssistantMessage",
    "Capability",
    "Issue",
    "Message",
    "Source",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "ToolSpec",
    "Trajectory",
    "UserMessage",
    "check",
    "errors",
    "trajectory_from_dict",
]
