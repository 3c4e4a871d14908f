"""The tokenized cache: its key, build once and reuse, a killed build never trusted, the same rows as
tokenizing in memory, and two torchrun ranks building once."""
import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sftkit.models import load_tokenizer
from sftkit.train import token_cache
from sftkit.train.config import TrainConfig
from sftkit.train.data import load_conversations, mix_in, split_validation
from sftkit.train.loop import train
from sftkit.train.preference import load_pairs
from sftkit.train.recipes.registry import get_recipe
from sftkit.train.run_record import data_fingerprint
from sftkit.train.tokenize import tokenize_all, tokenize_pairs
from tests.train.helpers import ROWS, tiny_config, write_rows
from tests.train.test_distributed import FLAGS, free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"

# The flags that change what a cache holds, through the sources a run tokenizes (tokenizer files aside,
# see test_tokenizer_and_data_content_are_in_the_key). Every other flag must leave every key alone:
# it trains differently on the same tokens, or only selects from them (tested below).
KEY_FLAGS = {"data_path", "data_col_dict", "prompt_type", "valid_path", "data_mix_in_path", "data_mix_in_factor",
             "data_mix_in_col_dict", "data_mix_in_prompt_type", "cutoff_len", "train_on_inputs", "add_eos_token",
             "stage"}
# Applied when reading a cache (which units are held out, which mix-in rows are added, whether a too
# long unit is cut or dropped): a change reuses the cache and selects other rows.
SELECTION_FLAGS = {"val_set_size", "seed", "drop_truncations"}


def changed(name: str, value, tmp_path: Path):
    """Another valid-looking value of a flag."""
    special = {"data_path": str(tmp_path / "other.json"), "valid_path": str(tmp_path / "other.json"),
               "data_mix_in_path": str(tmp_path / "other.json"), "prompt_type": "instruct",
               "data_mix_in_prompt_type": "instruct", "stage": "dpo", "data_mix_in_factor": 0.0}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + ["x"]
    if isinstance(value, dict):
        return {**value, "x": "y"}
    raise AssertionError(name)


def keys(config: TrainConfig) -> dict:
    kind = "sft" if config.stage == "sft" else "pairs"
    return token_cache.config_keys(config, kind, config.add_eos_token, "tokenizer")


def test_every_flag_that_changes_the_tokens_changes_a_key_and_no_other_does(tmp_path):
    write_rows(tmp_path / "other.json", ROWS[:2])
    base = tiny_config("model", tmp_path, valid_path=write_rows(tmp_path / "valid.json"),
                       data_mix_in_path=write_rows(tmp_path / "mix.json", ROWS[1:]), data_mix_in_factor=0.5)
    before = keys(base)
    assert set(before) == {"train", "valid", "mix_in"}
    changes_a_key = set()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(base, field.name)
        other = copy.copy(base)  # not replace(): the flags' own checks would refuse some stand-in values
        setattr(other, field.name, changed(field.name, value, tmp_path))
        if keys(other) != before:
            changes_a_key.add(field.name)
    assert changes_a_key == KEY_FLAGS


def test_each_setting_of_a_source_is_in_its_key():
    source = token_cache.Source("sft", "data.json")
    for field in dataclasses.fields(token_cache.Source):
        if field.name == "path":  # the data's content stands for it: a moved file keeps its cache
            continue
        value = getattr(source, field.name)
        other = (("a", "b"),) if field.name == "col_dict" else changed(field.name, value, Path("."))
        assert token_cache.cache_key(dataclasses.replace(source, **{field.name: other}), "t", "d") != \
            token_cache.cache_key(source, "t", "d"), field.name


def another_tokenizer(model_dir: str):
    """The tiny model's tokenizer with one more token: it splits 'France' differently."""
    tokenizer = load_tokenizer(model_dir)
    tokenizer.add_tokens(["France"])
    return tokenizer


