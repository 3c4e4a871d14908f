"""OpenAssistant trees: flattening against hand-written conversations, subtree removal, languages, pairs."""
import copy

from sftkit.data.inputs import oasst
from sftkit.prompts import join_turns


def m(mid, role, text, rank=None, replies=(), **extra):
    return {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": extra.pop("lang", "en"),
            "deleted": extra.pop("deleted", False), "review_result": extra.pop("review_result", True),
            "replies": list(replies)}


# Q ─┬─ A (rank 0) ── F ─┬─ B (rank 1)
#    │                   └─ C (rank 0)
#    ├─ D (rank 1) ── P (a question nobody answered)
#    ├─ E (rank 2, deleted) ── G ── H
#    ├─ R (review rejected) ── S ── T
#    └─ X (lang de) ── Y
TREE = m("q", "prompter", "What is a kestrel?", replies=[
    m("a", "assistant", "A small falcon.", rank=0, replies=[
        m("f", "prompter", "Where does it live?", replies=[
            m("b", "assistant", "In open country.", rank=1),
            m("c", "assistant", "Across Europe, Asia and Africa.", rank=0)])]),
    m("d", "assistant", "A bird of prey.", rank=1, replies=[m("p", "prompter", "And?")]),
    m("e", "assistant", "DELETED answer", rank=2, deleted=True, replies=[
        m("g", "prompter", "DELETED follow-up", replies=[m("h", "assistant", "DELETED reply")])]),
    m("r", "assistant", "REJECTED answer", review_result=False, replies=[
        m("s", "prompter", "REJECTED follow-up", replies=[m("t", "assistant", "REJECTED reply")])]),
    m("x", "assistant", "Ein kleiner Falke.", lang="de", replies=[m("y", "prompter", "Wo lebt er?")]),
])


def conversations(tree, mode="all", langs=frozenset({"en"})):
    root, problems = oasst.from_nested(copy.deepcopy(tree))
    assert not problems
    root, removed = oasst.prune(root, langs)
    if root is None:
        return [], removed
    return [join_turns(oasst.to_turns(p)) for p in oasst.paths(root, mode)], removed


def test_all_paths_match_hand_written_conversations():
    found, _ = conversations(TREE)
    assert found == [
        "<human>: What is a kestrel?\n<bot>: A small falcon.\n<human>: Where does it live?\n<bot>: In open country.",
        "<human>: What is a kestrel?\n<bot>: A small falcon.\n<human>: Where does it live?\n"
        "<bot>: Across Europe, Asia and Africa.",
        "<human>: What is a kestrel?\n<bot>: A bird of prey.",  # the unanswered "And?" is left off
    ]


def test_best_path_takes_the_best_ranked_reply_at_each_step():
    found, _ = conversations(TREE, "best")
    assert found == ["<human>: What is a kestrel?\n<bot>: A small falcon.\n<human>: Where does it live?\n"
                     "<bot>: Across Europe, Asia and Africa."]


def test_deleted_and_rejected_messages_go_with_their_whole_subtree():
    found, removed = conversations(TREE, langs=None)
    assert removed == {"deleted": 3, "review_rejected": 3}
    assert not any(word in text for text in found for word in ("DELETED", "REJECTED"))
    assert "<human>: What is a kestrel?\n<bot>: Ein kleiner Falke." in found  # every language kept


def test_language_filter_removes_other_language_branches():
    found, removed = conversations(TREE)
    assert removed["language"] == 2 and not any("Falke" in text for text in found)
    german_root = m("q", "prompter", "Was ist ein Turmfalke?", lang="de", replies=[m("a", "assistant", "Ein Vogel.", lang="de")])
    assert conversations(german_root)[0] == []
    assert conversations(german_root, langs=oasst.parse_langs(["de", "fr"]))[0] == [
        "<human>: Was ist ein Turmfalke?\n<bot>: Ein Vogel."]
    assert oasst.parse_langs(["*"]) is None


def test_flat_table_gives_the_same_tree():
    rows, stack = [], [(TREE, None)]
    while stack:
        message, parent = stack.pop()
        rows.append({k: v for k, v in message.items() if k != "replies"} | {"parent_id": parent})
        stack.extend((r, message["message_id"]) for r in reversed(message["replies"]))
    root, problems = oasst.from_flat(rows)
    assert not problems
    root, _ = oasst.prune(root, frozenset({"en"}))
    assert [join_turns(oasst.to_turns(p)) for p in oasst.paths(root)] == conversations(TREE)[0]
    orphan = rows + [{"message_id": "z", "parent_id": "nowhere", "role": "assistant", "text": "lost"}]
    assert oasst.from_flat(orphan)[1] == {"orphan_message": 1}
    assert oasst.from_flat(rows[1:])[1]["no_root"] == 1


def test_role_order_and_malformed_messages():
    tree = m("q", "prompter", "Q?", replies=[
        m("a", "assistant", "A.", replies=[m("b", "assistant", "an answer to an answer")]),
        {"message_id": "bad", "role": "narrator", "text": "?"}])
    root, problems = oasst.from_nested(tree)
    assert problems == {"message_bad_role": 1}
    root, removed = oasst.prune(root, None)
    assert removed == {"role_order": 1}
    assert [join_turns(oasst.to_turns(p)) for p in oasst.paths(root)] == ["<human>: Q?\n<bot>: A."]
    assert oasst.prune(oasst.from_nested(m("a", "assistant", "starts with an answer"))[0], None)[0] is None


def test_deep_tree_is_flattened_without_recursion():
    depth = 5000
    node = m("leaf", "assistant", "last")
    for i in range(depth - 1, 0, -1):
        node = m(f"n{i}", "prompter" if i % 2 else "assistant", f"turn {i}", replies=[node])
    root, _ = oasst.prune(oasst.from_nested(node)[0], None)
    (path,) = oasst.paths(root)
    assert len(path) == depth and path[-1].id == "leaf"


def test_preference_pairs_follow_the_ranks():
    root, _ = oasst.prune(oasst.from_nested(copy.deepcopy(TREE))[0], frozenset({"en"}))
    pairs = [([p.id for p in prompt], better.id, worse.id) for prompt, better, worse in oasst.preference_pairs(root)]
    assert pairs == [(["q"], "a", "d"), (["q", "a", "f"], "c", "b")]
