"""T-Eval: its files read as released, its metrics as its evaluators define them (fake embedder;
the real sentence model only in the `slow` test)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflan.cli.main import cli
from agentflan.errors import ConfigError, MissingDependencyError
from agentflan.eval import teval

pytest.importorskip("networkx")
pytest.importorskip("numpy")


class FakeEmbedder:
    """Character-trigram count vectors: equal texts have similarity 1, unrelated ones near 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    @staticmethod
    def _vec(text: str) -> Counter[str]:
        t = f"  {text.lower()}  "
        return Counter(t[i:i + 3] for i in range(len(t) - 2))

    def similarity(self, a, b):
        self.calls.append((list(a), list(b)))
        out = []
        for x in a:
            vx = self._vec(x)
            row = []
            for y in b:
                vy = self._vec(y)
                dot = sum(vx[k] * vy[k] for k in vx)
                norm = math.sqrt(sum(v * v for v in vx.values()) * sum(v * v for v in vy.values()))
                row.append(max(dot / norm, 0.0) if norm else 0.0)
            out.append(row)
        return out


@pytest.fixture(autouse=True)
def fake_embedder():
    emb = FakeEmbedder()
    teval.set_embedder(emb)
    yield emb
    teval.set_embedder(None)


PROMPT = [{"role": "system", "content": "You have access to the following API: ..."},
          {"role": "user", "content": "Find a flat in Berlin and its reviews."}]
APIS = ["AirbnbSearch.search_property_by_place", "AirbnbSearch.get_property_reviews", "ArxivSearch.get_arxiv_article"]
PLAN = [{"id": 0, "prev": [], "name": "AirbnbSearch.search_property_by_place", "args": {"place": "Berlin"}},
        {"id": 1, "prev": [0], "name": "AirbnbSearch.get_property_reviews", "args": {"propertyId": 36339325}},
        {"id": 2, "prev": [1], "name": "FinishAction", "args": {}}]


def plan_datum(kind: str = "json") -> dict:
    return {"meta": {"prompt_type": kind, "API_list": APIS}, "ground_truth": PLAN, "origin_prompt": PROMPT}


def review_datum(answer: str = "B", fmt: str = "str") -> dict:
    return {"template": "", "meta_data": {"response_format": fmt}, "origin_prompt": PROMPT,
            "ground_truth": {"answer": answer, "thought": "a proxy error"}}


STR_TEMPLATE = {"thought_start": "Thought:", "thought_end": "\n", "action_start": "Action:", "action_end": "\n",
                "args_start": "Action Input:", "args_end": "\n"}


def instruct_datum(fmt: str = "json") -> dict:
    template = {"thought": "thought", "action": "name", "args": "args"} if fmt == "json" else STR_TEMPLATE
    return {"template": template, "meta_data": {"response_format": fmt}, "origin_prompt": PROMPT,
            "ground_truth": {"action": "Weather.get", "args": {"city": "Paris", "days": 3}}}


def rru_datum(fmt: str = "str") -> dict:
    return {"meta_data": {"response_format": fmt}, "origin_prompt": PROMPT,
            "ground_truth": {"thought": "I should look up the weather in Paris", "name": "Weather.get",
                             "args": {"city": "Paris", "days": 3}}}


# ---- T-Eval's parsing ---------------------------------------------------------------------------------------

def test_format_load_reads_as_teval_does():
    assert teval.format_load("```json\n[1, 2]\n```") == [1, 2]
    assert teval.format_load("noise [{'a': (1, 2)}] tail", "[", "]") == [{"a": (1, 2)}]  # a Python literal
    assert teval.format_load('x {"a": true, "b": null} y', "{", "}") == {"a": True, "b": None}  # then JSON
    assert teval.format_load("{'a': true}", "{", "}") == {"a": True}  # then JSON with ' as "
    assert teval.format_load([1]) == [1]  # already read
    with pytest.raises(teval._Unparsed):
        teval.format_load("no brackets", "[", "]")  # find -1 -> the last character; rfind -1 -> ''
    with pytest.raises(teval._Unparsed):
        teval.format_load("[" * 3000, "[", "]")  # recursion: a failure, never a crash


