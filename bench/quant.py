"""Quantization quality and weight memory per scheme (CPU), and step time / memory on a GPU.

    python bench/quant.py                 # tiny Wan/HunyuanVideo: transformer output error vs BF16 + weight bytes;
                                          # Wan2.1-1.3B- and 14B-size blocks (random init): per-Linear error, bytes
    python bench/quant.py --gpu           # at 480x832x81, one transformer forward: Wan2.1-1.3B size (30 blocks) and
                                          # Wan2.1-14B layer shapes (2 blocks), random init; BF16 dense, BF16
                                          # radial, radial + each scheme the GPU supports
    python bench/quant.py --cpu-dry-run   # the --gpu code path on CPU: 1 block per size, toy geometry

Errors are ``||y_q - y|| / ||y||`` at a fixed random input; weights are random (labelled so), which quantize more
uniformly than trained ones.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch
from dfloat11 import WAN_1_3B, WAN_14B  # bench/dfloat11.py: the Wan2.1 configs
from radial_diffusers.evaluation.attention_speed import measure

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
warnings.filterwarnings("ignore")


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, including torchao subclasses (their inner data and scales)."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def linear_weight_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def tiny_report(schemes: list[str]) -> None:
    import radial_diffusers as rd
    from radial_diffusers.tiny import load_tiny

    g = torch.Generator().manual_seed(0)
    inputs = {
        "tiny-wan": lambda m: dict(hidden_states=torch.randn(1, 16, 5, 16, 16, generator=g).bfloat16(),
                                   timestep=torch.tensor([500.0]),
                                   encoder_hidden_states=torch.randn(1, 16, 32, generator=g).bfloat16()),
        "tiny-hunyuan": lambda m: dict(hidden_states=torch.randn(1, 4, 5, 8, 8, generator=g).bfloat16(),
                                       timestep=torch.tensor([500.0]),
                                       encoder_hidden_states=torch.randn(1, 16, 16, generator=g).bfloat16(),
                                       encoder_attention_mask=torch.ones(1, 16, dtype=torch.bool),
                                       pooled_projections=torch.randn(1, 8, generator=g).bfloat16(),
                                       guidance=torch.tensor([6000.0])),
    }
    print("tiny models (random weights), transformer output vs BF16, radial attention (block 16):")
    print(f"{'model':13s} {'scheme':16s} {'rel. error':>10s} {'Linear weights':>15s} {'vs BF16':>8s}")
    for name, make in inputs.items():
        base = load_tiny(name, 0, dtype=torch.bfloat16).transformer
        rd.apply_radial_attention(base, rd.RadialConfig(dense_steps=0, dense_layers=0, block_size=16))
        kw = make(base)
        with torch.no_grad():
            ref = base(**kw).sample
        b0 = linear_weight_bytes(base)
        print(f"{name:13s} {'bf16':16s} {0:10.4f} {b0:15,d} {1:8.2f}")
        for scheme in schemes:
            m = load_tiny(name, 0, dtype=torch.bfloat16).transformer
            rd.quantize(m, scheme, group_size=4)
            rd.apply_radial_attention(m, rd.RadialConfig(dense_steps=0, dense_layers=0, block_size=16))
            with torch.no_grad():
                err = _rel(m(**kw).sample, ref)
            b = linear_weight_bytes(m)
            print(f"{name:13s} {scheme:16s} {err:10.4f} {b:15,d} {b / b0:8.2f}")


SIZES = {"Wan2.1-1.3B": WAN_1_3B, "Wan2.1-14B": WAN_14B}


def _block(cfg: dict) -> torch.nn.Module:
    """One Wan2.1 transformer block of ``cfg``'s shapes (random init, BF16)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return WanTransformerBlock(dim, cfg["ffn_dim"], cfg["num_attention_heads"], cfg["qk_norm"], cfg["cross_attn_norm"],
                               cfg["eps"]).to(torch.bfloat16)


def layer_report(schemes: list[str], tokens: int = 256) -> None:
    import radial_diffusers as rd

    for label, cfg in SIZES.items():
        torch.manual_seed(0)
        block = _block(cfg)
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        x = {n: torch.randn(tokens, m.in_features).bfloat16() for n, m in linears.items()}
        with torch.no_grad():
            ref = {n: m(x[n]) for n, m in linears.items()}
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        print(f"\n{label}-size block (random init; dim {dim} = {cfg['num_attention_heads']} heads x "
              f"{cfg['attention_head_dim']}, FFN {cfg['ffn_dim']}), per-Linear output error on {tokens} random tokens:")
        print(f"{'scheme':16s} " + " ".join(f"{n:>15s}" for n in linears) + f" {'weights vs BF16':>16s}")
        b0 = linear_weight_bytes(block)
        for scheme in schemes:
            q = rd.quantize(copy.deepcopy(block), scheme, group_size=128)
            with torch.no_grad():
                errs = [_rel(q.get_submodule(n)(x[n]), ref[n]) for n in linears]
            print(f"{scheme:16s} " + " ".join(f"{e:15.4f}" for e in errs) + f" {linear_weight_bytes(q) / b0:16.3f}")
            del q


