"""A small built-in sample corpus, written by agentflan itself in every source format it reads.

The repository cannot ship other projects' data, so `make demo` and the tests start from these:
a few episodes (tool use with a thought per step, a multi-step dependent chain, a plain chat and
a request no offered tool serves) built here as `Trajectory` objects and written out with
agentflan's writers as ToolLLaMA JSON, FireAct ReAct, LLaMA-Factory ShareGPT, OpenAI messages,
AgentInstruct (OS task) and Alpaca files.
"""

from __future__ import annotations

from pathlib import Path

from agentflan.formats.finish import FINISH, give_answer
from agentflan.schema import (
    AssistantMessage,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
)

_CONVERT = ToolSpec(
    name="convert_units", description="Convert a quantity between units of the same dimension",
    parameters={"type": "object", "properties": {
        "value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}},
        "required": ["value", "from_unit", "to_unit"]})
_DAYS = ToolSpec(
    name="days_between", description="Number of days between two ISO dates",
    parameters={"type": "object", "properties": {"start": {"type": "string"}, "end": {"type": "string"}},
                "required": ["start", "end"]})
_ADD = ToolSpec(
    name="add", description="Add two numbers",
    parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"]})
_FINISH = ToolSpec(  # shorter than `formats.finish.FINISH_SPEC`: the built-in samples' own bytes stay as they were
    name=FINISH, description="Give the final answer",
    parameters={"type": "object", "properties": {"return_type": {"type": "string"},
                                                 "final_answer": {"type": "string"}},
                "required": ["return_type"]})
_SYSTEM = "You are a helpful assistant that can call tools to answer the user's request."


def _src(i: int) -> Source:
    return Source(format="builtin", dataset="builtin", original_id=f"sample-{i}")


def episodes() -> list[Trajectory]:
    """The built-in episodes as trajectories."""
    tool_use = Trajectory(
        id="sample-0", source=_src(0), tools=[_CONVERT, _DAYS, _ADD, _FINISH], tags={"final_tool": FINISH},
        messages=[
            SystemMessage(content=_SYSTEM),
            UserMessage(content="How many kilometres is a 26.2 mile marathon?"),
            AssistantMessage(content="I should convert 26.2 miles to kilometres with the unit converter.",
                             tool_calls=[ToolCall(id="call_0", name="convert_units",
                                                  arguments={"value": 26.2, "from_unit": "mile", "to_unit": "km"})]),
            ToolMessage(content='{"value": 42.1648, "unit": "km"}', name="convert_units", tool_call_id="call_0"),
            AssistantMessage(content="The converter says 42.1648 km, so I can answer.",
                             tool_calls=[give_answer("A 26.2 mile marathon is about 42.16 km.", "call_1")]),
        ])
    chain = Trajectory(
        id="sample-1", source=_src(1), tools=[_DAYS, _ADD, _FINISH], tags={"final_tool": FINISH},
        messages=[
            SystemMessage(content=_SYSTEM),
            UserMessage(content="My trip runs from 2024-03-01 to 2024-03-15 and I add 3 extra days. "
                                "How many days is that in total?"),
            AssistantMessage(content="First I need the number of days between the two dates.",
                             tool_calls=[ToolCall(id="call_0", name="days_between",
                                                  arguments={"start": "2024-03-01", "end": "2024-03-15"})]),
            ToolMessage(content='{"days": 14}', name="days_between", tool_call_id="call_0"),
            AssistantMessage(content="The trip is 14 days; now I add the 3 extra days.",
                             tool_calls=[ToolCall(id="call_1", name="add", arguments={"a": 14, "b": 3})]),
            ToolMessage(content='{"result": 17}', name="add", tool_call_id="call_1"),
            AssistantMessage(content="14 + 3 = 17, which answers the question.",
                             tool_calls=[give_answer("The trip lasts 17 days in total.", "call_2")]),
        ])
    chat = Trajectory(
        id="sample-2", source=_src(2),
        messages=[UserMessage(content="Give me one tip for writing clear commit messages."),
                  AssistantMessage(content="Start with a short imperative summary line, e.g. "
                                           "\"Fix crash when the config file is empty\".")])
    no_tool_fits = Trajectory(
        id="sample-3", source=_src(3), tools=[_CONVERT, _DAYS],
        messages=[SystemMessage(content=_SYSTEM),
                  UserMessage(content="Please book me a table for two at an Italian restaurant tonight."),
                  AssistantMessage(content="I can't book restaurants: the tools I have convert units and count "
                                           "days between dates. I can help you draft a booking message instead.")])
    return [tool_use, chain, chat, no_tool_fits]


def _react_episode() -> Trajectory:
    return Trajectory(
        id="sample-react-0", source=_src(10), tags={"final_tool": "finish"},
        tools=[ToolSpec(name=n, parameters={"type": "object", "properties": {a: {"type": "string"}},
                                            "required": [a]})
               for n, a in (("search", "query"), ("lookup", "keyword"), ("finish", "answer"))],
        messages=[
            UserMessage(content="Which river flows through the capital of Hungary?"),
            AssistantMessage(content="I need to find the capital of Hungary and the river that flows through it.",
                             tool_calls=[ToolCall(id="call_0", name="search", arguments={"query": "Budapest"})]),
            ToolMessage(content="Budapest is the capital of Hungary. The Danube flows through the city.",
                        name="search", tool_call_id="call_0"),
            AssistantMessage(content="The Danube flows through Budapest.",
                             tool_calls=[ToolCall(id="call_1", name="finish", arguments={"answer": "Danube"})]),
            ToolMessage(content="Episode finished, reward = True", name="finish", tool_call_id="call_1"),
        ])


def _os_episode() -> Trajectory:
    from agentflan.formats.agentinstruct import DIALECTS

    return Trajectory(
        id="os_0", source=_src(20), tools=list(DIALECTS["os"].tools), tags={"task": "os", "final_tool": "answer"},
        messages=[
            UserMessage(content="You are an assistant that will act like a person operating a Linux shell. "
                                "Think, then act with bash or answer."),
            AssistantMessage(content="Understood.", loss=False),
            UserMessage(content="Now, I will start a new problem. My problem is:\n\n"
                                "How many .log files are in /var/log/app?"),
            AssistantMessage(content="I should count the .log files with ls and wc.",
                             tool_calls=[ToolCall(id="call_0", name="bash",
                                                  arguments={"script": "ls /var/log/app/*.log | wc -l"})]),
            ToolMessage(content="The output of the OS:\n\n3", name="bash", tool_call_id="call_0"),
            AssistantMessage(content="There are 3 files.",
                             tool_calls=[ToolCall(id="call_1", name="answer", arguments={"answer": "3"})]),
        ])


SAMPLE_FILES: dict[str, tuple[str, str]] = {
    # file name: (writer, reader that reads it back)
    "toolllama.json": ("toolbench", "toolbench"),
    "react.jsonl": ("react", "react"),
    "sharegpt_tools.json": ("sharegpt", "sharegpt"),
    "openai_tools.jsonl": ("openai", "openai"),
    "agentinstruct_os.jsonl": ("agentinstruct", "agentinstruct"),
    "alpaca.json": ("alpaca", "alpaca"),
}


def write_samples(directory: str | Path) -> dict[str, Path]:
    """Write the built-in corpus to `directory`, one file per source format; return the paths."""
    from agentflan.io.writers import WRITERS

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    eps = episodes()
    content = {
        "toolllama.json": eps[:2],
        "react.jsonl": [_react_episode()],
        "sharegpt_tools.json": eps,
        "openai_tools.jsonl": eps,
        "agentinstruct_os.jsonl": [_os_episode()],
        "alpaca.json": [eps[2]],
    }
    out = {}
    for name, (writer, _) in SAMPLE_FILES.items():
        path = directory / name
        WRITERS.get(writer)().write(content[name], path)
        out[name] = path
    return out