def test_split_special_tokens_cuts_as_test_py():
    assert teval.split_special_tokens("Answer: A<|im_end|>\nuser: more") == "Answer: A"
    assert teval.split_special_tokens("```json\n[1]\n```") == "[1]"
    assert teval.split_special_tokens("  plan\nassistant\nmore") == "plan"


def test_parse_string_is_teval_greedy_unanchored_regex():
    got = teval.parse_string("Thought:{thought}\nAction:{action}\nAction Input:{args}\n",
                             "pre Thought: a\nAction: b\nAction Input: {}\nAction: c\nAction Input: {1}\n",
                             allow_newline=True)
    assert got == {"thought": " a\nAction: b\nAction Input: {}", "action": " c", "args": " {1}"}
    assert teval.parse_string("A:{x}\n", "no match") is None
    assert teval.parse_string("A:{x}\n", None) is None


# ---- plan ---------------------------------------------------------------------------------------------------

def test_plan_json_gold_and_parse_failures():
    d = plan_datum("json")
    gold = teval.judge("plan_json", d, teval.gold_reply("plan_json", d))
    assert gold == {"precision": 1.0, "recall": 1.0, "f1_score": 1.0, "parse_rate": 1}
    assert teval.judge("plan_json", d, "I would search first.")["parse_rate"] == 0
    assert teval.judge("plan_json", d, '[{"name": "x", "args": {}}]')["parse_rate"] == 0  # no id: T-Eval empties it
    # only FinishAction: T-Eval's run stops (max of an empty array); agentflan scores 0
    assert teval.judge("plan_json", d, '[{"id": 0, "name": "FinishAction", "args": {}}]') == {
        "precision": 0.0, "recall": 0.0, "f1_score": 0.0, "parse_rate": 1}


def test_plan_match_counts_one_even_when_nothing_matches():
    """T-Eval's LIS starts every node at 1, so a plan with no matched step still counts one."""
    d = plan_datum("json")
    wrong = json.dumps([{"id": 0, "name": "Zzz.qqq", "args": "wholly unrelated"},
                        {"id": 1, "name": "Kkk.vvv", "args": "nothing alike"}])
    assert teval.judge("plan_json", d, wrong) == {"precision": 0.5, "recall": 0.5, "f1_score": 0.5, "parse_rate": 1}


def test_plan_order_matters_through_the_longest_increasing_run():
    d = plan_datum("json")
    rev = json.dumps([{**PLAN[1], "id": 0}, {**PLAN[0], "id": 1}])
    got = teval.judge("plan_json", d, rev)
    assert got["precision"] == 0.5 and got["recall"] == 0.5  # both steps matched, one in order
    extra = json.dumps([*PLAN[:2], {**PLAN[1], "id": 2, "args": {"propertyId": 1}}])
    got = teval.judge("plan_json", d, extra)
    assert got["recall"] == 1.0 and got["precision"] == pytest.approx(2 / 3, abs=1e-6)


def test_plan_weights_and_threshold(fake_embedder):
    """similarity = 0.75 cos(name) + 0.25 cos(args), an edge only above 0.8: a right name with
    unrelated args (0.75) does not match."""
    d = plan_datum("json")
    same_name = json.dumps([{"id": 0, "name": PLAN[0]["name"], "args": "qqq"},
                            {"id": 1, "name": PLAN[1]["name"], "args": {"propertyId": 36339325}}])
    got = teval.judge("plan_json", d, same_name)
    assert got["recall"] == 0.5  # the second matches; the first (0.75 + ~0) does not, and adds nothing to the run
    names, args = fake_embedder.calls[-2:]
    assert names == ([PLAN[0]["name"], PLAN[1]["name"]], [PLAN[0]["name"], PLAN[1]["name"]])
    assert args[1] == [str(PLAN[0]["args"]), str(PLAN[1]["args"])]  # args compared as Python reprs


def test_plan_str_reads_the_first_api_named_on_each_line():
    d = plan_datum("str")
    reply = ("1. Use AirbnbSearch.search_property_by_place to find flats in Berlin. "
             "Then AirbnbSearch.get_property_reviews for 36339325\nSome prose without an API\n")
    steps = teval._plan_str_steps(reply, APIS)
    assert [s["name"] for s in steps] == [APIS[0], APIS[1]]
    assert steps[0]["args"] == "Use AirbnbSearch.search_property_by_place to find flats in Berlin"  # "1. " split too
    assert teval.judge("plan_str", d, "nothing here")["parse_rate"] == 0
    assert teval.judge("plan_str", d, reply)["parse_rate"] == 1
    assert teval.judge("plan_str", d, 42)["parse_rate"] == 0  # T-Eval raises on a non-string; agentflan: 0


