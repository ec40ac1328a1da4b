"""xLAM/APIGen and Hermes function-calling readers, on fixtures written in the released shapes.

The fixtures follow the dataset cards of Salesforce/xlam-function-calling-60k (tools and answers
as JSON strings, APIGen's Python-typed parameters) and NousResearch/hermes-function-calling-v1
(`<tools>` in the system prompt as a Python literal, `<tool_call>` and `<tool_response>` blocks);
the rows are written here, not copied.
"""

from __future__ import annotations

import json

import pytest

from agentflan.io import WRITERS, convert, detect, read
from agentflan.schema import AssistantMessage, ToolMessage
from tests.helpers import write_jsonl

XLAM_ROWS = [
    {"id": 0, "query": "Where can I find live giveaways for beta access and games?",
     "answers": json.dumps([{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}},
                            {"name": "live_giveaways_by_type", "arguments": {"type": "game"}}]),
     "tools": json.dumps([{"name": "live_giveaways_by_type",
                           "description": "Retrieve live giveaways from the GamerPower API based on the specified type.",
                           "parameters": {"type": {"description": "The type of giveaways to retrieve (e.g., game, "
                                                                  "loot, beta).", "type": "str", "default": "game"}}}])},
    {"id": 1, "query": "Merge the sorted lists [1, 4] and [2, 3], then find the 2 largest of [7, 1, 9].",
     "answers": json.dumps([{"name": "merge_sorted_lists", "arguments": {"list1": [1, 4], "list2": [2, 3]}},
                            {"name": "find_n_largest_numbers", "arguments": {"nums": [7, 1, 9], "n": 2}}]),
     "tools": json.dumps([
         {"name": "merge_sorted_lists", "description": "Merges two sorted lists into a single sorted list.",
          "parameters": {"list1": {"description": "The first sorted list.", "type": "List[int]"},
                         "list2": {"description": "The second sorted list.", "type": "List[int]"}}},
         {"name": "find_n_largest_numbers", "description": "Finds the n largest numbers in a list.",
          "parameters": {"nums": {"description": "The list of numbers.", "type": "List[int]"},
                         "n": {"description": "The number of largest numbers to find.", "type": "int"},
                         "key": {"description": "A sort key.", "type": "Callable, optional"}}}])},
    {"id": 2, "query": "Book me a table for two in Rome tonight.", "answers": "[]",
     "tools": json.dumps([{"name": "get_weather", "description": "Current weather of a city.",
                           "parameters": {"city": {"description": "City name.", "type": "str"}}}])},
]

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    "values to plug into functions.\n<tools>\n{tools}\n</tools>\nFor each function call return a json object with "
    "function name and arguments within <tool_call> </tool_call> tags with the following schema:\n<tool_call>\n"
    "{{'arguments': <args-dict>, 'name': <function-name>}}\n</tool_call>\n")
CAMERA_TOOLS = [{"type": "function", "function": {
    "name": "get_camera_live_feed", "description": "Retrieves the live feed from a specified security camera.",
    "parameters": {"type": "object", "properties": {
        "camera_id": {"type": "string", "description": "The unique identifier for the camera."},
        "stream_quality": {"type": "string", "enum": ["720p", "1080p", "4k"]}}, "required": ["camera_id"]}}}]
