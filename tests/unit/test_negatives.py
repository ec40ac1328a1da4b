"""Negative samples: requests only, checked irrelevance, replies that decline and help, system
prompts and protocols shared with the positives, the insufficient-tool case, a real loopback teacher."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from agentflan.envs import get_env
from agentflan.envs.base import ExpertPolicy, run_episode
from agentflan.formats.agentinstruct import AGENTBENCH_DB_PROMPT
from agentflan.formats.neutral import request_of
from agentflan.formats.protocols import get_protocol
from agentflan.formats.tflan import NO_TOOL
from agentflan.io import read
from agentflan.pipeline import negatives as neg
from agentflan.pipeline.base import StepStats
from agentflan.pipeline.negatives import (
    NegativesConfig,
    build_negatives,
    content_words,
    insufficient_tools,
    is_general_tool,
    tool_words,
)
from agentflan.pipeline.teacher import TeacherConfig
from agentflan.schema import AssistantMessage, SystemMessage, UserMessage
from tests.helpers import agentinstruct_db_records, write_jsonl


@pytest.fixture(scope="module")
def data(sample_data, tmp_path_factory):
    chat = list(read(str(sample_data / "llamafactory/alpaca_en_demo.json"), "alpaca"))
    tools = list(read(str(sample_data / "toolbench/answer/*/*.json"), "toolbench", include_give_up=True))
    tools += list(read(str(sample_data / "llamafactory/glaive_toolcall_en_demo.json"), "sharegpt"))
    tools += list(read(str(sample_data / "fireact/hotpotqa_react.jsonl"), "react"))[:20]  # search / lookup
    path = write_jsonl(tmp_path_factory.mktemp("ai") / "db.jsonl", agentinstruct_db_records(30))
    agentinstruct = list(read(str(path), "agentinstruct"))
    queries = list(read(str(sample_data / "toolbench/answer/*/*.json"), "toolbench", include_give_up=True))
    return chat, tools, queries + agentinstruct


@pytest.fixture(scope="module")
def toolapi():
    info = get_env("toolapi")
    return [run_episode(info.make(), t, ExpertPolicy(info.expert(t))).trajectory for t in info.generate(40, "train")]


def _made(chat, tools, queries, seed=5, **cfg):
    stats = StepStats()
    cfg.setdefault("teacher", None)
    return list(build_negatives(chat, tools, queries, NegativesConfig(**cfg), seed, stats)), stats


def _unrender(t):
    """The plain reply of a rendered negative (the final answer, whatever the protocol)."""
    proto = t.tags.get("protocol")
    last = t.messages[-1]
    if proto in (None, "tflan", "tflan:inline"):
        return last.content
    action = get_protocol(proto).parse(last.content, t, t.metadata["protocol_key"])
    assert action.kind == "answer", action
    return action.answer


def test_requests_never_hold_a_held_in_task_instruction(data):
    """Reproduces the finding: AgentInstruct's first human turn is AgentBench's instruction, and the
    old `first user turn` query took it; negatives now take the request only."""
    chat, tools, queries = data
    ai = [q for q in queries if q.tags.get("task") == "db"]
    assert all(AGENTBENCH_DB_PROMPT.strip()[:60] in q.messages[0].content for q in ai)  # the trap
    assert all("Action: Operation" not in request_of(q) for q in ai)
    out, _stats = _made(chat, tools, queries, kinds=["no_tools_offered", "tools_insufficient"], n=60)
    assert any(t.metadata["parent"].startswith("db_") for t in out)
    instruction = [line.strip() for line in AGENTBENCH_DB_PROMPT.splitlines() if len(line.strip()) > 15]
    for t in out:
        for m in t.messages:
            if not isinstance(m, AssistantMessage):
                assert not any(line in m.content for line in instruction), (t.id, m.content[:200])
                assert not m.content.rstrip().endswith("Begin!")


def test_offline_replies_decline_then_help_with_the_requests_own_steps(toolapi):
    out, stats = _made([], toolapi, toolapi, kinds=["no_tools_offered"], n=15)
    assert len(out) == 15 and stats.counts["origin:no_tools_offered:template"] == 15
    parents = {t.id: t for t in toolapi}
    for t in out:
        assert isinstance(t.messages[0], SystemMessage)  # system/user/assistant, as the release's
        reply = t.messages[-1].content
        assert any(d in reply for d in neg.DECLINE_NO_TOOLS)
        parent = parents[t.metadata["parent"]]
        assert "1. " in reply  # a plan: the steps the user can take
        # every value the plan states is in the request; what only a tool result holds is never stated
        observed = [m.content for m in parent.messages if m.role == "tool"]
        answer = next(c.arguments["final_answer"] for m in parent.messages if isinstance(m, AssistantMessage)
                      for c in m.tool_calls if c.name == "Finish")
        assert answer not in reply
        for obs in observed:
            for value in json.loads(obs)["response"].values():
                if isinstance(value, str) and value.lower() not in t.messages[1].content.lower():
                    assert value not in reply, (value, reply)
    assert len({t.messages[-1].content.split("\n")[0] for t in out}) > 3  # varied


def test_only_action_requests_become_requests(toolapi):
    """A greeting or an unserviceable request is not an action request: it must not be refused."""
    out, stats = _made([], toolapi, toolapi, kinds=["no_tools_offered"], n=40)
    kinds = {t.id: t for t in toolapi}
    assert stats.counts["queries_skipped:not_an_action_request"] == 10
    for t in out:
        parent = kinds[t.metadata["parent"]]
        assert any(c.name != "Finish" for m in parent.messages if isinstance(m, AssistantMessage) for c in m.tool_calls)


def test_not_needed_rejects_tools_that_could_serve(data):
    """Reproduces the finding: the lexical check alone offers FireAct's search tools beside fact
    questions; a general retrieval tool is now never offered with a request for information."""
    chat, tools, queries = data
    search = next(t for traj in tools for t in traj.tools if t.name == "search")
    assert is_general_tool(search)
    questions = [c for c in chat if c.messages[0].content.rstrip().endswith("?")]
    assert any(not (tool_words(search) & content_words(q.messages[0].content)) for q in questions)  # the old gap
    n = min(100, len(chat))  # at most one negative per chat record
    out, stats = _made(chat, tools, queries, kinds=["tools_not_needed"], n=n)
    assert len(out) == n and stats.counts["rejected_general_tools"] > 0
    for t in out:
        query = next(m.content for m in t.messages if isinstance(m, UserMessage))
        offered = [tool for tool in t.tools if tool.name != "Finish"]
        assert 2 <= len(offered) <= 5
        assert all(not (tool_words(tool) & content_words(query)) for tool in offered)
        assert not any(is_general_tool(tool) for tool in offered if neg.asks_for_information(query))


def test_insufficient_tools_are_related_and_cannot_serve(toolapi):
    out, stats = _made([], toolapi, toolapi, kinds=["tools_insufficient"], n=12)
    assert len(out) == 12 and stats.counts["skipped:no_related_tool"] > 0
    parents = {t.id: t for t in toolapi}
    for t in out:
        parent = parents[t.metadata["parent"]]
        _related, called = insufficient_tools(parent)
        offered = {tool.name for tool in t.tools} - {"Finish"}
        called_names = {tool.name for tool in called}
        groups = {c.rsplit("_for_", 1)[1] for c in called_names}
        assert offered and not (offered & called_names)
        assert all(name.rsplit("_for_", 1)[1] in groups for name in offered)
        assert set(t.metadata["removed_tools"]) >= called_names
        reply = _unrender(t)
        assert any(tool in reply for tool in offered)  # names the closest tool it has
    assert {t.tags["protocol"] for t in out} >= {"tflan", "react:random"}


def test_insufficient_tools_keeps_no_substitute():
    from agentflan.schema import Source, ToolCall, ToolSpec, Trajectory

    def spec(name, desc):
        return ToolSpec(name=name, description=desc)
    traj = Trajectory(id="t", source=Source(format="x"), tags={"final_tool": "Finish"}, tools=[
        spec("search_for_news", "Search news articles by keyword."),
        spec("search_v2_for_news", "Search news articles by keyword, version 2."),
        spec("top_headlines_for_news", "Today's top headlines."), spec("Finish", "")],
        messages=[UserMessage(content="Find news about volcanoes"), AssistantMessage(tool_calls=[
            ToolCall(id="c", name="search_for_news", arguments={"q": "volcano"})])])
    related, _called = insufficient_tools(traj)
    assert [t.name for t in related] == ["top_headlines_for_news"]  # search_v2 could stand in: left out


def test_system_prompts_and_protocols_are_shared_with_positives(toolapi):
    """No cue only negatives have: every system prompt head is one a positive has, and samples with
    tools are rendered by the positives' protocols (checked to parse back as answers)."""
    out, stats = _made([], toolapi, toolapi, kinds=["no_tools_offered", "tools_insufficient"], n=40)
    positive_heads = {m.content for t in toolapi for m in t.messages if isinstance(m, SystemMessage)}
    for t in out:
        head = t.messages[0].content.split("\n\n", 1)[0]
        assert head in positive_heads, head
        if t.tags["negative_kind"] == "tools_insufficient":
            assert t.tags["protocol"] in ("tflan", "tflan:inline", "react:random", "json:random")
            _unrender(t)
    protocols = {k.split(":", 1)[1] for k in stats.counts if k.startswith("protocol:")}
    assert {"tflan", "tflan:inline", "react:random", "json:random"} <= protocols


