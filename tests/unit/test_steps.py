"""Pipeline steps: split, react formats, instruct, capabilities, balance, filter, sample."""

from __future__ import annotations

import random

import pytest

from agentflan.formats.agent_text import FormatSpec, parse_step, random_spec, render_step
from agentflan.io import read
from agentflan.pipeline.base import STEPS, StepConfig, StepContext
from agentflan.pipeline.steps.balance import BalanceConfig, BalanceStep
from agentflan.samples import episodes
from agentflan.schema import AssistantMessage, Trajectory
from agentflan.seeds import unit
from tests.helpers import run_steps as _run


@pytest.fixture(scope="module")
def fireact(sample_data):
    return list(read(str(sample_data / "fireact/hotpotqa_react.jsonl"), "react"))


def test_splits_partition_exactly(fireact):
    parts = [_run([{"type": "split", "start": a, "end": b}], fireact)[0] for a, b in [(0, .6), (.6, .9), (.9, 1)]]
    ids = [t.id for p in parts for t in p]
    assert sorted(ids) == sorted(t.id for t in fireact)
    n = len(fireact)
    assert abs(len(parts[0]) - .6 * n) < .08 * n + 4 and abs(len(parts[2]) - .1 * n) < .05 * n + 2


def test_splits_do_not_depend_on_order(fireact):
    a = _run([{"type": "split", "end": 0.5}], fireact)[0]
    b = _run([{"type": "split", "end": 0.5}], list(reversed(fireact)))[0]
    assert sorted(t.id for t in a) == sorted(t.id for t in b)


def test_balance_realizes_requested_ratios_exactly(fireact):
    out, ctxs = _run([{"type": "align"}, {"type": "capabilities"}, {"type": "balance", "ratios": "paper"}], fireact)
    c = ctxs[-1].stats.counts
    for cap, p in {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75}.items():
        realized = c[f"turns_after:{cap}"] / c[f"turns_before:{cap}"]
        assert abs(realized - p) <= 1 / c[f"turns_before:{cap}"], (cap, realized)  # exact up to one turn
    kept = sum(isinstance(m, AssistantMessage) and m.loss and m.capability == "retrieval" for t in out for m in t.messages)
    assert kept == c["turns_after:retrieval"]


def test_balance_is_order_independent_and_keeps_context(fireact):
    entries = [{"type": "align"}, {"type": "capabilities"}]
    aligned, _ = _run(entries, fireact)
    step = BalanceStep(BalanceConfig(ratios={"retrieval": 0.3, "understanding": 0.6}))
    a = {t.id: t for t in step.run([t.model_copy(deep=True) for t in aligned], StepContext(seed=3))}
    b = {t.id: t for t in step.run([t.model_copy(deep=True) for t in reversed(aligned)], StepContext(seed=3))}
    assert a == b
    for t in aligned:
        if t.id in a:
            assert [m.content for m in a[t.id].messages] == [m.content for m in t.messages]


def test_balance_sample_mode(fireact):
    out, ctxs = _run([{"type": "balance", "mode": "sample", "sample_rate": 0.3}], fireact)
    assert .2 * len(fireact) < len(out) < .4 * len(fireact)
    assert ctxs[0].stats.counts["dropped:subsampled"] == len(fireact) - len(out)


def test_balance_config_errors():
    with pytest.raises(ValueError, match="sample_rate"):
        BalanceConfig(mode="sample")
    with pytest.raises(ValueError):
        BalanceConfig(ratios={"retrieval": 1.5})


def test_random_formats_round_trip_and_vary():
    specs = {random_spec(random.Random(i)) for i in range(200)}
    assert len({s.action_key for s in specs}) == 5 and len({s.input_key for s in specs}) == 5
    assert {s.style for s in specs} == {"react", "json"}
    for spec in [*list(specs)[:50], FormatSpec()]:
        text = render_step(spec, "I think", "get_x", {"a": [1, "b"]})
        assert parse_step(spec, text) == ("I think", "get_x", {"a": [1, "b"]})