HERMES_ROWS = [
    {"id": "85f6c398-69c7-4df2-aed1-29d614a93a26", "category": "IoT and Home Automation",
     "subcategory": "Security Camera Management", "task": "View and Manage Security Camera Feeds",
     "conversations": [
         {"from": "system", "value": HERMES_SYSTEM.format(tools=str(CAMERA_TOOLS))},  # Python literal, as released
         {"from": "human", "value": "Show me the front door and garage cameras in 1080p."},
         {"from": "gpt", "value": "<tool_call>\n{'arguments': {'camera_id': 'front_door', 'stream_quality': "
                                  "'1080p'}, 'name': 'get_camera_live_feed'}\n</tool_call>\n<tool_call>\n"
                                  "{'arguments': {'camera_id': 'garage', 'stream_quality': '1080p'}, "
                                  "'name': 'get_camera_live_feed'}\n</tool_call>\n"}]},
    {"id": "glaive-7", "conversations": [
        {"from": "system", "value": HERMES_SYSTEM.format(tools=json.dumps([{
            "name": "convert_currency", "description": "Convert an amount between currencies",
            "parameters": {"type": "object", "properties": {"amount": {"type": "number"},
                                                            "from": {"type": "string"}, "to": {"type": "string"}},
                           "required": ["amount", "from", "to"]}}]))},
        {"from": "human", "value": "How much is 100 USD in EUR?"},
        {"from": "gpt", "value": "Let me convert that.\n<tool_call>\n{\"name\": \"convert_currency\", \"arguments\": "
                                 "{\"amount\": 100, \"from\": \"USD\", \"to\": \"EUR\"}}\n</tool_call>"},
        {"from": "tool", "value": "<tool_response>\n{\"name\": \"convert_currency\", \"content\": "
                                  "{\"converted_amount\": 92.5, \"currency\": \"EUR\"}}\n</tool_response>"},
        {"from": "gpt", "value": "100 USD is 92.50 EUR."}]},
    {"id": "json-mode-1", "conversations": [
        {"from": "system", "value": "You are a helpful assistant that answers in JSON. <schema>{}</schema>"},
        {"from": "human", "value": "Give me an empty object."}, {"from": "gpt", "value": "{}"}]},
]


def test_xlam_rows_become_parallel_calls_with_json_schema_tools(tmp_path):
    path = write_jsonl(tmp_path / "xlam.jsonl", XLAM_ROWS)
    assert detect(str(path)) == "xlam"
    t0, t1, t2 = read(str(path), on_error="raise")
    assert [c.arguments for c in t0.messages[1].tool_calls] == [{"type": "beta"}, {"type": "game"}]
    assert t0.tools[0].parameters == {"type": "object", "properties": {"type": {
        "type": "string", "description": "The type of giveaways to retrieve (e.g., game, loot, beta).",
        "default": "game"}}}
    largest = t1.tools[1].parameters
    assert largest["properties"]["nums"]["type"] == "array" and largest["properties"]["nums"]["items"] == {
        "type": "integer"}
    assert largest["required"] == ["nums", "n"] and "type" not in largest["properties"]["key"]
    assert [m.role for m in t2.messages] == ["user"] and t2.tags == {"no_call": "true"}
    assert t0.id == "0" and t0.source.format == "xlam"


def test_hermes_tags_become_tools_calls_and_results(tmp_path):
    path = write_jsonl(tmp_path / "hermes.jsonl", HERMES_ROWS)
    assert detect(str(path)) == "hermes"
    cam, glaive, plain = read(str(path), on_error="raise")
    assert [t.name for t in cam.tools] == ["get_camera_live_feed"] and "Retrieves" not in cam.messages[0].content
    assert "function calling AI model" in cam.messages[0].content  # the rest of the prompt is kept
    calls = cam.messages[2].tool_calls
    assert [c.arguments["camera_id"] for c in calls] == ["front_door", "garage"] and cam.messages[2].content == ""
    assert cam.metadata["category"] == "IoT and Home Automation"
    call_turn, result, answer = glaive.messages[2:]
    assert isinstance(call_turn, AssistantMessage) and call_turn.content == "Let me convert that."
    assert isinstance(result, ToolMessage) and result.tool_call_id == call_turn.tool_calls[0].id
    assert json.loads(result.content) == {"converted_amount": 92.5, "currency": "EUR"}
    assert result.name == "convert_currency" and answer.content == "100 USD is 92.50 EUR."
    assert plain.tools == [] and plain.messages[-1].content == "{}"


