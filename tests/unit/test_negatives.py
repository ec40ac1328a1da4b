"""Negative samples: verifiable irrelevance, both kinds, templates, and a real loopback teacher."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from agentflan.io import read
from agentflan.pipeline.base import StepStats
from agentflan.pipeline.negatives import NegativesConfig, build_negatives, content_words, tool_words
from agentflan.pipeline.teacher import TeacherConfig


@pytest.fixture(scope="module")
def data(shared_data):
    chat = list(read(str(shared_data / "llamafactory/alpaca_en_demo.json"), "alpaca"))
    tools = list(read(str(shared_data / "toolbench/answer/*/*.json"), "toolbench", include_give_up=True))
    tools += list(read(str(shared_data / "llamafactory/glaive_toolcall_en_demo.json"), "sharegpt"))
    queries = list(read(str(shared_data / "toolbench/answer/*/*.json"), "toolbench", include_give_up=True))
    return chat, tools, queries


def test_tools_not_needed_are_verifiably_irrelevant(data):
    chat, tools, queries = data
    stats = StepStats()
    out = list(build_negatives(chat, tools, queries, NegativesConfig(kinds=["tools_not_needed"], n=100), 5, stats))
    assert len(out) == 100
    for t in out:
        assert t.tags == {"negative_kind": "tools_not_needed", "response_origin": "source", "protocol": "tflan"}
        query = t.messages[1].content
        assert 2 <= len(t.tools) <= 5
        assert all(not (tool_words(tool) & content_words(query)) for tool in t.tools)
        assert all(tool.name in t.messages[0].content for tool in t.tools)
        assert t.messages[2].content  # the general answer is kept
    assert stats.counts["made:tools_not_needed"] == 100


def test_no_tools_offered_templates_vary(data):
    chat, tools, queries = data
    stats = StepStats()
    out = list(build_negatives(chat, tools, queries, NegativesConfig(kinds=["no_tools_offered"], n=50), 5, stats))
    assert len(out) == len(queries) == stats.counts["made:no_tools_offered"]
    assert stats.counts["shortfall:no_tools_offered"] == 50 - len(queries)
    assert all(not t.tools and t.tags["response_origin"] == "template" for t in out)
    assert not any(m.content.rstrip().endswith("Begin!") for t in out for m in t.messages)
    assert len({t.messages[-1].content for t in out}) > 3


def test_negatives_are_deterministic_and_order_independent(data):
    chat, tools, queries = data
    cfg = NegativesConfig(n=30)
    a = list(build_negatives(chat, tools, queries, cfg, 9, StepStats()))
    b = list(build_negatives(list(reversed(chat)), tools, queries, cfg, 9, StepStats()))
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
        content = ('Action: search\nAction Input: {"q": 1}' if "tracking" in query
                   else f"I can't do that without tools, but here is how: {query[:20]}")
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


def test_teacher_responses_retried_cached_and_checked(data, teacher_url, tmp_path):
    chat, tools, queries = data
    cfg = NegativesConfig(kinds=["no_tools_offered"], n=50,
                          teacher=TeacherConfig(base_url=teacher_url, model="fake", backoff_s=0.01, concurrency=3))
    stats = StepStats()
    out = list(build_negatives(chat, tools, queries, cfg, 1, stats, cache_dir=tmp_path))
    origins = {t.metadata["response_origin"] for t in out}
    assert "teacher:fake" in origins
    # a response that looks like a tool call is rejected and replaced by a template
    tracked = [t for t in out if "tracking" in t.messages[0].content]
    assert tracked and all(t.tags["response_origin"] == "template" for t in tracked)
    assert stats.counts["teacher_rejected"] == len(tracked)
    assert len(_Teacher.calls) == len(queries) + 1  # one 503, retried
    assert _Teacher.calls[0]["model"] == "fake"
    # resumable: a second run is served from the cache
    stats2 = StepStats()
    again = list(build_negatives(chat, tools, queries, cfg, 1, stats2, cache_dir=tmp_path))
    assert [t.to_json_dict() for t in again] == [t.to_json_dict() for t in out]
    assert stats2.counts["teacher_requests"] == 0
    assert stats2.counts["teacher_cache_hits"] == len(queries)


def test_unreachable_teacher_falls_back_to_templates(data):
    chat, tools, queries = data
    cfg = NegativesConfig(kinds=["no_tools_offered"], n=3, teacher=TeacherConfig(
        base_url="http://127.0.0.1:9/v1", model="none", retries=1, backoff_s=0.01, timeout_s=2))
    stats = StepStats()
    out = list(build_negatives(chat, tools, queries, cfg, 1, stats))
    assert all(t.tags["response_origin"] == "template" for t in out)
    assert stats.counts["teacher_failed"] == len(out)