def gpu_report(schemes: list[str], repeats: int, dry_run: bool = False) -> None:
    """``dry_run``: the same code on CPU with one block per size, a toy geometry and 16 text tokens (catches errors
    before a GPU run)."""
    dev = torch.device("cpu" if dry_run else "cuda")
    geometry = (2, 8, 8) if dry_run else (21, 60, 104)  # 480x832x81 -> latent 21 x 60 x 104
    where = "CPU dry run (1 block per size, toy geometry)" if dry_run else torch.cuda.get_device_name()
    print(f"\n{where}: one transformer forward at 480x832x81, random init, median of {repeats}")
    # Wan2.1-1.3B: the whole model (first block dense, as recommended); Wan2.1-14B: two blocks of its shapes (a 14B
    # forward is 40 of them), every block radial
    # the dry run checks the code path, not the sizes: its "14B" block has a quarter of the heads and FFN width (a
    # full-width block is 1.2 GB, copied per scheme)
    wan_14b = dict(WAN_14B, num_layers=1, num_attention_heads=10, ffn_dim=3456) if dry_run else dict(WAN_14B, num_layers=2)
    sections = [("Wan2.1-1.3B size, 30 blocks", dict(WAN_1_3B, num_layers=1) if dry_run else WAN_1_3B, 1),
                ("Wan2.1-14B layer shapes, 2 blocks" + (" (dry run: 1/4 of the heads and FFN)" if dry_run else ""),
                 wan_14b, 0)]
    for label, cfg, dense_layers in sections:
        _gpu_section(label, cfg, dense_layers, schemes, repeats, dev, geometry)


def _gpu_section(label: str, cfg: dict, dense_layers: int, schemes: list[str], repeats: int, dev: torch.device,
                 geometry: tuple[int, int, int]) -> None:
    import radial_diffusers as rd
    from diffusers import WanTransformer3DModel

    dry_run = dev.type == "cpu"
    x = torch.randn(1, 16, *geometry, device=dev, dtype=torch.bfloat16)
    text = torch.randn(1, 16 if dry_run else 512, cfg["text_dim"], device=dev, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=dev)
    torch.manual_seed(0)
    base = WanTransformer3DModel(**cfg).to(torch.bfloat16).eval()  # built once (on CPU), copied to dev for each row
    peak_reset = torch.cuda.reset_peak_memory_stats if dev.type == "cuda" else (lambda: None)
    peak = torch.cuda.max_memory_allocated if dev.type == "cuda" else (lambda: 0)
    print(f"\n{label} ({cfg['num_layers']} block{'s' if cfg['num_layers'] > 1 else ''} here; dense layers "
          f"{dense_layers}):")
    rows = []
    for row, scheme, radial in [("bf16 dense", None, False), ("bf16 radial", None, True),
                                *[(f"radial + {s}", s, True) for s in schemes]]:
        model = copy.deepcopy(base).to(dev)
        if scheme:
            rd.quantize(model, scheme)
        if radial:
            rd.apply_radial_attention(model, rd.RadialConfig(dense_steps=0, dense_layers=dense_layers, block_size=128))
        peak_reset()
        with torch.no_grad():
            sec = measure(lambda: model(x, t, text), repeats, dev, warmup=0 if dry_run else 3)
        rows.append((row, sec, linear_weight_bytes(model), peak()))
        del model
    base = {r[0]: r for r in rows}
    for row, sec, wb, mem in rows:
        print(f"{row:24s} {sec:8.3f} s  {base['bf16 radial'][1] / sec:5.2f}x vs bf16 radial  weights "
              f"{wb / 1e9:6.2f} GB ({wb / base['bf16 dense'][2]:.2f})  peak {mem / 1e9:6.2f} GB")


def main() -> None:
    from radial_diffusers.quant import supported_schemes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--skip-layers", action="store_true", help="skip the 1.3B- and 14B-size block tables (CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run the --gpu code path on CPU with one block per size and a toy geometry")
    args = ap.parse_args()
    if args.gpu or args.cpu_dry_run:
        schemes = supported_schemes("cpu" if args.cpu_dry_run else "cuda")
        gpu_report(schemes, 1 if args.cpu_dry_run else args.repeats, dry_run=args.cpu_dry_run)
        return
    from radial_diffusers._machine import cpu_model

    print(f"{cpu_model()}, torch {torch.__version__}")
    schemes = supported_schemes("cpu")
    tiny_report(schemes)
    if not args.skip_layers:
        layer_report(schemes)


if __name__ == "__main__":
    main()