# ---- review, instruct, reason / retrieve / understand ---------------------------------------------------------

@pytest.mark.parametrize(("reply", "metrics"), [
    ("Answer: B", (1.0, 1.0)), ("Answer: A", (1.0, 0.0)), ("B", (1.0, 1.0)),  # no ':' -> from the start
    ("Answer: b", (0, 0)), ("Answer:", (0, 0)), ("The answer: [B]", (0, 0)), ("Thought: x\nAnswer: B", (0, 0)),
])
def test_review_letter_after_the_first_colon(reply, metrics):
    got = teval.judge("review_str", review_datum("B"), reply)
    assert (got["parse_rate"], got["review_quality"]) == metrics


def test_review_json_reads_is_finished():
    d = review_datum(True, fmt="json")
    assert teval.judge("review_str", d, '{"is_finished": true}') == {"parse_rate": 1.0, "review_quality": 0.0}
    assert teval.judge("review_str", d, '{"is_finished": "yes"}')["parse_rate"] == 0


def test_instruct_json_and_string():
    dj, ds = instruct_datum("json"), instruct_datum("string")
    ok = json.dumps({"thought": "t", "name": "Weather.get", "args": {"city": "Paris", "days": 3}})
    assert teval.judge("instruct", dj, ok) == {"json_format_metric": 1, "json_args_em_metric": 1.0}
    half = json.dumps({"thought": "t", "name": "Weather.set", "args": {"city": "Paris", "days": "3"}})
    assert teval.judge("instruct", dj, half)["json_args_em_metric"] == pytest.approx(1 / 3)
    assert teval.judge("instruct", dj, '{"name": "Weather.get"}') == {"json_format_metric": 0, "json_args_em_metric": 0}
    s_ok = "Thought: t\nAction: Weather.get \nAction Input: {'city': 'Paris', 'days': 3.0}\n"
    assert teval.judge("instruct", ds, s_ok) == {"string_format_metric": 1, "string_args_em_metric": 1.0}  # 3 == 3.0
    s_bad_args = "Thought: t\nAction: Weather.get\nAction Input: city=Paris\n"
    assert teval.judge("instruct", ds, s_bad_args)["string_args_em_metric"] == pytest.approx(1 / 3)
    assert teval.judge("instruct", ds, "Action: Weather.get")["string_format_metric"] == 0


def test_reason_retrieve_understand_str(fake_embedder):
    d = rru_datum("str")
    assert teval.judge("reason_str", d, "I should look up the weather in Paris")["thought"] == 1.0
    assert teval.judge("reason_str", d, "")["parse_rate"] == 1  # a string reply always parses in str mode
    assert teval.judge("retrieve_str", d, "Call Weather.get now")["name"] == 1
    assert teval.judge("retrieve_str", d, "Weather.get then Mail.send")["name"] == 0  # another a.b name
    assert teval.judge("retrieve_str", d, "Weather.get FinishAction")["name"] == 0
    assert teval.judge("understand_str", d, "\"{'city': 'Paris', 'days': 3}'")["args"] == 1.0  # quotes stripped
    assert teval.judge("understand_str", d, '{"city": "Paris", "days": 3}')["args"] == 0.0  # exact str(dict) only


def test_rru_json():
    d = rru_datum("json")
    gt = d["ground_truth"]
    # T-Eval divides by (arguments + 1e-5): a perfect call scores 2 / 2.00001
    assert teval.judge("rru_json", d, json.dumps(gt)) == {"thought": 1.0, "name": 1, "args": 0.999995, "parse_rate": 1}
    got = teval.judge("rru_json", d, json.dumps({**gt, "args": {"city": "Paris", "days": "3"}}))
    assert got["args"] == 0.999995  # compared as str(): "3" == str(3)
    got = teval.judge("rru_json", d, json.dumps({**gt, "args": {"city": "Rome"}}))
    assert got["args"] == round(0 / (2 + 1e-5), 6)
    assert teval.judge("rru_json", d, "no json") == {"thought": 0, "name": 0, "args": 0, "parse_rate": 0}
    empty = {**d, "ground_truth": {**gt, "args": {}}}
    assert teval.judge("rru_json", empty, json.dumps({**gt, "args": {}}))["args"] == 1
    assert teval.judge("rru_json", empty, json.dumps(gt))["args"] == 0


