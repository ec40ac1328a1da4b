"""agentflan's own format: one `Trajectory` per JSON line (or Parquet row), lossless.

Parquet rows (see the `parquet` writer) are decoded with its exact inverse, so both files read
back to the same trajectories. Top-level fields given as JSON strings are decoded too.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.io.base import Reader, RecordContext
from agentflan.io.files import base_suffix
from agentflan.schema import Trajectory, trajectory_from_dict

JSON_STRING_FIELDS = ("messages", "tools", "source", "lineage", "tags", "metadata")


class NativeReader(Reader):
    name: ClassVar[str] = "native"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        if not isinstance(record, dict):
            raise ParseError(f"expected an object, found {type(record).__name__}", reason="wrong_type")
        if base_suffix(ctx.raw.path) == ".parquet":
            from agentflan.io.writers.native import from_row

            return trajectory_from_dict(from_row(record))
        record = dict(record)
        for key in JSON_STRING_FIELDS:
            if isinstance(record.get(key), str):
                try:
                    record[key] = json.loads(record[key])
                except json.JSONDecodeError as e:
                    raise ParseError(f"not valid JSON: {e.msg}", reason="malformed_json", field=key) from e
        return trajectory_from_dict({k: v for k, v in record.items() if v is not None})
