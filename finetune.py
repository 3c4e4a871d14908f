"""LoRA / 8-bit / 4-bit fine-tuning, under torchrun or DeepSpeed.

    torchrun --nproc_per_node=2 finetune.py --data_path=oig_work/oig_instruct_cleaned.json --output_dir=lora_out
    python finetune.py export --base_model=... --lora_weights=lora_out --output_dir=merged

Every flag, its default and meaning: ``python finetune.py --help`` (or ``export --help``).
"""
import sys

from sftkit import flags


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from sftkit.train.config import ExportConfig, TrainConfig
    from sftkit.train.errors import run_reporting_errors

    # torch loads only once a run starts, so --help and flag errors answer at once.
    def export(config):
        from sftkit.train.export import export_merged
        return export_merged(config)

    def train(config):
        from sftkit.train.loop import train
        return train(config)

    if argv[:1] == ["export"]:
        return flags.main(ExportConfig, run_reporting_errors(export), argv[1:], prog="finetune.py export",
                          summary="Merge a LoRA adapter into its base model; write a standalone model directory.")
    return flags.main(TrainConfig, run_reporting_errors(train), argv, prog="finetune.py",
                      summary=__doc__.strip().splitlines()[0])


if __name__ == "__main__":
    main()