def test_tflan_negatives_choose_no_tool_as_the_positives_do(data):
    chat, tools, queries = data
    out, _ = _made(chat, tools, queries, kinds=["tools_not_needed"], n=40, protocols={"tflan": 1.0})
    for t in out:
        retrieval = [m for m in t.messages if isinstance(m, AssistantMessage) and m.capability == "retrieval"]
        assert len(retrieval) == 1 and retrieval[0].content in NO_TOOL
        assert t.messages[-1].content  # the general answer is kept, after the answer elicit


def test_negative_renderings_are_what_serving_plays(toolapi, monkeypatch):
    """Parity: a rendered negative is what the protocol's harness shows and reads at serving."""
    from agentflan.models.engines import ScriptedEngine

    pairs = []
    real = neg._Renderer.__call__

    def capture(self, traj, stats):
        out = real(self, traj, stats)
        pairs.append((traj, out))
        return out

    monkeypatch.setattr(neg._Renderer, "__call__", capture)
    _made([], toolapi, toolapi, kinds=["tools_insufficient"], n=12)
    for structured, rendered in pairs:
        proto = get_protocol(rendered.tags["protocol"])
        key = rendered.metadata["protocol_key"]
        replies = [m.content for m in rendered.messages if isinstance(m, AssistantMessage)]
        prompt_traj = structured.model_copy(update={"messages": structured.messages[:-1]})
        engine = ScriptedEngine(replies)
        action = drive_one(proto, prompt_traj, key, engine)
        shown = [p.messages for p in engine.prompts]
        trained = [rendered.messages[:i] for i, m in enumerate(rendered.messages) if isinstance(m, AssistantMessage)]
        assert [[m.content for m in s] for s in shown] == [[m.content for m in s] for s in trained]
        assert action.kind == "answer"
    assert pairs


