"""OpenAssistant message trees: build them, prune them, flatten them into conversations, rank pairs.

Everything is linear in the number of messages: one pass builds a tree (from the nested export or
from the flat oasst1 table), one prunes it, one post-order pass marks which replies lead to an
answer, and one walk emits the conversations. (h2oGPT's flattening compares every pair of partial
conversations, quadratic in a tree's size.)
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from sftkit.prompts import BOT, HUMAN, Turn

ROLES = {"prompter": "human", "assistant": "bot"}
EXPORTABLE_STATES = (None, "ready_for_export")


@dataclass
class Message:
    id: str
    role: str  # "prompter" or "assistant"
    text: str
    lang: str | None = None
    deleted: bool = False
    review_result: bool | None = None
    rank: int | None = None
    children: list["Message"] = field(default_factory=list)


def _optional(value):
    """None for missing values, including the NaN that parquet/pandas give for a null number."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def message_from(record) -> Message | str:
    """A Message from one export/table record, or the reason it is malformed."""
    if not isinstance(record, dict):
        return "message_not_an_object"
    message_id, role, text = record.get("message_id"), record.get("role"), record.get("text")
    if not isinstance(message_id, str) or not message_id:
        return "message_missing_id"
    if role not in ROLES:
        return "message_bad_role"
    if not isinstance(text, str):
        return "message_missing_text"
    rank = _optional(record.get("rank"))
    review = _optional(record.get("review_result"))
    lang = _optional(record.get("lang"))
    return Message(id=message_id, role=role, text=text, lang=lang if isinstance(lang, str) else None,
                   deleted=bool(_optional(record.get("deleted"))),
                   review_result=None if review is None else bool(review),
                   rank=int(rank) if isinstance(rank, (int, float)) and not isinstance(rank, bool) else None)


def from_nested(prompt) -> tuple[Message | None, Counter]:
    """The tree under an export line's ``prompt``; malformed messages are left out with their replies."""
    problems: Counter = Counter()
    root = message_from(prompt)
    if isinstance(root, str):
        problems[root] += 1
        return None, problems
    stack = [(prompt, root)]
    while stack:
        record, node = stack.pop()
        replies = record.get("replies") or []
        if not isinstance(replies, list):
            problems["replies_not_a_list"] += 1
            continue
        for reply in replies:
            child = message_from(reply)
            if isinstance(child, str):
                problems[child] += 1
                continue
            node.children.append(child)
            stack.append((reply, child))
    return root, problems


def from_flat(records: list[dict]) -> tuple[Message | None, Counter]:
    """The tree of one ``message_tree_id`` from flat table rows (``parent_id`` links), in row order."""
    problems: Counter = Counter()
    nodes: dict[str, Message] = {}
    parents: list[tuple[Message, object]] = []
    for record in records:
        node = message_from(record)
        if isinstance(node, str):
            problems[node] += 1
        elif node.id in nodes:
            problems["duplicate_message_id"] += 1
        else:
            nodes[node.id] = node
            parents.append((node, _optional(record.get("parent_id"))))
    roots = [node for node, parent in parents if parent is None]
    for node, parent in parents:
        if parent is not None and parent in nodes:
            nodes[parent].children.append(node)
    if len(roots) != 1:
        problems["no_root" if not roots else "several_roots"] += 1
        return None, problems
    unreachable = len(nodes) - sum(1 for _ in _walk(roots[0]))  # a missing parent, or a cycle
    if unreachable:
        problems["orphan_message"] += unreachable
    return roots[0], problems


def _walk(root: Message):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _size(root: Message) -> int:
    return sum(1 for _ in _walk(root))


def _removal_reason(node: Message, parent_role: str | None, langs: frozenset[str] | None) -> str | None:
    if node.deleted:
        return "deleted"
    if node.review_result is False:
        return "review_rejected"
    if langs is not None and node.lang is not None and node.lang not in langs:
        return "language"
    if node.role == parent_role or (parent_role is None and node.role != "prompter"):
        return "role_order"
    if not node.text.strip():
        return "empty_text"
    if HUMAN in node.text or BOT in node.text:
        return "turn_marker_in_text"
    return None


