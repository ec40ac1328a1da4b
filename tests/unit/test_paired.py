"""Paired comparisons (`eval.paired`, `agentflan score A B`): exact tests against known values,
synthetic runs with a known difference, identical runs (difference 0, p = 1), real logs."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.eval import paired
from agentflan.eval.paired import RunOutcomes


def test_mcnemar_exact_matches_the_binomial():
    assert paired.mcnemar_exact(0, 0) == 1.0
    assert paired.mcnemar_exact(5, 5) == 1.0
    assert paired.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert paired.mcnemar_exact(3, 7) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)
    assert paired.mcnemar_exact(7, 3) == paired.mcnemar_exact(3, 7)


def test_sign_flip_is_exact_on_few_differences_and_seeded_on_many():
    rng = random.Random(0)
    assert paired.sign_flip_p([0.0, 0.0], rng) == 1.0
    assert paired.sign_flip_p([0.5, 0.5, 0.5], rng) == pytest.approx(2 / 8)
    many = [0.3] * 30 + [-0.1] * 10
    assert paired.sign_flip_p(many, random.Random(1)) == paired.sign_flip_p(many, random.Random(1)) < 0.001


def test_holm_is_monotone_and_capped():
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert paired.holm([0.9, 0.8]) == [1.0, 1.0]


def _run(name: str, outcomes: list[int], kinds: list[str] | None = None, group: str = "toolapi",
         protocol: str = "tflan") -> RunOutcomes:
    kinds = kinds or ["single"] * len(outcomes)
    return RunOutcomes(name, group, protocol, {f"t{i}": {("success", "all"): float(x), ("success", k): float(x)}
                                               for i, (x, k) in enumerate(zip(outcomes, kinds, strict=True))})


def test_a_known_difference_is_found_with_its_interval_and_p():
    # 100 tasks: both succeed on 35, A alone on 25, B alone on 5, neither on 35
    a = [1] * 35 + [1] * 25 + [0] * 5 + [0] * 35
    b = [1] * 35 + [0] * 25 + [1] * 5 + [0] * 35
    rows = paired.compare([_run("A", a)], [_run("B", b, protocol="toolllama")])
    row = next(r for r in rows if r.stratum == "all")
    assert (row.n, row.mean_a, row.mean_b, row.diff) == (100, 0.60, 0.40, pytest.approx(0.20))
    assert row.discordant == (25, 5)
    assert row.p == pytest.approx(2 * sum(math.comb(30, i) for i in range(6)) / 2 ** 30)
    assert row.p < 0.001 and row.significant
    assert 0.08 < row.ci_low < 0.2 < row.ci_high < 0.32
    assert (row.protocol_a, row.protocol_b) == ("tflan", "toolllama")  # no protocol in common: across
    # paired beats unpaired: the shared successes cancel
    assert row.detectable < row.detectable_unpaired
    assert "significant at alpha = 0.05" in paired.sentence(row) and "+20.0 points" in paired.sentence(row)


def test_identical_runs_differ_by_zero_with_p_one():
    outcomes = [1, 0, 1, 1, 0] * 20
    rows = paired.compare([_run("A", outcomes)], [_run("B", outcomes)])
    assert rows and all(r.diff == 0 and r.p == 1.0 and (r.ci_low, r.ci_high) == (0.0, 0.0) for r in rows)
    assert not any(r.significant for r in rows)
    assert "not significant" in paired.headline(rows, "A", "B")


def test_only_items_both_runs_scored_are_paired():
    a, b = _run("A", [1] * 10), _run("B", [0] * 8)
    row = paired.compare([a], [b])[0]
    assert (row.n, row.only_a, row.only_b) == (8, 2, 0)


def test_strata_are_compared_and_holm_adjusts_only_the_overall_rows():
    kinds = ["single", "multi"] * 50
    rows = paired.compare([_run("A", [1] * 100, kinds)], [_run("B", [0] * 50 + [1] * 50, kinds)])
    assert [r.stratum for r in rows] == ["all", "multi", "single"]
    assert rows[0].p_holm is not None and rows[1].p_holm is None


def test_the_protocols_only_one_side_played_are_compared_across():
    """BFCL played by each model under BFCL's prompt and under the protocol it was trained with."""
    a = [_run("A", [1] * 20, protocol="bfcl"), _run("A", [1] * 20, protocol="tflan")]
    b = [_run("B", [0] * 20, protocol="bfcl"), _run("B", [0] * 20, protocol="toolllama")]
    rows = paired.compare(a, b)
    assert {(r.protocol_a, r.protocol_b) for r in rows} == {("bfcl", "bfcl"), ("tflan", "toolllama")}
    said = paired.headline(rows, "A", "B")
    assert "toolapi success in `bfcl` (" in said and "toolapi success in `tflan` / `toolllama` (" in said, said