def drive_one(proto, traj, key, engine):
    gen = proto.act(traj, key)
    prompt = next(gen)
    try:
        while True:
            (result,) = engine.generate([prompt])
            prompt = gen.send(result)
    except StopIteration as stop:
        return stop.value


def test_counts_are_a_share_of_the_agent_records(toolapi):
    cfg = NegativesConfig(kinds=["no_tools_offered", "tools_insufficient"], share=0.1, teacher=None)
    assert cfg.count("no_tools_offered", 400) == 20 and cfg.count("tools_not_needed", 400) == 0
    per_kind = NegativesConfig(share={"no_tools_offered": 0.05}, teacher=None)
    assert per_kind.count("no_tools_offered", 400) == 20 and per_kind.count("tools_insufficient", 400) == 0
    assert NegativesConfig(n=7, teacher=None).count("tools_insufficient", 0) == 7
    stats = StepStats()
    out = list(build_negatives([], toolapi, toolapi, cfg, 5, stats, agent_records=200))
    assert stats.counts["requested:no_tools_offered"] == 10 and len(out) == 20
    with pytest.raises(ValueError, match="cannot render"):
        NegativesConfig(protocols={"agentinstruct:db": 1.0})


def test_negatives_are_deterministic_and_order_independent(data):
    chat, tools, queries = data
    cfg = NegativesConfig(n=30, teacher=None)
    a = list(build_negatives(chat, tools, queries, cfg, 9, StepStats()))
    b = list(build_negatives(list(reversed(chat)), tools, list(reversed(queries)), cfg, 9, StepStats()))
    assert [t.to_json_dict() for t in a] == [t.to_json_dict() for t in b]


