"""Reward sources of the online stages: functions by module or file, a reward model, weights, the stop penalty."""
import pytest

from sftkit.errors import FlagError, TrainError
from sftkit.train.rewards import Rewards, functions_fingerprint, load_reward_function
from tests.train.helpers import tiny_config

FUNCS = '''
def shouting(prompts, completions):
    return [float(c.isupper()) for c in completions]

def wrong_count(prompts, completions):
    return [1.0]

def not_a_number(prompts, completions):
    return [float("nan") for _ in completions]

def boom(prompts, completions):
    raise ValueError("no")
'''


@pytest.fixture
def funcs(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(FUNCS)
    return path


def config(tmp_path, **overrides):
    return tiny_config("unused", tmp_path, stage="grpo", val_set_size=0, max_new_tokens=8, **overrides)


def test_functions_load_from_a_file_or_a_module_on_the_path(funcs, monkeypatch):
    assert load_reward_function(f"{funcs}:shouting")(prompts=["q"], completions=["HI", "hi"]) == [1.0, 0.0]
    monkeypatch.syspath_prepend(str(funcs.parent))
    assert load_reward_function("my_rewards:shouting")(prompts=["q"], completions=["A"]) == [1.0]
    assert load_reward_function("tests.train.toy_rollouts:target_fraction")(
        prompts=["q"], completions=["France two", ""]) == [0.5, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "write module:function"),
    ("missing_file.py:f", "no such file"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("tests.train.toy_rollouts:nothing", "has no function 'nothing'"),
])
def test_a_bad_function_spec_is_a_flag_error(spec, message):
    with pytest.raises(FlagError, match=message):
        load_reward_function(spec)


def test_weighted_sum_less_the_missing_stop_penalty(funcs, tmp_path):
    rewards = Rewards(config(tmp_path, reward_funcs=[f"{funcs}:shouting", "tests.train.toy_rollouts:target_fraction"],
                             reward_weights=[2.0, 1.0], missing_stop_penalty=0.5), "cpu")
    totals, parts = rewards.score(["q", "q"], ["FRANCE", "France two"], [True, False])
    assert parts == {"shouting": [1.0, 0.0], "target_fraction": [0.0, 0.5]}
    assert totals == [2.0, 0.5 - 0.5]


@pytest.mark.parametrize("name, message", [
    ("wrong_count", "returned 1 rewards for 2 completions"),
    ("not_a_number", "must be finite numbers"),
    ("boom", "raised ValueError: no"),
])
def test_a_misbehaving_function_is_named_in_the_error(name, message, funcs, tmp_path):
    rewards = Rewards(config(tmp_path, reward_funcs=[f"{funcs}:{name}"]), "cpu")
    with pytest.raises(TrainError, match=message):
        rewards.score(["q", "q"], ["a", "b"], [True, True])


def test_a_reward_model_scores_in_zero_one_and_an_unloadable_one_names_the_flag(tmp_path):
    from tests.data.tiny_scorers import build_reward_model

    model = build_reward_model(tmp_path / "rm")
    totals, parts = Rewards(config(tmp_path, reward_model=str(model)), "cpu").score(["what is water"],
                                                                                    ["water is a plant"], [True])
    assert 0 < totals[0] < 1 and parts["reward_model"] == totals
    with pytest.raises(FlagError, match="--reward_model="):
        Rewards(config(tmp_path, reward_model=str(tmp_path / "nothing")), "cpu")


def test_the_fingerprint_follows_the_function_source(funcs):
    before = functions_fingerprint([f"{funcs}:shouting"])
    funcs.write_text(FUNCS + "\n# changed\n")
    assert functions_fingerprint([f"{funcs}:shouting"]) != before
    assert functions_fingerprint([]) == ""
