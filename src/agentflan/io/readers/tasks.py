"""Task files that hold prompts, not trajectories: ToolBench queries and AgentBench DB tasks.

They become prompt-only trajectories (system + user, no assistant turn) with the tools offered
and the reference kept in `metadata`, ready for evaluation or for generating trajectories.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.formats.agentinstruct import AGENTBENCH_DB_PROMPT, DIALECTS
from agentflan.io.base import Reader, RecordContext, as_text, optional_key, require_key
from agentflan.schema import Message, SystemMessage, ToolSpec, Trajectory, UserMessage


def toolbench_function_name(tool_name: str, api_name: str) -> str:
    """ToolBench's function naming: `<api>_for_<tool>`, lower snake case."""
    def norm(s: str) -> str:
        s = re.sub(r"[^0-9a-zA-Z_]+", "_", s.strip()).strip("_").lower()
        return s or "unnamed"
    return f"{norm(api_name)}_for_{norm(tool_name)}"


class ToolBenchQueryReader(Reader):
    """ToolBench instruction files (`query`, `api_list`, `relevant APIs`, `query_id`)."""

    name: ClassVar[str] = "toolbench_query"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        query = as_text(require_key(record, "query", str), "query")
        tools = []
        for j, api in enumerate(optional_key(record, "api_list", list, default=[])):
            where = f"api_list[{j}]"
            tool = require_key(api, "tool_name", str, where)
            api_name = require_key(api, "api_name", str, where)
            props: dict[str, Any] = {}
            required = []
            for kind in ("required_parameters", "optional_parameters"):
                for p in optional_key(api, kind, list, where, []):
                    if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                        raise ParseError("parameter without a name", reason="bad_tools", field=f"{where}.{kind}")
                    props[p["name"]] = {"type": str(p.get("type", "string")).lower(),
                                        "description": p.get("description", "")}
                    if kind == "required_parameters":
                        required.append(p["name"])
            tools.append(ToolSpec(
                name=toolbench_function_name(tool, api_name),
                description=optional_key(api, "api_description", str, where, "").strip(),
                parameters={"type": "object", "properties": props, "required": required},
                metadata={k: api[k] for k in ("category_name", "tool_name", "api_name", "method") if k in api}))
        meta: dict[str, Any] = {}
        relevant = optional_key(record, "relevant APIs", list)
        if relevant is not None:
            if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in relevant):
                raise ParseError("each relevant API is a [tool name, API name] pair", reason="wrong_type",
                                 field="relevant APIs")
            meta["relevant_apis"] = [toolbench_function_name(t, a) for t, a in relevant]
        rid = record.get("query_id")
        return Trajectory(id=f"query:{rid}" if rid is not None else ctx.default_id(),
                          messages=[UserMessage(content=query)], tools=tools,
                          source=ctx.source(str(rid) if rid is not None else None),
                          lineage=[f"read:{self.name}"], tags={"kind": "prompt"}, metadata=meta)


class DBBenchReader(Reader):
    """AgentBench DB tasks (`description`, `label`, `table`, `type`, optional `add_description`)."""

    name: ClassVar[str] = "dbbench"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        description = as_text(require_key(record, "description", str), "description")
        table = require_key(record, "table", dict)
        name = require_key(table, "table_name", str, "table")
        info = require_key(table, "table_info", dict, "table")
        columns = require_key(info, "columns", list, "table.table_info")
        kinds = optional_key(record, "type", list) or ["other"]
        prompt = f"{description}\n{record.get('add_description') or ''}".rstrip()
        prompt += f"\nThe name of this table is {name}, and the headers of this table are " + ", ".join(
            str(c.get("name")) for c in columns if isinstance(c, dict)) + "."
        messages: list[Message] = [SystemMessage(content=AGENTBENCH_DB_PROMPT.strip()), UserMessage(content=prompt)]
        return Trajectory(
            id=ctx.default_id(), messages=messages, tools=list(DIALECTS["db"].tools),
            source=ctx.source(), lineage=[f"read:{self.name}"],
            tags={"kind": "prompt", "task": "db", "db_type": str(kinds[0])},
            metadata={k: record[k] for k in ("label", "table", "type", "answer_md5", "sql") if k in record})