def test_tokenizer_and_data_content_are_in_the_key(tiny_llama, tmp_path):
    llama = load_tokenizer(tiny_llama)
    assert token_cache.tokenizer_sha256(llama) == token_cache.tokenizer_sha256(load_tokenizer(tiny_llama))
    assert token_cache.tokenizer_sha256(llama) != token_cache.tokenizer_sha256(another_tokenizer(tiny_llama))
    llama.chat_template = "{{ messages[0]['content'] }}"
    assert token_cache.tokenizer_sha256(llama) != token_cache.tokenizer_sha256(load_tokenizer(tiny_llama))
    folder = tmp_path / "rows"
    folder.mkdir()
    path = write_rows(folder / "a.json")
    first = data_fingerprint(str(folder))
    (folder / "a.json").write_text(Path(path).read_text().replace("Paris", "Lyon"))
    second = data_fingerprint(str(folder))
    write_rows(folder / "b.jsonl", ROWS[:1])
    assert len({first, second, data_fingerprint(str(folder))}) == 3


def test_a_rerun_reuses_and_a_change_rebuilds(tiny_llama, tmp_path):
    tokenizer = load_tokenizer(tiny_llama)
    data = write_rows(tmp_path / "data.json")
    said = []
    source = token_cache.Source("sft", data, cutoff_len=64)

    def opened(source, tok=tokenizer):
        said.clear()
        cache = token_cache.open_source(source, tok, tmp_path / "cache", progress=False, say=said.append)
        return cache, said[-1]

    cache, line = opened(source)
    assert line.startswith("tokenized cache built")
    again, line = opened(source)
    assert line == f"tokenized cache reused: {cache.path}" and again.path == cache.path
    assert again.meta == cache.meta  # nothing tokenized again: the build's own meta (its timing included)
    for other in (dataclasses.replace(source, cutoff_len=32), dataclasses.replace(source, prompt_type="instruct")):
        assert opened(other)[1].startswith("tokenized cache built")
    assert opened(source, another_tokenizer(tiny_llama))[1].startswith("tokenized cache built")
    Path(data).write_text(Path(data).read_text().replace("Paris", "Lyon"))
    rebuilt, line = opened(source)
    assert line.startswith("tokenized cache built") and rebuilt.path != cache.path


def test_a_hub_dataset_is_keyed_by_the_copy_it_loads(tiny_llama, tmp_path, monkeypatch):
    """A hub id is read through ``datasets``; its cache key follows the loaded copy's fingerprint, so
    a new revision of the data rebuilds the cache instead of reusing the old one."""
    import datasets

    from sftkit import rows

    served = {"rows": [dict(ROWS[0]) for _ in range(8)]}  # h2oGPT rows, as the hub's h2oai sets hold
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return datasets.Dataset.from_list(served["rows"])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    tokenizer = load_tokenizer(tiny_llama)
    source = token_cache.Source("sft", "some-org/some-dataset", cutoff_len=64)
    said = []

    def opened():
        rows.hub_dataset.cache_clear()  # a new process
        said.clear()
        cache = token_cache.open_source(source, tokenizer, tmp_path / "cache", progress=False, say=said.append)
        return cache, said[-1]

    first, line = opened()
    assert line.startswith("tokenized cache built") and first.meta["units"] == len(served["rows"])
    assert opened()[1] == f"tokenized cache reused: {first.path}"
    served["rows"][0]["input"] = served["rows"][0]["input"].replace("Paris", "Lyon")
    second, line = opened()
    assert line.startswith("tokenized cache built") and second.path != first.path
    assert set(asked) == {("some-org/some-dataset", "train")}


KILLED_BUILD = """
import os, signal, sys
from sftkit.models import load_tokenizer
from sftkit.train import token_cache
real = token_cache.tokenize_units
calls = []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the build
    return real(*args, **kwargs)
token_cache.tokenize_units = dying
model, data, root = sys.argv[1:]
token_cache.open_source(token_cache.Source("sft", data, cutoff_len=64), load_tokenizer(model), root,
                        workers=1, progress=False)
"""


def test_a_build_killed_midway_is_never_trusted(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "data.json", repeat=400)
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, tiny_llama, data, str(tmp_path / "cache")], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -9, done.stderr[-2000:]
    half = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert half and all((p / "sequences.arrow").is_file() for p in half)  # killed with batches written
    said = []
    cache = token_cache.open_source(token_cache.Source("sft", data, cutoff_len=64), load_tokenizer(tiny_llama),
                                    tmp_path / "cache", progress=False, say=said.append)
    assert said[-1].startswith("tokenized cache built"), said
    assert not any(".tmp-" in p.name for p in (tmp_path / "cache").iterdir())  # tidied by the new build
    assert len(cache.status) == 16 * 100


def as_pairs(examples):
    return [(list(e.input_ids), list(e.labels), e.prompt, e.reference, e.prompt_type) for e in examples]