@settings(max_examples=150, deadline=None)
@given(reply=st.one_of(st.text(max_size=60), st.sampled_from(["[", "{", "```json", "[{'id': 1e400}]", "Answer:"])),
       variant=st.sampled_from(teval.VARIANTS))
def test_no_reply_crashes_a_verdict(reply, variant):
    datum = {"instruct": instruct_datum("string"), "plan_json": plan_datum("json"), "plan_str": plan_datum("str"),
             "review_str": review_datum()}.get(variant, rru_datum("json" if variant == "rru_json" else "str"))
    got = teval.judge(variant, datum, reply)
    assert all(isinstance(v, (int, float)) for v in got.values())


# ---- files, runs, logs --------------------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, items: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(items), encoding="utf-8")
    return p


def test_variant_from_file_names_and_bad_files_named(tmp_path):
    assert teval.variant_of("data/reason_retrieve_understand_json_v2.json") == "rru_json"
    assert teval.variant_of("plan_str_v1.json") == "plan_str"
    assert teval.variant_of("x.json", "review_str") == "review_str"
    with pytest.raises(ConfigError, match="cannot tell the T-Eval variant"):
        teval.variant_of("mine.json")
    bad = _write(tmp_path, "review_str_v1.json", {"q1": {**review_datum(), "ground_truth": {"thought": "x"}}})
    with pytest.raises(ConfigError, match=r"review_str_v1.json: item 'q1': ground_truth: field 'answer' is missing"):
        teval.load_file(bad)
    bad = _write(tmp_path, "plan_str_v1.json", {"q1": {**plan_datum("str"), "meta": {"prompt_type": "str"}}})
    with pytest.raises(ConfigError, match=r"item 'q1': meta: field 'API_list' is missing"):
        teval.load_file(bad)
    bad = _write(tmp_path, "instruct_v1.json", {"q": {**instruct_datum("string"), "origin_prompt": [{"role": "x"}]}})
    with pytest.raises(ConfigError, match=r"item 'q': field 'origin_prompt\[0\]'"):
        teval.load_file(bad)
    with pytest.raises(ConfigError, match="field 'prediction' is missing"):
        teval.load_file(_write(tmp_path, "review_str_x.json", {"q": review_datum()}), predictions=True)
    (tmp_path / "plan_json_v1.json").write_text("[1,")
    with pytest.raises(ConfigError, match="not a JSON file"):
        teval.load_file(tmp_path / "plan_json_v1.json")


