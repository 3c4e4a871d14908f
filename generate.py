"""Chat with a base model plus LoRA adapters: browser UI, terminal, OpenAI-compatible API or eval report.

    python generate.py --base_model=smollm2-135m-instruct --lora_weights=lora_out
    python generate.py --cli=True
    python generate.py --api=True --lora_weights=base=,tuned=lora_out
    python generate.py --eval_prompts_file=prompts.json --eval_output_file=answers.json --lora_weights=base=,tuned=lora_out

Run with --help for every flag and its default. The logic lives in the sftkit/generation/ package.
"""
from sftkit import cli

if __name__ == "__main__":
    cli.generate_main(summary=__doc__.split("\n\n")[0])
