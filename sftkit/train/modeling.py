"""Models the recipes train: a causal LM or a reward model (sequence-classification head), each with a
LoRA adapter or with every weight trainable; plus how their weights are saved and restored.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sftkit import models
from sftkit.errors import TrainError
from sftkit.train.config import TrainConfig

CHECKPOINT_OPTIONS = {"use_reentrant": False}


def load_reward_base(config: TrainConfig, device: str, dtype, pad_token_id: int):
    """The base model with a fresh one-logit scoring head (the reward) instead of the LM head."""
    model = models.load_model(config.base_model, device=device, dtype=dtype, load_8bit=config.train_8bit,
                              load_4bit=config.train_4bit, local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code, scorer=True, num_labels=1)
    model.config.pad_token_id = pad_token_id  # the head reads the reward at the last non-padding token
    return model


def prepare_for_training(model, config: TrainConfig):
    model.config.use_cache = False
    if config.train_8bit or config.train_4bit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                               gradient_checkpointing_kwargs=CHECKPOINT_OPTIONS)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINT_OPTIONS)
        if not config.full_finetune:
            model.enable_input_require_grads()
    return model


def add_lora(model, config: TrainConfig, task_type: str):
    """A new LoRA adapter; for SEQ_CLS peft also trains the new scoring head in full (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules or models.lora_target_modules(model)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type=task_type)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError(f"--lora_target_modules={targets}: {str(exc).splitlines()[0][:200]}") from None


def build_causal_lm(config: TrainConfig, device: str, dtype, *, reference_adapter: bool = False):
    """Base causal LM, then: all weights trainable (full), the --lora_weights adapter continued, or a new
    adapter. With ``reference_adapter`` a frozen second copy of --lora_weights is loaded as
    "reference" (a few MB: the DPO reference is the base with that adapter, not a second model)."""
    model = models.load_model(config.base_model, device=device, dtype=dtype, load_8bit=config.train_8bit,
                              load_4bit=config.train_4bit, local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code, **config.hub_options())
    model = prepare_for_training(model, config)
    if config.full_finetune:
        model.requires_grad_(True)
        return model
    if config.lora_weights:
        model = models.apply_adapter(model, config.lora_weights, base_model=config.base_model, is_trainable=True)
        if reference_adapter:
            models.apply_adapter(model, config.lora_weights, base_model=config.base_model, adapter_name="reference")
            model.set_adapter("default")
        return model
    return add_lora(model, config, "CAUSAL_LM")


def build_reward_model(config: TrainConfig, device: str, dtype, pad_token_id: int):
    model = prepare_for_training(load_reward_base(config, device, dtype, pad_token_id), config)
    if config.full_finetune:
        model.requires_grad_(True)
        return model
    return add_lora(model, config, "SEQ_CLS")


@contextlib.contextmanager
def reference_model(model):
    """The DPO reference inside the block: the frozen "reference" adapter if loaded, else no adapter."""
    if "reference" in getattr(model, "peft_config", {}):
        model.set_adapter("reference", inference_mode=True)
        try:
            yield model
        finally:
            model.set_adapter("default")
    else:
        with model.disable_adapter():
            yield model


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def gathered_parameters(model, zero3: bool, trainable_only: bool):
    """Under ZeRO-3, the whole (or trainable) parameters inside the block; nothing to do otherwise."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def weights_saver(model, world, zero3: bool):
    """A function writing the trained weights to a folder: the adapter (LoRA; only the "default" one),
    or the whole model (full fine-tuning). Gathers ZeRO-3 partitions; only the main process writes."""
    def save(folder: Path | None) -> None:
        if is_peft(model):
            with gathered_parameters(model, zero3, trainable_only=True):
                # peft picks the adapter's tensors (LoRA, and modules_to_save such as a reward head) from these.
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                         if "lora_" in k or "modules_to_save" in k} if zero3 else None
            if world.is_main:
                model.save_pretrained(folder, state_dict=state, safe_serialization=True,
                                      selected_adapters=["default"])
        else:
            with gathered_parameters(model, zero3, trainable_only=False):
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if zero3 else None
            if world.is_main:
                model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    return save


def load_full_weights(model, folder: Path, device: str) -> None:
    """Restore a full fine-tuning checkpoint; keys save_pretrained left out must be tied to saved ones."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise TrainError(f"{folder}: no model*.safetensors in this full fine-tuning checkpoint")
    state = {}
    for f in files:
        state.update(load_file(str(f), device=device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters())
    loaded = {p.data_ptr() for name, p in params.items() if name in state}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise TrainError(f"{folder}: checkpoint does not fit the model (unexpected {unexpected[:5]}, "
                         f"missing {untied[:5]})")


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
