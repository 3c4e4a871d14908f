"""Tool conversations in the data stages: the whole conversation beside its natural-language text."""
import json

import pyarrow as pa

from sftkit import rows
from sftkit.data.algorithms import toolrows

CALL = '{"name": "area", "arguments": {"w": 2, "h": 3}}'
TURNS = [("system", "Use tools."), ("human", "Area of a 2x3 rectangle?"), ("bot", "Let me see."), ("tool_call", CALL),
         ("tool_call", CALL.replace("2", "4")), ("tool", '{"area": 6}'), ("tool", '{"area": 12}'), ("bot", "6, or 12.")]
TOOLS = [{"type": "function", "function": {"name": "area", "parameters": {"type": "object"}}}]


def test_the_payload_reads_back_as_the_same_conversation_with_the_rewritten_answers():
    text = "<human>: Area of a 2x3 rectangle?\n<bot>: Let me look.\n<bot>: 6, or 12."  # answers as rewritten
    conversation = json.loads(toolrows.payload(TURNS, TOOLS, text))
    assert conversation["tools"] == TOOLS
    called = conversation["messages"][2]
    assert called["content"] == "Let me look." and [c["id"] for c in called["tool_calls"]] == ["call_0", "call_1"]
    assert called["tool_calls"][0] == {"id": "call_0", "type": "function",
                                       "function": {"name": "area", "arguments": '{"w": 2, "h": 3}'}}
    assert [m.get("tool_call_id") for m in conversation["messages"][3:5]] == ["call_0", "call_1"]
    want = [(role, "Let me look." if body == "Let me see." else body) for role, body in TURNS]
    assert rows.message_turns(conversation["messages"]) == want


def test_only_tool_rows_without_bot_text_are_answerless():
    batch = pa.record_batch({"text": ["<human>: q", "<human>: q\n<bot>: a", "<human>: q"],
                             toolrows.COLUMN: ["{}", "{}", None]})
    assert toolrows.answerless(batch).tolist() == [True, False, False]
    assert toolrows.answerless(batch.drop_columns([toolrows.COLUMN])).tolist() == [False, False, False]
