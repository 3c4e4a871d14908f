"""Fine-tuning: settings, data, the training loop, checkpoints, validation metrics and export."""
