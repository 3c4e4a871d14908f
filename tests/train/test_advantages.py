"""GAE, whitening, GRPO's group advantages and the adaptive KL coefficient, against hand computations."""
import pytest
import torch

from sftkit.train.advantages import KLController, gae, group_advantages, token_rewards, whiten


def test_token_rewards_put_the_kl_penalty_everywhere_and_the_score_at_the_end():
    logps, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -1.0])
    torch.testing.assert_close(token_rewards(2.0, logps, ref, 0.1), torch.tensor([-0.05, 0.0, 2.0 - 0.05]))


def test_gae_matches_the_recursion_written_out():
    rewards, values = torch.tensor([0.1, -0.2, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.3, 0.2],
                                                                                        dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.2  # last token: the value after the answer is 0
    d1 = -0.2 + gamma * 0.2 - 0.3
    d0 = 0.1 + gamma * 0.3 - 0.5
    expected = torch.tensor([d0 + gamma * lam * (d1 + gamma * lam * d2), d1 + gamma * lam * d2, d2],
                            dtype=torch.float64)
    advantages, returns = gae(rewards, values, gamma, lam)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)
    # gamma = lam = 1: the advantage is the rest of the rewards less the value (Monte Carlo)
    mc, _ = gae(rewards, values, 1.0, 1.0)
    torch.testing.assert_close(mc, torch.tensor([0.9, 0.8, 1.0], dtype=torch.float64) - values)


def test_whitening_is_over_every_token_of_every_answer():
    out = whiten([torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)])
    flat = torch.cat(out)
    assert flat.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert flat.std().item() == pytest.approx(1.0, rel=1e-6)
    assert [len(a) for a in out] == [3, 1]


def test_group_advantages_compare_answers_to_the_same_prompt_only():
    scores = [1.0, 0.0, 0.5, 0.5, 10.0, 10.0, 10.0, 10.0]  # two prompts, four answers each
    advantages = group_advantages(scores, 4)
    first = torch.tensor(scores[:4], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(advantages[:4], dtype=torch.float64),
                               (first - first.mean()) / (first.std() + 1e-4))
    assert advantages[4:] == [0.0, 0.0, 0.0, 0.0]  # all equal: no signal, and no division by zero


def test_the_kl_coefficient_is_fixed_without_a_target_and_moves_towards_one_with_it():
    fixed = KLController(0.05)
    fixed.update(kl=100.0, n=64)
    assert fixed.value == 0.05
    adaptive = KLController(0.05, target=6.0, horizon=100)
    adaptive.update(kl=12.0, n=50)  # KL twice the target: the error is clipped at +0.2
    assert adaptive.value == pytest.approx(0.05 * (1 + 0.2 * 50 / 100))
    adaptive.update(kl=5.4, n=50)  # 10% below the target
    assert adaptive.value == pytest.approx(0.05 * 1.1 * (1 - 0.1 * 0.5))
