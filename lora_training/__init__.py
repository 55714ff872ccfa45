"""LoRA length-extension fine-tuning for radial attention (filled in by the training issue)."""