def test_runs_sharing_a_protocol_are_compared_in_it():
    a = [_run("A", [1] * 20, protocol="tflan"), _run("A", [1] * 20, protocol="toolllama")]
    b = [_run("B", [0] * 20, protocol="toolllama")]
    rows = paired.compare(a, b)
    assert {(r.protocol_a, r.protocol_b) for r in rows} == {("toolllama", "toolllama")}


def test_hscore_is_paired_per_item_over_both_styles():
    from agentflan.eval.suites import combined_runs

    def h(name: str, react: list[int], general: list[int]) -> list[RunOutcomes]:
        return [RunOutcomes(name, f"agent-h/{style}", proto, {f"i{k}": {("hallucination_free", "all"): float(x)}
                                                               for k, x in enumerate(xs)})
                for style, proto, xs in (("react", "react", react), ("general", "tflan:inline", general))]

    rows = paired.compare(h("A", [1] * 10, [1] * 10), h("B", [0] * 10, [1] * 10), combine=combined_runs)
    hs = next(r for r in rows if r.metric == "hscore")
    assert (hs.n, hs.mean_a, hs.mean_b, hs.diff, hs.test) == (10, 1.0, 0.5, 0.5, "sign-flip")
    assert hs.p == pytest.approx(2 / 1024)


def test_the_same_logs_give_the_same_bytes():
    rng = random.Random(3)
    a = [rng.random() < 0.5 for _ in range(60)]
    b = [rng.random() < 0.4 for _ in range(60)]
    one = paired.table(paired.compare([_run("A", [int(x) for x in a])], [_run("B", [int(x) for x in b])]))
    two = paired.table(paired.compare([_run("A", [int(x) for x in a])], [_run("B", [int(x) for x in b])]))
    assert one == two


@pytest.fixture(scope="module")
def expert_and_random(tmp_path_factory):
    """Real logs: the expert and the random policy on the same 30 held-out toolapi tasks."""
    root = tmp_path_factory.mktemp("paired")
    for policy in ("expert", "random"):
        res = CliRunner().invoke(cli, ["eval", "toolapi", "--policy", policy, "-n", "30", "-o", str(root / policy)])
        assert res.exit_code == 0, res.output
    return root


def test_score_pairs_real_runs(expert_and_random):
    root = expert_and_random
    res = CliRunner().invoke(cli, ["score", str(root / "expert"), str(root / "random"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{"):])
    row = next(r for r in got["paired"] if r["stratum"] == "all")
    assert (row["a"], row["b"], row["group"], row["n"]) == ("expert", "random", "toolapi", 30)
    assert row["mean_a"] == 1.0 and row["diff"] > 0.8 and row["p"] < 1e-6 and row["significant"]
    res = CliRunner().invoke(cli, ["score", str(root / "expert"), str(root / "random")])
    assert "**paired comparisons**" in res.output and "| expert - random | toolapi |" in res.output


def test_score_of_identical_logs_pairs_to_zero(expert_and_random, tmp_path):
    shutil.copytree(expert_and_random / "random", tmp_path / "again")
    res = CliRunner().invoke(cli, ["score", str(expert_and_random / "random"), str(tmp_path / "again"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output[res.output.index("{"):])["paired"]
    assert rows and all(r["diff"] == 0 and r["p"] == 1.0 for r in rows)


def test_score_baseline_must_be_a_run(expert_and_random):
    res = CliRunner().invoke(cli, ["score", str(expert_and_random), "--baseline", "nobody"])
    assert res.exit_code != 0 and "not a run here" in res.output
    res = CliRunner().invoke(cli, ["score", str(expert_and_random), "--baseline", "random", "--json"])
    rows = json.loads(res.output[res.output.index("{"):])["paired"]
    assert {(r["a"], r["b"]) for r in rows} == {("expert", "random")}


def test_every_suite_gives_per_item_outcomes():
    from agentflan.eval.suites import outcomes

    teval = {"suite": "teval", "variant": "review_str", "protocol": "review_str",
             "verdict": {"parse_rate": 1.0, "review_quality": 0.0}}
    assert outcomes(teval) == {("parse_rate", "all"): 1.0, ("review_quality", "all"): 0.0, ("score", "all"): 0.0}
    instruct = {"suite": "teval", "variant": "instruct", "verdict": {"json_format_metric": 1, "json_args_em_metric": 0.5}}
    assert outcomes(instruct)[("score", "all")] == 0.75  # T-Eval's (format + args_em) / 2, for this item's format
    rru = {"suite": "teval", "variant": "rru_json", "verdict": {"thought": 0.9, "name": 1.0, "args": 0.2,
                                                                "parse_rate": 1.0}}
    assert outcomes(rru)[("score", "all")] == pytest.approx(0.7)
    bfcl = {"suite": "bfcl", "category": "simple_python", "verdict": {"valid": True, "official_valid": False}}
    assert outcomes(bfcl) == {("accuracy", "all"): 1.0, ("accuracy", "simple_python"): 1.0,
                              ("accuracy_official", "all"): 0.0}
    assert outcomes({"suite": "nobody", "verdict": {}}) == {}
