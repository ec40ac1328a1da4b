"""Writers by format name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentflan.registry import Registry, subclass_of

if TYPE_CHECKING:
    from agentflan.io.writers.base import Writer

WRITERS: Registry[type[Writer]] = Registry("writer", check=subclass_of("agentflan.io.writers.base:Writer"))
_W = "agentflan.io.writers"
for _name, _target, _doc in [
    ("native", f"{_W}.native:NativeWriter", "agentflan JSONL (lossless)"),
    ("parquet", f"{_W}.native:ParquetWriter", "agentflan Parquet (lossless, typed columns)"),
    ("openai", f"{_W}.chat:OpenAIWriter", "OpenAI fine-tuning messages + tools (arguments as JSON strings)"),
    ("sharegpt", f"{_W}.chat:ShareGPTWriter", "LLaMA-Factory ShareGPT with tools"),
    ("hf", f"{_W}.chat:HFChatWriter", "Hugging Face messages + tools (TRL, axolotl, apply_chat_template)"),
    ("alpaca", f"{_W}.chat:AlpacaWriter", "Alpaca instruction/input/output"),
    ("agentflan", f"{_W}.chat:AgentFlanWriter", "the Agent-FLAN release record"),
    ("toolbench", f"{_W}.agent:ToolBenchWriter", "ToolLLaMA training JSON"),
    ("toolbench_answer", f"{_W}.agent:ToolBenchAnswerWriter", "ToolBench DFS answer records"),
    ("react", f"{_W}.agent:ReactWriter", "FireAct-style ReAct messages"),
    ("agentinstruct", f"{_W}.agent:AgentInstructWriter", "AgentInstruct conversations"),
]:
    WRITERS.register(_name, _target, _doc)

__all__ = ["WRITERS"]
