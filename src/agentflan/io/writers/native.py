"""Lossless writers: `native` JSONL and `parquet` (typed columns, nested values as JSON strings).

Parquet keeps `messages` and `tools` as typed lists of structs so that Arrow tools can query
roles, contents and tool names, but stores tool-call `arguments`, tool `parameters`, `tags` and
every `metadata` as JSON strings: their shapes differ from record to record and Arrow would
otherwise unify them into sparse structs (mangling them). `from_row` is the exact inverse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from agentflan.errors import ConfigError, require
from agentflan.io.files import atomic_output, base_suffix
from agentflan.io.writers.base import Writer, WriteReport, dumps, encode_data
from agentflan.schema import ToolSpec, Trajectory
from agentflan.schema.trajectory import _fast_json_dict, _NotPlain, _plain, _tool_dict


class NativeWriter(Writer):
    name: ClassVar[str] = "native"

    def __init__(self) -> None:
        super().__init__()
        self._tools = _ToolCache()

    def record(self, traj: Trajectory) -> dict[str, Any]:
        return traj.to_json_dict()

    def encode(self, traj: Trajectory) -> str:
        try:
            return self.encode_bytes(traj).decode("utf-8")
        except UnicodeEncodeError:  # strings that are not text: the text as `dumps` writes it
            return dumps(self.record(traj))

    def encode_bytes(self, traj: Trajectory) -> bytes:
        """`dumps(self.record(traj))` as UTF-8, by `encode_data`, with the JSON of tool specs reused.

        A trajectory without floats (most: they are JSON data with no number but counts) skips
        `encode_data`'s look for floats it would write otherwise. Readers of single-tool-set formats
        (FireAct's search/lookup/finish, AgentBench's SQL tool) give every trajectory the same
        `ToolSpec` objects, and their JSON is a third of each record: it is encoded once and
        spliced in, while the spec is unchanged.
        """
        tools = traj.tools
        try:
            d = _fast_json_dict(traj, tools=False, floats=False)
        except _NotPlain:  # a float, or a value pydantic's JSON mode converts
            return encode_data(traj.to_json_dict())
        if not tools:
            return encode_data(d, floats=False)
        try:
            parts = [self._tools.json(t) for t in tools]
        except _NotPlain:
            return encode_data(traj.to_json_dict())
        head = {"schema_version": d.pop("schema_version"), "id": d.pop("id"), "messages": d.pop("messages")}
        # a JSON object is its members in order: '{head' + ', "tools": [...], ' + 'rest}'
        return b"".join((encode_data(head, floats=False)[:-1], b', "tools": [', b", ".join(parts), b"], ",
                         encode_data(d, floats=False)[1:]))


class _ToolCache:
    """The JSON (UTF-8) of `ToolSpec` objects seen more than once, checked against a copy of their
    fields at every use (a spec changed in place is encoded again). Bounded: it forgets everything
    when full, so objects that are seen once (a spec per record) only pass through."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._seen: dict[int, ToolSpec] = {}
        self._json: dict[int, tuple[ToolSpec, dict[str, Any], bytes]] = {}

    def json(self, t: ToolSpec) -> bytes:
        key = id(t)
        hit = self._json.get(key)
        if hit is not None and hit[0] is t and t.__dict__ == hit[1]:
            return hit[2]
        data = encode_data(_tool_dict(t))
        if self._seen.get(key) is t:
            fields = {k: _plain(v) for k, v in t.__dict__.items()}
            self._json[key] = (t, fields, data)
        else:
            if len(self._seen) >= self.LIMIT:
                self._seen.clear()
                self._json.clear()
            self._seen[key] = t  # held, so that its id is not reused while it is here
        return data


def _js(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _arrow_schema() -> Any:
    import pyarrow as pa

    call = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string()),
                      ("raw", pa.string()), ("parse_error", pa.string())])
    message = pa.struct([
        ("role", pa.string()), ("content", pa.string()), ("reasoning", pa.string()),
        ("tool_calls", pa.list_(call)), ("tool_call_id", pa.string()), ("name", pa.string()),
        ("loss", pa.bool_()), ("capability", pa.string()), ("metadata", pa.string())])
    tool = pa.struct([("name", pa.string()), ("description", pa.string()), ("parameters", pa.string()),
                      ("metadata", pa.string())])
    source = pa.struct([("format", pa.string()), ("path", pa.string()), ("line", pa.int64()),
                        ("original_id", pa.string()), ("dataset", pa.string())])
    return pa.schema([("schema_version", pa.int32()), ("id", pa.string()), ("messages", pa.list_(message)),
                      ("tools", pa.list_(tool)), ("source", source), ("lineage", pa.list_(pa.string())),
                      ("tags", pa.string()), ("metadata", pa.string())])