def test_react_step_states_the_format_it_uses(fireact):
    out, ctxs = _run([{"type": "react", "style": "random"}], fireact[:50])
    assert len(out) == 50
    for t in out:
        spec = FormatSpec(**t.metadata["format_spec"])
        system = t.messages[0].content
        assert spec.action_key in system and spec.input_key in system and spec.final_action in system
        first = next(m for m in t.messages if isinstance(m, AssistantMessage))
        _, name, args = parse_step(spec, first.content)
        orig = next(o for o in fireact if o.id == t.id)
        call = next(m for m in orig.messages if isinstance(m, AssistantMessage)).tool_calls[0]
        assert (name, args) == (call.name, call.arguments) or name == spec.final_action
    assert ctxs[0].stats.counts["format:react"] + ctxs[0].stats.counts["format:json"] == 50


def test_react_source_style_reproduces_fireact_text(fireact, sample_data):
    import json

    out, _ = _run([{"type": "react", "style": "source"}], fireact[:20])
    raw = [json.loads(line) for line in (sample_data / "fireact/hotpotqa_react.jsonl").read_text().splitlines()[:20]]
    for t, r in zip(out, raw, strict=True):
        assert [m.content for m in t.messages] == [m["content"] for m in r["messages"]]


def test_instruct_one_to_one_and_labelled(fireact):
    out, ctxs = _run([{"type": "instruct"}], fireact)
    c = ctxs[0].stats.counts
    assert c["output:json"] + c["output:string"] == len(out) == len(fireact) - c["dropped:no_tool_calls"]
    assert c["dropped:no_tool_calls"] == 1  # one trajectory answers at once: no call to ask for
    assert abs(c["output:json"] - c["output:string"]) < .12 * len(fireact)
    for t in out[:20]:
        (a,) = [m for m in t.messages if isinstance(m, AssistantMessage)]
        assert a.capability == "instruction_following"
        assert len(t.messages) == 3


def test_filter_dedup_and_near_dup():
    base = episodes()
    dup = [t.model_copy(update={"id": t.id + "-copy"}) for t in base]
    near = base[2].model_copy(deep=True, update={"id": "near"})
    near.messages[1].content = near.messages[1].content.replace("e.g.", "for example")
    out, ctxs = _run([{"type": "filter", "dedup": "exact"}], base + dup)
    assert len(out) == 4 and ctxs[0].stats.counts["dropped:duplicate"] == 4
    long_text = " ".join(f"word{i}" for i in range(200))
    a = base[2].model_copy(deep=True, update={"id": "a"})
    a.messages[1].content = long_text
    b = a.model_copy(deep=True, update={"id": "b"})
    b.messages[1].content = long_text + " extra"
    out, _ = _run([{"type": "filter", "dedup": "near"}], [a, b, near])
    assert [t.id for t in out] == ["a", "near"]


def test_filter_length_and_validity():
    t = episodes()[0]
    out, ctxs = _run([{"type": "filter", "max_tokens": 20}], [t])
    assert out == [] and ctxs[0].stats.counts["dropped:too_long"] == 1
    broken = t.model_copy(deep=True)
    broken.tools = []
    out, ctxs = _run([{"type": "filter"}], [broken])
    assert ctxs[0].stats.counts["dropped:invalid:undeclared_tool"] == 1


def test_sample_keeps_n_by_hash(fireact):
    out, _ = _run([{"type": "sample", "n": 10}], fireact)
    expected = sorted(fireact, key=lambda t: unit(17, "sample", t.id))[:10]
    assert [t.id for t in out] == [t.id for t in expected]


def test_every_step_is_registered_with_a_config():
    for name in STEPS.names():
        cls = STEPS.get(name)
        assert cls.name == name
        # a real config class that refuses unknown keys (what the recipe's "did you mean" relies on)
        assert issubclass(cls.Config, StepConfig) and cls.Config.model_config.get("extra") == "forbid"


def test_capabilities_labels_plain_turns():
    t = episodes()[2]
    out, _ = _run([{"type": "capabilities"}], [t.model_copy(deep=True)])
    assert [m.capability for m in out[0].messages if isinstance(m, AssistantMessage)] == ["reasoning"]
    assert isinstance(out[0], Trajectory)
