"""sftkit: raw conversation data to a clean instruct dataset, LoRA fine-tuning, and chat."""
__version__ = "0.1.0"