def to_row(traj: Trajectory) -> dict[str, Any]:
    d = traj.model_dump(mode="json")
    for m in d["messages"]:
        m["metadata"] = _js(m.get("metadata", {}))
        for c in m.get("tool_calls") or []:
            c["arguments"] = _js(c["arguments"])
    for t in d["tools"]:
        t["parameters"] = _js(t["parameters"])
        t["metadata"] = _js(t["metadata"])
    d["tags"] = _js(d["tags"])
    d["metadata"] = _js(d["metadata"])
    return d


_ROLE_FIELDS = {
    "system": {"role", "content", "loss", "metadata"},
    "user": {"role", "content", "loss", "metadata"},
    "assistant": {"role", "content", "reasoning", "tool_calls", "loss", "capability", "metadata"},
    "tool": {"role", "content", "tool_call_id", "name", "loss", "metadata"},
}


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    """Invert `to_row`: a dict that `Trajectory.model_validate` accepts."""
    d = dict(row)
    messages = []
    for m in d.get("messages") or []:
        keep = _ROLE_FIELDS.get(m.get("role"), set(m))
        m = {k: v for k, v in m.items() if k in keep and v is not None}
        if isinstance(m.get("metadata"), str):
            m["metadata"] = json.loads(m["metadata"])
        calls = []
        for c in m.get("tool_calls") or []:
            c = {k: v for k, v in c.items() if v is not None}
            if isinstance(c.get("arguments"), str):
                c["arguments"] = json.loads(c["arguments"])
            calls.append(c)
        if "tool_calls" in m:
            m["tool_calls"] = calls
        messages.append(m)
    d["messages"] = messages
    tools = []
    for t in d.get("tools") or []:
        t = dict(t)
        for k in ("parameters", "metadata"):
            if isinstance(t.get(k), str):
                t[k] = json.loads(t[k])
        tools.append(t)
    d["tools"] = tools
    for k in ("tags", "metadata"):
        if isinstance(d.get(k), str):
            d[k] = json.loads(d[k])
    if isinstance(d.get("source"), dict):
        d["source"] = {k: v for k, v in d["source"].items() if v is not None}
    return d


class ParquetWriter(Writer):
    name: ClassVar[str] = "parquet"
    suffixes: ClassVar[tuple[str, ...]] = (".parquet",)
    batch_size: ClassVar[int] = 1024

    def record(self, traj: Trajectory) -> dict[str, Any]:
        return to_row(traj)

    def write(self, trajectories: Iterable[Trajectory], path: str | Path) -> WriteReport:
        require("pyarrow", "parquet")
        import pyarrow.parquet as pq

        path = Path(path)
        if base_suffix(str(path)) != ".parquet" or path.name.lower().endswith((".gz", ".zst")):
            raise ConfigError(f"the parquet writer writes .parquet files (compressed internally), not {path}")
        schema = _arrow_schema()
        batch: list[dict[str, Any]] = []
        with atomic_output(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            for traj in trajectories:
                try:
                    batch.append(self.record(traj))
                except UnicodeEncodeError:  # pydantic's JSON mode refuses lone surrogates
                    self.report.unwritable["invalid_unicode"] += 1
                    continue
                if len(batch) >= self.batch_size:
                    out.write_table(self._table(batch, schema))
                    batch = []
            if batch or self.report.written == 0:
                out.write_table(self._table(batch, schema))
        return self.report

    def _table(self, batch: list[dict[str, Any]], schema: Any) -> Any:
        """The batch as a table; records Arrow cannot encode (lone surrogates) are counted, not written."""
        import pyarrow as pa

        try:
            table = pa.Table.from_pylist(batch, schema=schema)
        except UnicodeEncodeError:  # rare: find the records at fault one by one
            good = []
            for rec in batch:
                try:
                    pa.Table.from_pylist([rec], schema=schema)
                except UnicodeEncodeError:
                    self.report.unwritable["invalid_unicode"] += 1
                    continue
                good.append(rec)
            table = pa.Table.from_pylist(good, schema=schema)
        self.report.written += table.num_rows
        return table
