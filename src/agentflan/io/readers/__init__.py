"""Readers by format name. `READERS.get("toolbench")` imports the class on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentflan.registry import Registry, subclass_of

if TYPE_CHECKING:
    from agentflan.io.base import Reader

READERS: Registry[type[Reader]] = Registry("reader", check=subclass_of("agentflan.io.base:Reader"))
_R = "agentflan.io.readers"
for _name, _target, _doc in [
    ("native", f"{_R}.native:NativeReader", "agentflan JSONL/Parquet (lossless)"),
    ("toolbench", f"{_R}.toolbench:ToolBenchReader", "ToolBench answer files and ToolLLaMA JSON"),
    ("agentinstruct", f"{_R}.agentinstruct:AgentInstructReader", "AgentInstruct (6 task dialects)"),
    ("react", f"{_R}.react:ReactReader", "FireAct-style ReAct in OpenAI messages"),
    ("sharegpt", f"{_R}.sharegpt:ShareGPTReader", "ShareGPT chat, LLaMA-Factory/glaive with tools"),
    ("alpaca", f"{_R}.sharegpt:AlpacaReader", "Alpaca instruction/input/output"),
    ("openai", f"{_R}.openai:OpenAIReader", "OpenAI messages with tool_calls / typed parts"),
    ("xlam", f"{_R}.xlam:XLAMReader", "Salesforce xLAM/APIGen query/tools/answers"),
    ("hermes", f"{_R}.hermes:HermesReader", "Hermes function calling (<tools>, <tool_call>, <tool_response>)"),
    ("agentflan", f"{_R}.agentflan:AgentFlanReader", "the released Agent-FLAN dataset"),
    ("toolbench_query", f"{_R}.tasks:ToolBenchQueryReader", "ToolBench instruction (query) files"),
    ("dbbench", f"{_R}.tasks:DBBenchReader", "AgentBench DB task files"),
]:
    READERS.register(_name, _target, _doc)

__all__ = ["READERS"]
