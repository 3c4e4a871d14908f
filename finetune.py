"""LoRA / 8-bit / 4-bit fine-tuning, under torchrun or DeepSpeed.

    torchrun --nproc_per_node=2 finetune.py --data_path=oig_work/oig_instruct_cleaned.json --output_dir=lora_out
    python finetune.py export --base_model=... --lora_weights=lora_out --output_dir=merged

Every flag, its default and meaning: ``python finetune.py --help`` (or ``export --help``).
"""
from sftkit import cli

if __name__ == "__main__":
    cli.finetune_main(summary=__doc__.strip().splitlines()[0])