def test_hermes_reads_the_model_card_prompt_with_objects_separated_by_spaces(tmp_path):
    """The Hermes 2 Pro / Hermes 3 model cards put each tool object after the other in `<tools>`."""
    fn = {"type": "function", "function": {"name": "get_stock_fundamentals", "description": "Fundamentals.",
                                           "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}},
                                                          "required": ["symbol"]}}}
    fn2 = {"type": "function", "function": {"name": "get_price", "description": "Price.",
                                            "parameters": {"type": "object", "properties": {}}}}
    system = ("You are a function calling AI model. You are provided with function signatures within <tools></tools> "
              f"XML tags. Here are the available tools: <tools> {json.dumps(fn)} {json.dumps(fn2)}\n </tools> Use the "
              "following pydantic model json schema for each tool call you will make.")
    rows = [{"conversations": [{"from": "system", "value": system}, {"from": "human", "value": "TSLA?"},
                               {"from": "gpt", "value": '<tool_call>\n{"arguments": {"symbol": "TSLA"}, '
                                                        '"name": "get_stock_fundamentals"}\n</tool_call>'}]},
            {"conversations": [{"from": "system", "value": "<tools> {\"a\": 1} [2] </tools>"},
                               {"from": "human", "value": "q"}]}]
    path = write_jsonl(tmp_path / "card.jsonl", rows)
    (t,) = read(str(path), "hermes", on_error="skip")  # objects and a list mixed: not the model-card form
    assert [x.name for x in t.tools] == ["get_stock_fundamentals", "get_price"]
    assert t.messages[2].tool_calls[0].arguments == {"symbol": "TSLA"}
    assert "<tools></tools> XML tags" in t.messages[0].content and "get_price" not in t.messages[0].content


@pytest.mark.parametrize(("reader", "record", "reason"), [
    ("xlam", {"query": "q", "tools": "[", "answers": "[]"}, "bad_tools"),
    ("xlam", {"query": "q", "tools": "[]", "answers": json.dumps([{"name": "nope", "arguments": {}}])},
     "undeclared_tool"),
    ("xlam", {"query": "q", "tools": "[]", "answers": json.dumps([{"name": "f", "arguments": "{oops"}])},
     "unparseable_action"),
    ("xlam", {"query": "q", "answers": "[]"}, "missing_key"),
    ("hermes", {"conversations": [{"from": "human", "value": "q"},
                                  {"from": "gpt", "value": "<tool_call>\n{'name': 'f', 'arguments': \n</tool_call>"}]},
     "unparseable_action"),
    ("hermes", {"conversations": [{"from": "human", "value": "q"},
                                  {"from": "tool", "value": "<tool_response>{}</tool_response>"}]},
     "orphan_tool_result"),
    ("hermes", {"conversations": [{"from": "system", "value": "<tools>[{'name': }]</tools>"}]}, "bad_tools"),
    ("hermes", {"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role"),
])
def test_bad_function_calling_records_are_quarantined_with_a_reason(tmp_path, reader, record, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    res = convert(str(path), tmp_path / "out.jsonl", fmt=reader)
    assert (res.read.converted, res.read.quarantined, dict(res.read.rejected)) == (0, 1, {reason: 1})
    quarantined = json.loads((tmp_path / "out.quarantine.jsonl").read_text())
    assert quarantined["reason"] == reason and "bad.jsonl:1" in quarantined["origin"]


def test_function_calling_data_converts_to_every_chat_writer(tmp_path):
    path = write_jsonl(tmp_path / "hermes.jsonl", HERMES_ROWS)
    xlam = write_jsonl(tmp_path / "xlam.jsonl", XLAM_ROWS)
    for name in ("openai", "hf", "sharegpt", "agentflan"):
        res = convert([str(path)], tmp_path / f"h.{name}.jsonl", to=name)
        assert res.write.written == 3, name
        res = convert([str(xlam)], tmp_path / f"x.{name}.jsonl", to=name)
        # the no-call row has no assistant turn: LLaMA-Factory cannot train it
        assert res.write.written + sum(res.write.unwritable.values()) == 3, name
    assert WRITERS.get("sharegpt")
