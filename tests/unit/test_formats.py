from __future__ import annotations

import pytest

from agentflan.errors import ParseError
from agentflan.formats.agentinstruct import DIALECTS, dialect_for
from agentflan.formats.react import parse_bracket, parse_toolllama, render_bracket, render_toolllama


@pytest.mark.parametrize("text", [
    "\nThought: I should search.\nAction: get_x_for_y\nAction Input: {\n  \"q\": \"a b\"\n}",
    "\nThought: multi\nline thought\n\nAction: Finish\nAction Input: {\"return_type\": \"give_answer\"}",
])
def test_toolllama_round_trip(text):
    s = parse_toolllama(text)
    assert s.name and s.parse_error is None
    assert render_toolllama(s.thought, s.name, raw_arguments=s.raw_arguments) == text


def test_toolllama_bad_json_is_kept_with_error():
    s = parse_toolllama("\nThought: t\nAction: f\nAction Input: {oops")
    assert s.arguments == {} and s.raw_arguments == "{oops" and "not valid JSON" in (s.parse_error or "")


def test_toolllama_missing_action_input_raises():
    with pytest.raises(ParseError, match="Action Input"):
        parse_toolllama("Thought: t\nAction: f")


def test_toolllama_plain_answer_is_verbatim():
    assert parse_toolllama("Just an answer.\n").thought == "Just an answer.\n"


@pytest.mark.parametrize("text", [
    "Thought: find it\nAction: search[Badr Hari]",
    "Thought: a\nb\nAction: lookup[K-1]",
    "Action: finish[yes]",
    "Thought: nested [brackets] ok\nAction: finish[a [b] c]",
])
def test_bracket_round_trip(text):
    s = parse_bracket(text)
    assert render_bracket(s.thought, s.name, s.arguments) == text


def test_bracket_unparseable_action_raises():
    with pytest.raises(ParseError):
        parse_bracket("Thought: t\nAction: search(x)")


AGENTINSTRUCT_CASES = {
    "os": [("Think: list files.\n\nAct: bash\n\n```bash\nls -la /etc | wc -l\n```", "bash",
            {"script": "ls -la /etc | wc -l"}),
           ("Think: done.\n\nAct: answer(220)", "answer", {"answer": "220"}),
           ("Think: all set.\n\nAct: finish", "finish", {})],
    "db": [("I need the max.\nAction: Operation\n```sql\nSELECT MAX(`a`) FROM `t`;\n```", "operation",
            {"sql": "SELECT MAX(`a`) FROM `t`;"}),
           ("The answer is 3.\nAction: Answer\nFinal Answer: [\"3\"]", "answer", {"answer": ["3"]})],
    "kg": [("Thought: relations first.\nAction: get_relations(Barack Obama)", "get_relations",
            {"variable": "Barack Obama"}),
           ("Thought: join.\nAction: get_neighbors(#0, people.person.spouse_s)", "get_neighbors",
            {"variable": "#0", "relation": "people.person.spouse_s"}),
           ("Thought: #3 is it.\nFinal Answer: #3", "final_answer", {"answer": "#3"})],
    "webshop": [("Thought:\nI should search.\n\nAction:\nsearch[red mug under 10 dollars]", "search",
                 {"keywords": "red mug under 10 dollars"}),
                ("Thought:\nThis one fits.\n\nAction:\nclick[B078GWRC1J]", "click", {"target": "B078GWRC1J"})],
    "alfworld": [("Thought: the apple may be in the fridge.\nAction: go to fridge 1", "go_to",
                  {"receptacle": "fridge 1"}),
                 ("Thought: take it.\nAction: take apple 1 from fridge 1", "take",
                  {"object": "apple 1", "receptacle": "fridge 1"}),
                 ("Thought: put.\nAction: put apple 1 in/on countertop 2", "put",
                  {"object": "apple 1", "preposition": "in/on", "receptacle": "countertop 2"}),
                 ("Thought: hmm.\nAction: look", "look", {})],
    "mind2web": [("Thought: the search box.\nAnswer: C.\nAction: TYPE\nValue: Tokyo", "choose",
                  {"option": "C", "operation": "TYPE", "value": "Tokyo"}),
                 ("Thought: none fits.\nAnswer: A.", "choose", {"option": "A"})],
}


@pytest.mark.parametrize(("task", "text", "name", "args"),
                         [(t, *c) for t, cases in AGENTINSTRUCT_CASES.items() for c in cases])
def test_agentinstruct_dialects_parse_and_render(task, text, name, args):
    d = DIALECTS[task]
    s = d.parse(text)
    assert (s.name, s.arguments) == (name, args)
    assert name in {t.name for t in d.tools}
    assert d.render(s.thought, s.name, s.arguments) == text


@pytest.mark.parametrize(("task", "text"), [
    ("os", "Think: x\n\nAct: python\n\nprint(1)"),
    ("alfworld", "Thought: x\nAction: fly to the moon"),
    ("kg", "Thought: x\nAction: get_neighbors(#0)"),
    ("webshop", "Thought:\nx\n\nAction:\nbuy[now]"),
])
def test_agentinstruct_unparseable_actions_raise(task, text):
    with pytest.raises(ParseError):
        DIALECTS[task].parse(text)


def test_agentinstruct_plain_turns_are_not_actions():
    assert DIALECTS["webshop"].parse("OK.").name is None


def test_dialect_from_id_or_option():
    assert dialect_for("alfworld_12").task == "alfworld"
    assert dialect_for("x", "kg").task == "kg"
    with pytest.raises(ParseError, match="task"):
        dialect_for("mystery_1")