def test_the_cache_gives_the_rows_tokenizing_in_memory_gives(tiny_llama, tmp_path, monkeypatch, capsys):
    """Split, mix-in and the truncation policy over the cache: the very examples, in the very order, of
    loading and tokenizing in memory (what training read before the cache), over one process or two."""
    monkeypatch.setattr(token_cache, "BATCH_UNITS", 64)  # several batches, so two processes share them
    tokenizer = load_tokenizer(tiny_llama)
    mix = write_rows(tmp_path / "mix.json", ROWS[1:], repeat=3)
    config = tiny_config(tiny_llama, tmp_path, data_path=str(SAMPLE), cutoff_len=48, val_set_size=0.1,
                         data_mix_in_path=mix, data_mix_in_factor=0.3, drop_truncations=True,
                         tokenized_cache_dir=str(tmp_path / "cache"), tokenize_workers=2)
    data = get_recipe(config).read_data(tokenizer, progress=False)
    convs, _ = load_conversations(str(SAMPLE))
    train_convs, val_convs = split_validation(convs, 0.1, 0)
    kw = dict(cutoff_len=48, progress=False, batch_rows=100)
    train_set = tokenize_all(train_convs, tokenizer, "", drop_truncations=True, **kw)
    mixed = tokenize_all(load_conversations(mix)[0], tokenizer, "", drop_truncations=True, **kw)
    expected = mix_in(train_set.examples, mixed.examples, 0.3, 0)
    assert as_pairs(data.train) == as_pairs(expected)
    assert as_pairs(data.valid) == as_pairs(tokenize_all(val_convs, tokenizer, "", **kw).examples)
    assert data.stats["train"] == train_set.stats.as_dict() and data.stats["train"]["dropped_truncations"] > 0
    built = capsys.readouterr().out
    assert "417 units, 161 sequences, 7282 tokens" in built and "(2 processes)" in built
    # the same through one process (the build above ran over two, in order)
    one = get_recipe(dataclasses.replace(config, tokenize_workers=1, tokenized_cache_dir=str(tmp_path / "one")))
    assert as_pairs(one.read_data(tokenizer, progress=False).train) == as_pairs(expected)
    assert "(1 process)" in capsys.readouterr().out


def test_pairs_from_the_cache_are_the_pairs_tokenized_in_memory(tiny_llama, tmp_path):
    tokenizer = load_tokenizer(tiny_llama)
    path = REPO / "data" / "preference_sample.json"
    config = tiny_config(tiny_llama, tmp_path, stage="dpo", data_path=str(path), cutoff_len=40, val_set_size=3,
                         tokenized_cache_dir=str(tmp_path / "cache"))
    data = get_recipe(config).read_data(tokenizer, progress=False)
    pairs, _ = load_pairs(str(path))
    train_pairs, val_pairs = split_validation(pairs, 3, 0)
    expected = tokenize_pairs(train_pairs, tokenizer, "human_bot", 40, add_eos_token=True, progress=False)
    assert [as_pairs([p.chosen, p.rejected]) for p in data.train] == \
        [as_pairs([p.chosen, p.rejected]) for p in expected.examples]
    assert data.stats["train"] == expected.stats.as_dict()
    valid = tokenize_pairs(val_pairs, tokenizer, "human_bot", 40, add_eos_token=True, progress=False)
    assert [as_pairs([p.chosen, p.rejected]) for p in data.valid] == \
        [as_pairs([p.chosen, p.rejected]) for p in valid.examples]
    assert data.stats["valid"] == valid.stats.as_dict()


def test_training_losses_are_those_of_tokenizing_in_memory(tiny_llama, tmp_path, monkeypatch):
    """The run's per-step losses on the sample, with the data read through the cache and with the
    recipe's data replaced by the in-memory tokenization of the same rows."""
    config = tiny_config(tiny_llama, tmp_path, data_path=str(SAMPLE), max_steps=3, val_set_size=8,
                         tokenized_cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "cached"))
    cached = train(config)
    recipe_class = type(get_recipe(config))

    def in_memory(self, tokenizer, progress):
        convs, _ = load_conversations(str(SAMPLE))
        train_convs, val_convs = split_validation(convs, 8, 0)
        data = real(self, tokenizer, progress)
        data.train = tokenize_all(train_convs, tokenizer, "", 64, progress=False).examples
        data.valid = tokenize_all(val_convs, tokenizer, "", 64, progress=False).examples
        return data

    real = recipe_class.read_data
    monkeypatch.setattr(recipe_class, "read_data", in_memory)
    plain = train(dataclasses.replace(config, output_dir=str(tmp_path / "plain")))
    assert [h.get("loss") for h in cached["history"]] == [h.get("loss") for h in plain["history"]]
    assert cached["eval_loss"] == plain["eval_loss"]