def prune(root: Message, langs: frozenset[str] | None) -> tuple[Message | None, Counter]:
    """Remove deleted, review-rejected, other-language and out-of-order messages with their subtrees.

    ``langs`` None keeps every language. Returns the root (None when the root itself goes) and the
    number of messages removed per reason, each removed subtree counted in full under its reason.
    """
    removed: Counter = Counter()
    reason = _removal_reason(root, None, langs)
    if reason:
        removed[reason] += _size(root)
        return None, removed
    stack = [root]
    while stack:
        node = stack.pop()
        kept = []
        for child in node.children:
            reason = _removal_reason(child, node.role, langs)
            if reason:
                removed[reason] += _size(child)
            else:
                kept.append(child)
        node.children = kept
        stack.extend(kept)
    return root, removed


def _answered(root: Message) -> set[int]:
    """ids (object ids) of the messages from which an assistant answer can be reached (post-order)."""
    order = list(_walk(root))
    answered: set[int] = set()
    for node in reversed(order):
        if node.role == "assistant" or any(id(c) in answered for c in node.children):
            answered.add(id(node))
    return answered


def _rank_key(indexed: tuple[int, Message]) -> tuple:
    index, node = indexed
    return (node.rank is None, node.rank if node.rank is not None else 0, index)


def paths(root: Message, mode: str = "all") -> list[list[Message]]:
    """Conversations from the root: each ends at an assistant message that no further answer follows.

    ``all``: every such path. ``best``: one path, taking the best-ranked reply (rank 0 first, then
    unranked, then file order) among those leading to an answer at each step.
    """
    if mode not in ("all", "best"):
        raise ValueError(f"oasst paths mode must be 'all' or 'best', not {mode!r}")
    answered = _answered(root)
    if id(root) not in answered:
        return []
    found: list[list[Message]] = []
    stack: list[tuple[Message, int]] = [(root, 0)]  # (node, depth): the current path is path[:depth + 1]
    path: list[Message] = []
    while stack:
        node, depth = stack.pop()
        del path[depth:]
        path.append(node)
        nexts = [(i, c) for i, c in enumerate(node.children) if id(c) in answered]
        if mode == "best" and nexts:
            nexts = [min(nexts, key=_rank_key)]
        if not nexts:
            found.append(list(path))
            continue
        stack.extend((c, depth + 1) for _, c in reversed(nexts))
    return found


def to_turns(path: list[Message]) -> list[Turn]:
    return [(ROLES[m.role], m.text.strip()) for m in path]


def preference_pairs(root: Message) -> list[tuple[list[Message], Message, Message]]:
    """(prompt path ending at a prompter message, better answer, worse answer) for each pair of its
    ranked answers with different ranks: the better-ranked (lower rank) answer is the chosen one."""
    pairs = []
    stack: list[tuple[Message, int]] = [(root, 0)]
    path: list[Message] = []
    while stack:
        node, depth = stack.pop()
        del path[depth:]
        path.append(node)
        if node.role == "prompter":
            ranked = sorted((c for c in node.children if c.rank is not None), key=lambda c: c.rank)
            for i, better in enumerate(ranked):
                for worse in ranked[i + 1:]:
                    if better.rank < worse.rank:
                        pairs.append((list(path), better, worse))
        stack.extend((c, depth + 1) for c in reversed(node.children))
    return pairs


def tree_state_ok(state) -> bool:
    """Trees still being built or halted by moderators are not exported conversations."""
    return state in EXPORTABLE_STATES


def parse_langs(langs: list[str]) -> frozenset[str] | None:
    """``--oasst_langs``: None (every language) for ``*`` or an empty list."""
    cleaned = {lang.strip() for lang in langs if lang.strip()}
    return None if not cleaned or "*" in cleaned else frozenset(cleaned)
