"""The training objectives by ``--stage`` name."""
from __future__ import annotations

from sftkit.train.config import TrainConfig
from sftkit.train.recipes import Recipe
from sftkit.train.recipes.dpo import DPORecipe
from sftkit.train.recipes.grpo import GRPORecipe
from sftkit.train.recipes.ppo import PPORecipe
from sftkit.train.recipes.rm import RewardModelRecipe
from sftkit.train.recipes.sft import SFTRecipe

RECIPES: dict[str, type[Recipe]] = {"sft": SFTRecipe, "rm": RewardModelRecipe, "dpo": DPORecipe, "ppo": PPORecipe,
                                    "grpo": GRPORecipe}


def get_recipe(config: TrainConfig) -> Recipe:
    return RECIPES[config.stage](config)