def test_cli_bad_file_is_one_line_exit_4(tmp_path):
    bad = _write(tmp_path, "review_str_v1.json", {"q1": {"origin_prompt": PROMPT}})
    res = CliRunner().invoke(cli, ["eval", "teval", "--policy", "expert", "--tasks", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 4 and "item 'q1': field 'ground_truth' is missing" in res.output


def test_predictions_file_scored_and_rescored(tmp_path):
    preds = {"a": {**review_datum("B"), "prediction": "Answer: B"}, "b": {**review_datum("C"), "prediction": "x"},
             "c": {**review_datum("A"), "prediction": "Answer: D"}}
    path = _write(tmp_path, "review_str_mymodel.json", preds)
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "teval", "--predictions", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "o" / "teval-review_str-predictions"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == {"parse_rate": round(2 / 3, 4), "review_quality": round(1 / 3, 4)}
    assert summary["score"] == round(1 / 3, 4)
    log = out / "episodes.jsonl"
    assert runner.invoke(cli, ["score", str(log)]).exit_code == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[1]["verdict"]["review_quality"] = 1.0  # a doctored verdict
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert runner.invoke(cli, ["score", str(log)]).exit_code == 1


def test_expert_calibration_every_variant(tmp_path):
    files = {"plan_json_v1.json": {"p": plan_datum("json")}, "plan_str_v1.json": {"p": plan_datum("str")},
             "review_str_v1.json": {"r": review_datum()},
             "instruct_v1.json": {"j": instruct_datum("json"), "s": instruct_datum("string")},
             "reason_str_v1.json": {"x": rru_datum()}, "retrieve_str_v1.json": {"x": rru_datum()},
             "understand_str_v1.json": {"x": rru_datum()},
             "reason_retrieve_understand_json_v1.json": {"x": rru_datum("json")}}
    for name, items in files.items():
        path = _write(tmp_path, name, items)
        res = CliRunner().invoke(cli, ["eval", "teval", "--policy", "expert", "--tasks", str(path),
                                       "-o", str(tmp_path / "o")])
        assert res.exit_code == 0, res.output
        var = teval.variant_of(path)
        summary = json.loads((tmp_path / "o" / f"teval-{var}" / "summary.json").read_text())
        assert summary["score"] >= 0.99999, (name, summary)  # args: k / (k + 1e-5), T-Eval's
        assert all(v >= 0.99999 for v in summary["metrics"].values() if v is not None), (name, summary)


def test_model_run_sends_the_released_prompt_and_cuts_the_reply(tmp_path):
    from agentflan.eval.suites import run_suite
    from agentflan.models.engines import ScriptedEngine

    path = _write(tmp_path, "review_str_v1.json", {"a": review_datum("B"), "b": review_datum("A")})
    engine = ScriptedEngine(texts=["Answer: B<|im_end|>junk", "Answer: C\nuser: more"])
    runs = run_suite("teval", engine=engine, policy="model", protocols=[], n=10, seed=0, tasks_file=path,
                     out_root=tmp_path / "o", agent_name="m", base_config={}, resume=True,
                     progress=lambda label, total: (lambda k: None))
    assert [(m.role, m.content) for m in engine.prompts[0].messages] == [(m["role"], m["content"]) for m in PROMPT]
    recs = runs[0].records
    assert [r["prediction"] for r in recs] == ["Answer: B", "Answer: C"]
    assert runs[0].summary["metrics"]["review_quality"] == 0.5
    again = run_suite("teval", engine=ScriptedEngine(), policy="model", protocols=[], n=10, seed=0, tasks_file=path,
                      out_root=tmp_path / "o", agent_name="m", base_config={}, resume=True,
                      progress=lambda label, total: (lambda k: None))
    assert again[0].resumed == 2


def test_missing_model_or_library_is_a_missing_dependency(tmp_path, monkeypatch):
    with pytest.raises(MissingDependencyError, match=r"bench/fetch_teval\.py --model"):
        teval.SentenceEmbedder(tmp_path)
    (tmp_path / "modules.json").write_text("[]")
    monkeypatch.setitem(__import__("sys").modules, "sentence_transformers", None)
    with pytest.raises(MissingDependencyError, match=r"agentflan\[teval\]"):
        teval.SentenceEmbedder(tmp_path)
    teval.set_embedder(None)
    monkeypatch.setenv("AGENTFLAN_TEVAL_MODEL", str(tmp_path / "absent"))
    res = CliRunner().invoke(cli, ["eval", "teval", "--policy", "expert", "-o", str(tmp_path / "o"),
                                   "--tasks", str(_write(tmp_path, "plan_json_v1.json", {"p": plan_datum("json")}))])
    assert res.exit_code == 4 and "fetch_teval.py --model" in res.output


@pytest.mark.slow
def test_real_model_on_teval_public_plan_data():
    path = teval.data_dir() / "plan_json_v1.json"
    if not path.is_file() or not (teval.model_dir() / "modules.json").is_file():
        pytest.skip("T-Eval data or model not fetched (python bench/fetch_teval.py --data --repo ... --model)")
    teval.set_embedder(teval.SentenceEmbedder())
    var, items = teval.load_file(path)
    _, datum = items[1]
    assert teval.judge(var, datum, teval.gold_reply(var, datum))["f1_score"] == 1.0
    sim = teval.default_embedder().similarity(["search a flat in Berlin"], ["find an apartment in Berlin"])[0][0]
    assert 0.5 < sim < 1.0
