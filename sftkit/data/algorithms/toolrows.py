"""Tool conversations in the data stages: a row's natural-language text, and the whole conversation beside it.

A conversation with tool calls and results is one row. Its ``text`` is the markup of its human and
bot turns alone (calls and results left out): what the filters judge (detox, chop, grade, the final
clean and near-duplicate pass). The whole conversation rides along in the row's
:data:`COLUMN` as JSON ``{"messages": [OpenAI chat messages], "tools": [...]}``, its bot texts as the
text holds them (after the identity rewrite), and is written into the training file. Such a row is
never split or cut (a call stays with its result); a row whose only answers are calls has no bot
text, and the checks of answers (turn length, reading grade, reward) pass it unjudged.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sftkit.prompts import BOT, Turn, chat_messages, split_turns

COLUMN = "tool_messages"


def has_tool_turns(turns: list[Turn]) -> bool:
    return any(role in ("tool_call", "tool") for role, _ in turns)


def payload(turns: list[Turn], tools: list[dict] | None, text: str) -> str:
    """The conversation as the JSON of :data:`COLUMN`, its bot turns' texts replaced in order by those of
    ``text`` (its markup, as rewritten by the identity rules), each call given an id its result answers."""
    answers = iter([body for role, body in split_turns(text) if role == "bot"])
    turns = [(role, next(answers, body) if role == "bot" else body) for role, body in turns]
    messages, waiting, calls = chat_messages(turns), [], 0
    for message in messages:
        if "tool_calls" in message:
            message["tool_calls"] = [{"id": f"call_{calls + n}", "type": "function", "function": {
                "name": call["function"]["name"],
                "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}}
                for n, call in enumerate(message["tool_calls"])]
            calls += len(message["tool_calls"])
            waiting += [call["id"] for call in message["tool_calls"]]
        if message["role"] == "tool" and waiting:
            message["tool_call_id"] = waiting.pop(0)
        if message.get("tool_calls") and not message["content"]:
            message["content"] = None
    return json.dumps({"messages": messages, "tools": tools}, ensure_ascii=False)


def answerless(batch: pa.RecordBatch) -> np.ndarray:
    """Rows of tool conversations whose answers are all calls: no bot text for the answer checks to judge."""
    if COLUMN not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=bool)
    tool_rows = pc.is_valid(batch.column(COLUMN)).to_numpy(zero_copy_only=False)
    return tool_rows & ~pc.match_substring(batch.column("text"), BOT).to_numpy(zero_copy_only=False)
