import random

import numpy as np
import pyarrow as pa

from sftkit.data.algorithms.lengths import STAT_COLUMNS, turn_length_stats
from sftkit.prompts import split_turns


def reference(text: str) -> list[float]:
    """Per-row statistics with a plain loop, the definition the vectorized code must match."""
    turns = split_turns(text)
    human = [len(t) for r, t in turns if r == "human"] or [0]
    bot = [len(t) for r, t in turns if r == "bot"] or [0]
    return [min(human), max(human), float(np.mean(human)), min(bot), max(bot), float(np.mean(bot))]


def test_matches_a_per_row_loop_on_random_conversations():
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "é", "naïve", "x"]
    texts = []
    for _ in range(300):
        turns = []
        for _ in range(rng.randint(1, 5)):
            turns.append(f"<human>: {' '.join(rng.choices(words, k=rng.randint(0, 12)))}")
            for _ in range(rng.randint(1, 2)):
                turns.append(f"<bot>: {' '.join(rng.choices(words, k=rng.randint(0, 30)))}")
        texts.append("\n".join(turns))
    stats = turn_length_stats(pa.array(texts))
    got = np.stack([stats[c] for c in STAT_COLUMNS], axis=1)
    want = np.array([reference(t) for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_text_before_first_turn_is_not_a_turn():
    stats = turn_length_stats(pa.array(["preamble text <human>: abc\n<bot>: defgh"]))
    assert stats["human_len_max"][0] == 3 and stats["bot_len_mean"][0] == 5