def torchrun(tmp_path: Path, model_dir: str, out: str, **extra) -> str:
    flags = {**FLAGS, "base_model": model_dir, "data_path": str(SAMPLE), "output_dir": str(tmp_path / out),
             "tokenized_cache_dir": str(tmp_path / "cache"), "tokenize_workers": 1, **extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "finetune.py"), *(f"--{k}={v}" for k, v in flags.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_two_ranks_build_once_and_a_rerun_and_a_resume_reuse(tiny_llama, tmp_path):
    log = torchrun(tmp_path, tiny_llama, "first", max_steps=2, save_steps=1)
    assert log.count("tokenized cache built") == 1, log[-3000:]
    assert log.count("[rank 1] waiting for tokenized cache") + log.count("[rank 0] waiting for tokenized cache") == 1
    assert log.count("tokenized cache reused") == 1  # the rank that waited
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    stamp = (cache / "sequences.arrow").stat().st_mtime_ns
    rerun = torchrun(tmp_path, tiny_llama, "second", max_steps=1)
    assert rerun.count("tokenized cache reused") == 2 and "tokenized cache built" not in rerun
    resumed = torchrun(tmp_path, tiny_llama, "first", max_steps=3, save_steps=1, resume_from_checkpoint="latest")
    assert resumed.count(f"tokenized cache reused: {cache}") == 2 and "tokenized cache built" not in resumed
    assert "resumed from" in resumed
    assert (cache / "sequences.arrow").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["step"] == 3


def test_dpo_reference_logps_are_stored_and_a_rerun_reads_them_back(tiny_llama, tmp_path, capsys, monkeypatch):
    config = tiny_config(tiny_llama, tmp_path, stage="dpo", data_path=str(REPO / "data" / "preference_sample.json"),
                         max_steps=2, val_set_size=4, beta=0.5, tokenized_cache_dir=str(tmp_path / "cache"))
    first = train(dataclasses.replace(config, output_dir=str(tmp_path / "first")))
    assert "reference log-probs reused" not in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("reference_logps-*.arrow"))) == 1
    from sftkit.train.recipes import dpo

    monkeypatch.setattr(dpo, "reference_model", None)  # a reference pass now would fail
    second = train(dataclasses.replace(config, output_dir=str(tmp_path / "second")))
    assert "reference log-probs reused" in capsys.readouterr().out
    assert [h.get("loss") for h in second["history"]] == [h.get("loss") for h in first["history"]]
    assert second["eval_loss"] == first["eval_loss"]
    monkeypatch.undo()
    other = train(dataclasses.replace(config, output_dir=str(tmp_path / "third"), micro_batch_size=1))
    assert "reference log-probs reused" not in capsys.readouterr().out  # other batches: computed again
    assert other["history"][0]["margin"] == pytest.approx(0.0, abs=1e-5)


def test_columns_read_from_their_buffers_equal_pyarrows_own_reading():
    columns = [pa.array(np.arange(-5, 300, dtype=np.int64)), pa.array(np.arange(300, dtype=np.int32) * 7),
               pa.array(np.arange(100, dtype=np.int8)), pa.array(np.linspace(0, 1, 50)),
               pa.array([True, False, False, True, True] * 13)]
    for column in columns:
        expected = column.to_numpy(zero_copy_only=False)
        for part in (column, column.slice(3, 17), column.slice(len(column) - 1), column.slice(0, 0)):
            assert np.array_equal(token_cache._numpy(part), part.to_numpy(zero_copy_only=False))
        chunked = pa.chunked_array([column.slice(0, 9), column.slice(9, 21), column.slice(30)])
        assert np.array_equal(token_cache._numpy(chunked), expected)
        assert token_cache._numpy(chunked).dtype == expected.dtype
    with pytest.raises(ValueError):
        token_cache._numpy(pa.array([1, None, 3]))
