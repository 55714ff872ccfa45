"""LoRA length-extension fine-tuning with radial attention (PEFT + Accelerate).

    radial-diffusers train CONFIG.yaml [--resume latest]
    accelerate launch --multi_gpu -m lora_training.train CONFIG.yaml

Python: ``train(load_config("run.yaml"))`` returns the folder of the exported LoRA (``pipe.load_lora_weights``).
"""

from .config import ConfigError, TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "ConfigError", "train"]


def __getattr__(name: str):
    if name == "train":
        from .train import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