class _Teacher(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict]] = []
    fail_first = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if type(self).fail_first:
            type(self).fail_first = False
            self.send_response(503)
            self.end_headers()
            return
        query = body["messages"][-1]["content"]
        if "Employees" in query:
            content = 'Action: search\nAction Input: {"q": 1}'
        elif "capital" in query and "available" in body["messages"][0]["content"]:
            content = neg.CANNOT_JUDGE
        else:
            content = f"I can't do that without tools, but here is how: {query[:20]}"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Teacher.calls = []
    _Teacher.fail_first = True
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_teacher_writes_every_reply_retried_cached_and_checked(data, toolapi, teacher_url, tmp_path):
    chat, _tools, queries = data
    queries = [q for q in queries if q.tags.get("task") == "db"] + toolapi
    cfg = NegativesConfig(kinds=["no_tools_offered", "tools_insufficient"], n=20,
                          teacher=TeacherConfig(base_url=teacher_url, model="fake", backoff_s=0.01, concurrency=3))
    stats = StepStats()
    out = list(build_negatives(chat, toolapi, queries, cfg, 1, stats, cache_dir=tmp_path))
    origins = {(t.tags["negative_kind"], t.metadata["response_origin"]) for t in out}
    assert ("no_tools_offered", "teacher:fake") in origins and ("tools_insufficient", "teacher:fake") in origins
    # a reply that looks like a tool call is not used; the offline reply takes its place
    finance = [t for t in out if "Employees" in t.messages[1].content]
    assert finance and all(t.tags["response_origin"] == "template" for t in finance)
    assert stats.counts["teacher_rejected"] >= len(finance)
    # a teacher that finds the offered tools can serve the request vetoes the sample
    assert stats.counts["dropped:teacher_says_serviceable"] > 0
    assert _Teacher.calls[0]["model"] == "fake"
    sent = len(_Teacher.calls)
    stats2 = StepStats()
    again = list(build_negatives(chat, toolapi, queries, cfg, 1, stats2, cache_dir=tmp_path))
    assert [t.to_json_dict() for t in again] == [t.to_json_dict() for t in out]
    assert stats2.counts["teacher_requests"] == 0 and len(_Teacher.calls) == sent
    assert stats2.counts["teacher_cache_hits"] == sent - 1  # the 503 was retried, not cached


def test_teacher_auto_comes_from_the_environment(monkeypatch):
    from agentflan.pipeline.recipe import load_recipe

    monkeypatch.delenv("AGENTFLAN_TEACHER_BASE_URL", raising=False)
    recipe, resolved = load_recipe("builtin")
    assert recipe.outputs["negatives"].config.teacher is None
    monkeypatch.setenv("AGENTFLAN_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("AGENTFLAN_TEACHER_MODEL", "m")
    recipe, resolved = load_recipe("builtin")
    assert recipe.outputs["negatives"].config.teacher.model == "m"
    assert resolved["outputs"]["negatives"]["config"]["teacher"]["base_url"] == "http://127.0.0.1:9/v1"


def test_unreachable_teacher_falls_back_to_offline_replies(toolapi):
    cfg = NegativesConfig(kinds=["no_tools_offered"], n=3, teacher=TeacherConfig(
        base_url="http://127.0.0.1:9/v1", model="none", retries=1, backoff_s=0.01, timeout_s=2))
    stats = StepStats()
    out = list(build_negatives([], toolapi, toolapi, cfg, 1, stats))
    assert all(t.tags["response_origin"] == "template" for t in out)
    assert stats.counts["teacher_failed"] == len(out) == 3
