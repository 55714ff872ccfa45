"""Random local stand-ins for the tiny hub repositories Diffusers' video pipeline tests load, as an offline Hugging
Face cache, for ``bench/diffusers_suites.py --level pipelines`` on a machine without the hub.

The pipeline suites build their transformers, VAEs and schedulers in code but load text encoders and tokenizers from
the hub (``hf-internal-testing/tiny-random-t5``, ``-clip``, ``-Qwen2VLForConditionalGeneration``,
``finetrainers/dummy-hunyaunvideo``'s tokenizer and ``hf-internal-testing/tiny-gemma3``). The stand-ins have the
originals' shapes where the tests depend on them (T5's 32-wide hidden states, Gemma 3's 32 for the LTX-2 connectors)
and word-level tokenizers; their weights are random, so a test comparing against a hard-coded output slice fails with
the stock processors as with radial attention (the suites' table compares the two runs, not the slices)::

    python bench/diffusers_offline_hub.py /tmp/rd-hub        # then HF_HOME=/tmp/rd-hub HF_HUB_OFFLINE=1
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from radial_diffusers.tiny import _gemma3_text_parts, _qwen_chat_tokenizer, _word_level_tokenizer

_COMMIT = "0" * 40  # the snapshot every stand-in's refs/main names
# the words of the suites' prompts ("dance monkey", "A painting of a squirrel eating a burger", ...) and templates
_WORDS = tuple(
    "a an the of in on with is are and to dance monkey negative cat dog man woman video photo picture image bird "
    "flying over sea walking street beach sunset astronaut riding horse red blue green small large painting squirrel "
    "eating burger you user assistant system describe following please detail prompt text 1. 2. 3. 4. 5. : , ."
    .split())


def _snapshot(hub: Path, repo: str) -> Path:
    """An empty snapshot folder of ``repo`` in the cache layout huggingface_hub reads offline."""
    root = hub / ("models--" + repo.replace("/", "--"))
    shutil.rmtree(root, ignore_errors=True)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(_COMMIT)
    snapshot = root / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def _t5(hub: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    snapshot = _snapshot(hub, "hf-internal-testing/tiny-random-t5")
    config = T5Config(vocab_size=1103, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_decoder_layers=5, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(snapshot)
    _word_level_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad="<pad>", unk="<unk>", eos="</s>",
                          words=_WORDS).save_pretrained(snapshot)


def _clip(hub: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    snapshot = _snapshot(hub, "hf-internal-testing/tiny-random-clip")
    _word_level_tokenizer(["<|startoftext|>", "<pad>", "<|endoftext|>", "<unk>"], "<|startoftext|> $A <|endoftext|>",
                          pad="<pad>", unk="<unk>", bos="<|startoftext|>", eos="<|endoftext|>", model_max_length=77,
                          words=_WORDS).save_pretrained(snapshot)
    CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, projection_dim=32, max_position_embeddings=77, bos_token_id=0,
                                 eos_token_id=2, pad_token_id=1)).save_pretrained(snapshot)


def _hunyuan_tokenizer(hub: Path) -> None:
    snapshot = _snapshot(hub, "finetrainers/dummy-hunyaunvideo")
    words = _WORDS + ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    _word_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A", pad="<pad>", unk="<unk>", bos="<s>",
                          eos="</s>", words=words).save_pretrained(snapshot / "tokenizer")


def _qwen(hub: Path) -> None:
    from tokenizers import Regex, pre_tokenizers

    repo = "hf-internal-testing/tiny-random-Qwen2VLForConditionalGeneration"  # its tokenizer only
    snapshot = _snapshot(hub, repo)
    tokenizer = _qwen_chat_tokenizer()
    # newlines are tokens, as in Qwen's BPE: Kandinsky 5's pipelines crop the first 128 tokens (the system message and
    # user header of their template, 131 tokens here); with newlines dropped (122) the crop ate the prompt
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed",
                                                                     invert=True)
    tokenizer.save_pretrained(snapshot)
    # Kandinsky 5's suites load it with AutoProcessor: a config of no known model type makes that fall back to the
    # tokenizer (a Qwen2VLProcessor needs a video processor, which needs torchvision)
    (snapshot / "config.json").write_text('{"model_type": "radial-diffusers-offline-stand-in"}\n')


def _gemma3(hub: Path) -> None:
    # the LTX-2 suites: hidden size 32 (their connectors' 4 heads x 8), a Gemma3ForConditionalGeneration
    snapshot = _snapshot(hub, "hf-internal-testing/tiny-gemma3")
    tokenizer, text_encoder = _gemma3_text_parts(seed=0)
    tokenizer.save_pretrained(snapshot)
    text_encoder.save_pretrained(snapshot)


def build(hf_home: Path) -> list[str]:
    """Write the stand-ins under ``hf_home/hub`` (replacing earlier ones); returns the repository ids."""
    hub = Path(hf_home) / "hub"
    built = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for make, repo in ((_t5, "hf-internal-testing/tiny-random-t5"), (_clip, "hf-internal-testing/tiny-random-clip"),
                           (_hunyuan_tokenizer, "finetrainers/dummy-hunyaunvideo"),
                           (_qwen, "hf-internal-testing/tiny-random-Qwen2VLForConditionalGeneration"),
                           (_gemma3, "hf-internal-testing/tiny-gemma3")):
            make(hub)
            built.append(repo)
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_home", type=Path, help="the folder to use as HF_HOME")
    args = p.parse_args(argv)
    for repo in build(args.hf_home):
        print(f"{repo} -> {args.hf_home / 'hub'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
