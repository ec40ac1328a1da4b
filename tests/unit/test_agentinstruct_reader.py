"""AgentInstruct records of all six tasks: context kept untrained, actions parsed, round trip."""

from __future__ import annotations

import pytest

from agentflan.io import convert, read
from agentflan.schema import AssistantMessage, ToolMessage, UserMessage
from tests.helpers import read_jsonl, write_jsonl


def _h(v, loss=None):
    return {"from": "human", "loss": loss, "value": v}


def _g(v, loss=True):
    return {"from": "gpt", "loss": loss, "value": v}


RECORDS = [
    {"id": "os_0", "conversations": [
        _h("You are an assistant that will act like a person operating a Linux shell..."),
        _g("Think: demo.\n\nAct: bash\n\n```bash\nls /etc\n```", False),
        _h("The output of the OS:\n220"),
        _g("Think: done.\n\nAct: answer(220)", False),
        _h("Now, I will start a new problem. My problem is:\n\nHow many .log files are there?"),
        _g("Think: list them.\n\nAct: bash\n\n```bash\nls *.log | wc -l\n```"),
        _h("The output of the OS:\n3"),
        _g("Think: there are 3.\n\nAct: answer(3)")]},
    {"id": "db_7", "conversations": [
        _h("I will ask you a question, then you should help me operate a MySQL database..."),
        _g("Ok.", False),
        _h("What is the highest score?\nThe name of this table is scores, and the headers are name, score."),
        _g("I select the maximum.\nAction: Operation\n```sql\nSELECT MAX(`score`) FROM `scores`;\n```"),
        _h("[(97,)]"),
        _g("The maximum is 97.\nAction: Answer\nFinal Answer: [\"97\"]")]},
    {"id": "kg_3", "conversations": [
        _h("You are an agent that answers questions based on the knowledge stored in a knowledge base..."),
        _g("I've understood your instruction, start please.", False),
        _h("Question: who is the spouse of Barack Obama? Entities: [Barack Obama]"),
        _g("Thought: I look at the relations of Barack Obama.\nAction: get_relations(Barack Obama)"),
        _h("Observation: [people.person.spouse_s, people.person.children]"),
        _g("Thought: I follow spouse_s.\nAction: get_neighbors(Barack Obama, people.person.spouse_s)"),
        _h("Observation: variable #0, which are instances of people.person"),
        _g("Thought: #0 is the answer.\nFinal Answer: #0")]},
    {"id": "webshop_5", "conversations": [
        _h("You are web shopping. I will give you instructions about what to do..."),
        _g("Ok.", False),
        _h("WebShop [SEP] Instruction: [SEP] i need a red mug under 10 dollars [SEP] Search"),
        _g("Thought:\nI should search for a red mug.\n\nAction:\nsearch[red mug]"),
        _h("Instruction: [SEP] ... [SEP] B078GWRC1J [SEP] Red Mug [SEP] $8.99"),
        _g("Thought:\nThe first item fits.\n\nAction:\nclick[B078GWRC1J]"),
        _h("Instruction: [SEP] ... [SEP] Buy Now"),
        _g("Thought:\nBuy it.\n\nAction:\nclick[Buy Now]")]},
    {"id": "alfworld_2", "conversations": [
        _h("Interact with a household to solve a task. ..."),
        _g("OK", False),
        _h("You are in the middle of a room. Your task is to: put a clean apple in fridge."),
        _g("Thought: first find an apple.\nAction: go to countertop 1"),
        _h("On the countertop 1, you see a apple 1."),
        _g("Thought: take it.\nAction: take apple 1 from countertop 1"),
        _h("You pick up the apple 1 from the countertop 1."),
        _g("Thought: clean it.\nAction: clean apple 1 with sinkbasin 1")]},
    {"id": "mind2web_9", "conversations": [
        _h("'''\n<html> ... </html>\n'''\n\nBased on the HTML webpage above, try to complete the following task:\n"
           "Task: Find flights to Tokyo\nWhat should be the next action? choose from: A. None B. <input> C. <a>"),
        _g("Thought: The destination field must be filled.\nAnswer: B.\nAction: TYPE\nValue: Tokyo")]},
]


@pytest.fixture
def path(tmp_path):
    return write_jsonl(tmp_path / "agentinstruct.jsonl", RECORDS)


def test_all_tasks_parse_without_quarantine(path, tmp_path):
    result = convert(str(path), tmp_path / "n.jsonl", to="native")
    assert result.reader == "agentinstruct"
    assert (result.read.records, result.read.converted) == (6, 6)


def test_context_is_untrained_and_observations_are_tool_results(path):
    trajs = {t.id: t for t in read(str(path), "agentinstruct", on_error="raise")}
    os_ = trajs["os_0"]
    assert os_.tags == {"task": "os", "final_tool": "answer"}
    kinds = [type(m).__name__ for m in os_.messages]
    assert kinds == ["UserMessage", "AssistantMessage", "ToolMessage", "AssistantMessage", "UserMessage",
                     "AssistantMessage", "ToolMessage", "AssistantMessage"]
    demo = [m for m in os_.messages[:4] if isinstance(m, AssistantMessage)]
    assert all(not m.loss for m in demo)
    assert [m.loss for m in os_.messages[4:] if isinstance(m, AssistantMessage)] == [True, True]
    # a human turn after a terminal action is a new request, not a tool result
    assert isinstance(os_.messages[4], UserMessage)
    db_ = trajs["db_7"]
    assert isinstance(db_.messages[4], ToolMessage) and db_.messages[4].name == "operation"
    last = db_.messages[-1]
    assert isinstance(last, AssistantMessage) and last.tool_calls[0].arguments == {"answer": ["97"]}
    alf = trajs["alfworld_2"]
    assert [c.name for m in alf.messages if isinstance(m, AssistantMessage) for c in m.tool_calls] == [
        "go_to", "take", "clean"]


def test_round_trip_back_to_agentinstruct_is_exact(path, tmp_path):
    convert(str(path), tmp_path / "n.jsonl", to="native", on_error="raise")
    convert(str(tmp_path / "n.jsonl"), tmp_path / "back.jsonl", fmt="native", to="agentinstruct", on_error="raise")
    assert read_jsonl(tmp_path / "back.jsonl") == RECORDS


def test_task_option_for_unprefixed_ids(tmp_path):
    rec = dict(RECORDS[3], id="shop-1")
    p = write_jsonl(tmp_path / "x.jsonl", [rec])
    assert list(read(str(p), "agentinstruct", on_error="skip")) == []
    (t,) = read(str(p), "agentinstruct", on_error="raise", task="webshop")
    assert t.tags["task"] == "webshop"
