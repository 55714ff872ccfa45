"""GPU attention benchmark and check: correctness of every available backend (triton, flex, torch) and of every
Triton launch config against an fp32 reference on fresh random inputs, then forward (and with --backward,
forward+backward) timings per geometry beside dense SDPA (FLASH_ATTENTION, cuDNN) and FlexAttention on the same
radial mask, with density, the issue's speed-up targets and effective TFLOP/s over the computed blocks; under each
table, every launch config the Triton tuner timed at that shape (``tuner <kernel> <config> <ms>``, the chosen one
marked), which compares the configs the defaults were picked from without a GPU.

Run on a CUDA machine:  python bench/attention.py [--quick] [--backward] [--hunyuan-509]
(bench/gpu_check.sh wraps it with a timeout). Prints tables; exits 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import radial_diffusers as rd
from radial_diffusers.attention.op import _triton_ready

DEVICE = "cuda"

GEOMETRIES = [
    # name, model, latent frames, tokens per frame, text tokens, decay, heads, head_dim (adjacent "full", the
    # model's default sink: Wan on, HunyuanVideo off)
    ("Wan2.1-1.3B 480x832x81", "wan", 21, 1560, 0, 0.2, 12, 128),
    ("Wan2.1-14B 768x1280x69", "wan", 18, 3840, 0, 0.2, 40, 128),
]
# Optional (--hunyuan-509): the paper's 4x setting with 256 text tokens; long (S = 461,056), so it runs last.
HUNYUAN_509 = ("HunyuanVideo 720x1280x509", "hunyuan", 128, 3600, 256, 1.0, 24, 128)


def reference(q, k, v, layout, kv_lengths=None):
    """fp32 dense masked attention (small shapes only)."""
    b, s, h, d = q.shape
    mask = layout.to(q.device).token_mask()[None].expand(b, s, s).clone()
    if kv_lengths is not None:
        mask &= torch.arange(s, device=q.device)[None, None, :] < kv_lengths[:, None, None]
    qt, kt, vt = (x.float().transpose(1, 2) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None])
    return out.transpose(1, 2)


def _failure(exc: Exception) -> str:
    """One line naming the error of a check that raised (a compile error, out of resources, a wrong result's
    assertion). A CUDA error is raised again: it leaves the context unusable, so no later number would mean
    anything."""
    text = str(exc)
    if "CUDA error" in text or type(exc).__name__ == "AcceleratorError":
        raise exc
    lines = [line for line in text.splitlines() if line.strip()] or [""]
    # Triton's CompilationError quotes the kernel's source first and ends with the error
    line = lines[-1] if type(exc).__name__ == "CompilationError" else lines[0]
    return f"{type(exc).__name__}: {line.strip()}"[:160]


def check(backends) -> bool:
    ok = True
    print("\n## correctness vs fp32 dense masked reference (relative max error)")
    print(f"{'backend':8s} {'dtype':9s} {'case':34s} {'out':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}")
    cases = [("wan F=6 tpf=200 B=64 unaligned", "wan", 6, 200, 0, 64),
             ("hunyuan F=4 tpf=256 text=77 B=128", "hunyuan", 4, 256, 77, 128),
             ("wan F=8 tpf=96 B=16 d=64", "wan", 8, 96, 0, 16)]
    for backend in backends:
        for dtype in (torch.float32, torch.bfloat16):
            # FlexAttention compiles per shape and dtype: check it on bf16 only to keep the run short.
            if backend == "flex" and dtype != torch.bfloat16:
                continue
            for name, model, frames, tpf, text, block in cases:
                if backend == "flex" and block != 128:  # flex trains on 128-token blocks only
                    continue
                s = frames * tpf + text
                mask = rd.radial_block_mask(frames, tpf, model=model, block_size=block, text_tokens=text)
                layout = rd.BlockLayout.from_block_mask(mask, block, s)
                d = 128 if block != 16 else 64
                q, k, v = (torch.randn(2, s, 4, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
                kv = torch.tensor([s, s - text // 2], device=DEVICE) if text else None
                try:
                    out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend=backend)
                    ref = reference(q, k, v, layout, kv)
                    g = torch.randn_like(ref)
                    got = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
                    want = torch.autograd.grad(ref, (q, k, v), g)
                    errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                            for a, b in zip((out, *got), (ref, *want))]
                    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
                    flag = "" if max(errs) <= tol else "  FAIL"
                except Exception as exc:  # one failing case must not hide the others' numbers
                    errs, flag = [], "  FAIL " + _failure(exc)
                ok &= not flag
                print(f"{backend:8s} {str(dtype)[6:]:9s} {name:34s} " + " ".join(f"{e:9.2e}" for e in errs) + flag)
    return ok


def bench_ms(fn, iters=5) -> float:
    if DEVICE == "cpu":  # --cpu-dry-run: the same code path, timed on the host
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _sdpa_rows(q, k, v, flops, backward: bool) -> list[tuple[str, float, float]]:
    """Dense SDPA with the flash and the cuDNN backend: (label, ms, FLOPs) rows (skipped where unavailable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for label, sdp in (("dense SDPA flash", SDPBackend.FLASH_ATTENTION), ("dense SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(sdp):
                if backward:
                    qg, kg, vg = (x.detach().transpose(1, 2).requires_grad_(True) for x in (q, k, v))
                    t = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qg, kg, vg).backward(
                        torch.ones_like(qg)), iters=3)
                else:
                    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
                    t = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
            rows.append((label, t, flops))
        except RuntimeError as exc:
            print(f"# {label}: unavailable ({str(exc).splitlines()[0][:80]})")
    return rows


def _flex_direct(q, k, v, layout, backward: bool) -> float:
    """Compiled FlexAttention called directly on the layout's BlockMask (its own autograd; the op's flex backend
    re-runs the forward inside backward, which would understate the peer)."""
    from radial_diffusers.attention import flex

    mask = flex.block_mask_for(layout, q.shape[0])
    fn = flex._compiled_flex()
    if not backward:
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        with torch.no_grad():
            return bench_ms(lambda: fn(qt, kt, vt, block_mask=mask))
    qg, kg, vg = (x.detach().transpose(1, 2).requires_grad_(True) for x in (q, k, v))
    grad = torch.ones_like(qg)
    return bench_ms(lambda: fn(qg, kg, vg, block_mask=mask).backward(grad), iters=3)


def _forward_variants() -> list[tuple[str, str, str | None]]:
    """(label, RADIAL_TRITON_KERNEL, precision) of our Triton forwards this device runs: the portable kernel, the
    Hopper one (sm_90+), and fp8 (sm_89 / sm_90); all of them in the CPU dry run (interpreted)."""
    from radial_diffusers.attention import fp8, triton_tma

    cap = torch.cuda.get_device_capability() if DEVICE == "cuda" else None
    out = [("ours triton portable", "portable", None)]
    if triton_tma.available() and (cap is None or cap[0] == 9):
        out.append(("ours triton tma", "tma", None))
    if cap is None or cap in fp8.SUPPORTED_CAPABILITIES:
        out.append(("ours triton fp8", "auto", "fp8"))
    return out


class _Env:
    """Set one environment variable for a ``with`` block."""

    def __init__(self, name: str, value: str):
        self.name, self.value, self.saved = name, value, None

    def __enter__(self):
        self.saved = os.environ.get(self.name)
        os.environ[self.name] = self.value

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.saved


def _ours_rows(q, k, v, layout, backends, flops, backward: bool) -> list[tuple[str, float, float]]:
    rows = []
    for backend in backends:
        if backend == "flex" and DEVICE == "cuda":
            rows.append(("FlexAttention, same mask", _flex_direct(q, k, v, layout, backward), flops))
            continue
        if backend == "triton" and not backward:
            for label, variant, precision in _forward_variants():
                with _Env("RADIAL_TRITON_KERNEL", variant), torch.no_grad():
                    t = bench_ms(lambda: rd.block_sparse_attention(q, k, v, layout, backend=backend,
                                                                   precision=precision))
                rows.append((label, t, flops))
            continue
        if backward:
            qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
            grad = torch.ones_like(q)
            t = bench_ms(lambda: rd.block_sparse_attention(qg, kg, vg, layout, backend=backend).backward(grad),
                         iters=3)
        else:
            with torch.no_grad():
                t = bench_ms(lambda: rd.block_sparse_attention(q, k, v, layout, backend=backend))
        rows.append((f"ours backend={backend}", t, flops))
    return rows


def _print_rows(rows, what: str) -> None:
    base = next((t for label, t, _ in rows if label == "dense SDPA flash"), None)
    for label, t, flops in rows:
        vs = f"{base / t:6.2f}x vs flash" if base else ""
        print(f"{label:26s} {what:8s} {t:9.2f} ms  {vs}  {flops / t / 1e9:7.1f} TFLOP/s")
    _print_targets(rows, what)


def _print_targets(rows, what: str) -> None:
    """The kernel targets (issue 15) as measured ratios: TFLOP/s per computed block vs cuDNN dense (forward >= 0.85,
    forward+backward >= 0.75), vs FlexAttention on the same layout (>= 1.25, forward), fp8 vs our bf16 (>= 1.5)."""
    rate = {label: flops / t for label, t, flops in rows}
    cudnn, flex = rate.get("dense SDPA cuDNN"), rate.get("FlexAttention, same mask")
    ours = {label: r for label, r in rate.items() if label.startswith("ours triton") and "fp8" not in label}
    if not ours:
        ours = {label: r for label, r in rate.items() if label == "ours backend=triton"}
    for label, r in ours.items():
        parts = []
        if cudnn:
            parts.append(f"{r / cudnn:5.2f} x cuDNN (target {0.85 if what == 'fwd' else 0.75})")
        if flex and what == "fwd":
            parts.append(f"{r / flex:5.2f} x Flex (target 1.25)")
        if parts:
            print(f"  {label:24s} " + ", ".join(parts))
    if "ours triton fp8" in rate and ours:
        best = max(ours.values())
        print(f"  ours triton fp8          {rate['ours triton fp8'] / best:5.2f} x our best 16-bit forward (target 1.5)")


class _TunerLog:
    """Record, per tuning key, the launch configs the Triton tuner timed (config, ms) and the one it chose, while a
    ``with`` block runs, so a GPU run shows how the configs compare (for example the Hopper forward's 3-stage
    default against its 2-stage ring). A key chosen before (in memory or in the tuning file), or picked with tuning
    off (CPU, ``RADIAL_TRITON_AUTOTUNE=0``), is listed once with no timings."""

    def __init__(self):
        self.records: list[tuple[str, list[tuple[tuple, float]], tuple]] = []  # (kernel + tag, timed, chosen)
        self.seen: set[tuple] = set()

    def __enter__(self):
        from radial_diffusers.attention import triton_tuning

        self.module, self.real_pick = triton_tuning, triton_tuning.pick

        def pick(kind, launch, candidates, key, *, on_cuda):
            real_bench, current, timed = triton_tuning.triton.testing.do_bench, {}, []

            def launch_seen(cfg):
                current["cfg"] = cfg
                return launch(cfg)

            def bench(fn, **kwargs):
                ms = real_bench(fn, **kwargs)
                timed.append((current.get("cfg"), ms))
                return ms

            triton_tuning.triton.testing.do_bench = bench
            try:
                chosen = self.real_pick(kind, launch_seen, candidates, key, on_cuda=on_cuda)
            finally:
                triton_tuning.triton.testing.do_bench = real_bench
            if timed or key not in self.seen:  # labelled with the kernel and its tag, as in the key ("fwd_tmafp8")
                label = next((x for x in key if isinstance(x, str) and x.startswith(kind)), kind)
                self.records.append((label, timed, chosen))
            self.seen.add(key)
            return chosen

        triton_tuning.pick = pick
        return self

    def __exit__(self, *exc):
        self.module.pick = self.real_pick

    def print_and_clear(self) -> None:
        for label, timed, chosen in self.records:
            name = "x".join(map(str, chosen))
            if not timed:
                print(f"  tuner {label:11s} {name} (not timed: chosen before, or tuning off)")
                continue
            print(f"  tuner {label:11s} " + ", ".join(f"{'x'.join(map(str, cfg))} {ms:.3f} ms"
                                                     f"{' (chosen)' if cfg == chosen else ''}" for cfg, ms in timed))
        self.records.clear()


def timings(backends, with_backward: bool, geometries) -> None:
    """Forward (and forward+backward) per geometry. FLOPs: 4 S^2 D per head forward (dense) or over the computed
    blocks (ours); forward+backward counts 3.5x the forward (the backward does 2.5x its matmul work), as
    FlashAttention reports it. The dense forward+backward of the longest geometry runs last."""
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run)"
    print(f"\n## timings (bf16, batch 1; ms per call; TFLOP/s over computed blocks) on {where}")
    for name, model, frames, tpf, text, decay, heads, d in geometries:
        s = frames * tpf + text
        mask = rd.radial_block_mask(frames, tpf, model=model, decay_factor=decay, text_tokens=text)
        layout = rd.BlockLayout.from_block_mask(mask, 128, s).to(DEVICE)
        stats = rd.mask_stats(mask, 128, s, d)
        print(f"\n### {name}: S={s}, heads={heads}, density={stats.density:.4f} (1/density={1 / stats.density:.2f}); "
              f"targets: fwd >= {0.85 / stats.density:.2f}x vs flash, fwd+bwd >= {0.7 / stats.density:.2f}x")
        q, k, v = (torch.randn(1, s, heads, d, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        dense_flops, sparse_flops = stats.dense_flops * heads, stats.sparse_flops * heads
        with _TunerLog() as tuner:  # each kernel's candidates, timed by the tuner at this shape
            dense = _sdpa_rows(q, k, v, dense_flops, False)
            _print_rows(dense + _ours_rows(q, k, v, layout, backends, sparse_flops, False), "fwd")
            tuner.print_and_clear()
            if with_backward:
                ours = _ours_rows(q, k, v, layout, backends, 3.5 * sparse_flops, True)
                _print_rows(_sdpa_rows(q, k, v, 3.5 * dense_flops, True) + ours, "fwd+bwd")
                tuner.print_and_clear()
        del q, k, v
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def check_triton_configs(frames=4, tpf=256, text=77, block=128, heads=4, d=128) -> bool:
    """Every launch config the Triton autotuner may pick, forced one at a time, against the fp32 reference (bf16,
    block 128, head_dim 128, per-sample key padding)."""
    from radial_diffusers.attention import triton_kernels as tk

    print("\n## every Triton launch config vs fp32 reference (bf16, relative max error of out, dq, dk, dv)")
    s = frames * tpf + text
    layout = rd.BlockLayout.from_block_mask(
        rd.radial_block_mask(frames, tpf, model="hunyuan", block_size=block, text_tokens=text), block, s)
    q, k, v = (torch.randn(2, s, heads, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    kv = torch.tensor([s, s - 40], device=DEVICE)
    ref = reference(q, k, v, layout, kv)
    g = torch.randn_like(ref)
    want = (ref, *torch.autograd.grad(ref, (q, k, v), g))
    ok = True
    original = tk.candidate_configs
    kinds = ["fwd", "dq", "dkdv"]
    if DEVICE == "cpu" or (tk.triton_tma.available() and torch.cuda.get_device_capability()[0] == 9):
        kinds += ["fwd_tma", "dq_tma", "dkdv_tma"]  # the Hopper kernels (interpreted in the CPU dry run)
    saved_variant = os.environ.get("RADIAL_TRITON_KERNEL")
    for kind in kinds:
        # the configs of one variant are forced with that variant
        os.environ["RADIAL_TRITON_KERNEL"] = "tma" if kind.endswith("_tma") else "portable"
        configs = original(kind, block, d, 2)
        if DEVICE == "cpu" and kind.endswith("_tma"):  # the dry run: tests/test_triton.py forces every TMA config
            configs = configs[:1]
        for cfg in configs:
            tk.candidate_configs = lambda k_, *a, _c=cfg, _k=kind: [_c] if k_ == _k else original(k_, *a)[:1]
            tk.triton_tuning.CACHE.memory.clear()
            try:
                out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
                got = (out, *torch.autograd.grad(out, (q, k, v), g.to(out.dtype)))
                errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, want)]
                flag = "" if max(errs) <= 1e-2 else "  FAIL"
            except Exception as exc:  # anything but "does not fit" is a failure; the other configs still run
                if "config fits this device" in str(exc):
                    errs, flag = [], "  skipped: does not fit this GPU (the autotuner skips it too)"
                else:
                    errs, flag = [], "  FAIL " + _failure(exc)
            finally:
                tk.candidate_configs = original
                tk.triton_tuning.CACHE.memory.clear()
            ok &= "FAIL" not in flag
            print(f"{kind:7s} {'x'.join(map(str, cfg)):12s} " + " ".join(f"{e:9.2e}" for e in errs) + flag)
    if saved_variant is None:
        os.environ.pop("RADIAL_TRITON_KERNEL", None)
    else:
        os.environ["RADIAL_TRITON_KERNEL"] = saved_variant
    return ok


def check_v2(frames=4, tpf=256, text=77, block=128, heads=4, d=128) -> bool:
    """Issue 15's run-time properties: two calls with the tuned configs give bitwise equal outputs and gradients;
    a forward captured in a CUDA graph with nothing tuned (the fixed default) replays equal to eager with that
    default; the extra memory of forward and backward beyond inputs, outputs and gradients; fp8 vs bf16 error."""
    from radial_diffusers.attention import triton_tuning

    print("\n## kernels v2: determinism, CUDA-graph capture, extra memory, fp8 error (bf16)")
    s = frames * tpf + text
    layout = rd.BlockLayout.from_block_mask(
        rd.radial_block_mask(frames, tpf, model="hunyuan", block_size=block, text_tokens=text), block, s).to(DEVICE)
    q, k, v = (torch.randn(2, s, heads, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    kv = torch.tensor([s, s - 40], device=DEVICE)
    g = torch.randn_like(q)

    def run():
        out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), g))

    first, second, third = run(), run(), run()
    same = all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, second, third))
    print(f"bitwise equal over 3 calls (out, dq, dk, dv): {same}")
    ok = same
    if DEVICE == "cuda":
        with torch.no_grad():
            x = (q.detach(), k.detach(), v.detach())
            saved = triton_tuning.CACHE
            triton_tuning.CACHE = triton_tuning.TuningCache()
            try:
                with _Env("RADIAL_TRITON_AUTOTUNE", "0"):  # the fixed default, compiled before the capture
                    eager = rd.block_sparse_attention(*x, layout, kv_lengths=kv, backend="triton")
                triton_tuning.CACHE = triton_tuning.TuningCache()  # nothing chosen: the capture must not time
                with _Env("RADIAL_TRITON_CACHE", "/nonexistent/none.json"):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        captured = rd.block_sparse_attention(*x, layout, kv_lengths=kv, backend="triton")
                graph.replay()
                torch.cuda.synchronize()
                replay_ok = torch.equal(captured, eager)
            finally:
                triton_tuning.CACHE = saved
            print(f"CUDA-graph capture with nothing tuned: replay equals eager default: {replay_ok}")
            ok &= replay_ok
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = rd.block_sparse_attention(*x, layout, kv_lengths=kv, backend="triton")
            fwd_extra = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size() \
                - 2 * heads * s * 4
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
        mid = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grads = torch.autograd.grad(out, (q, k, v), g)
        bwd_extra = torch.cuda.max_memory_allocated() - mid - sum(x.numel() * x.element_size() for x in grads)
        rows = 2 * heads * s * 4
        print(f"extra memory beyond inputs/outputs/gradients: forward {fwd_extra / 1e6:.2f} MB, backward "
              f"{bwd_extra / 1e6:.2f} MB (one float32 per row: {rows / 1e6:.2f} MB; the Hopper kernels' "
              f"descriptor scratch: 128 B (forward) / 256 B (dQ, dK/dV) per program; q is "
              f"{q.numel() * 2 / 1e6:.1f} MB)")
        del out, grads, base
    from radial_diffusers.attention import fp8

    if DEVICE != "cuda" or torch.cuda.get_device_capability() in fp8.SUPPORTED_CAPABILITIES:
        with torch.no_grad():
            x = (q.detach(), k.detach(), v.detach())
            low = rd.block_sparse_attention(*x, layout, kv_lengths=kv, backend="triton", precision="fp8").float()
            ref = reference(*x, layout, kv)
        err = ((low - ref).abs().max() / ref.abs().max()).item()
        cos = torch.nn.functional.cosine_similarity(low.flatten(), ref.flatten(), dim=0).item()
        print(f"fp8 forward vs fp32 reference: relative max error {err:.3e}, cosine similarity {cos:.5f}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="correctness only")
    p.add_argument("--backward", action="store_true", help="also time forward+backward (every geometry)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="the checks and timing tables on tiny shapes on CPU (torch backend; also triton under "
                        "TRITON_INTERPRET=1); not run there: FlexAttention, cuDNN and CUDA-event timing")
    p.add_argument("--hunyuan-509", action="store_true", help="also time HunyuanVideo 720x1280x509 (last)")
    p.add_argument("--backends", default=None, help="comma-separated subset of torch,flex,triton to check and time")
    p.add_argument("--time-backends", default=None,
                   help="comma-separated backends to time (default: the checked ones except torch)")
    args = p.parse_args()
    if args.cpu_dry_run:  # every code path on tiny shapes (Triton under TRITON_INTERPRET=1), for CI
        global DEVICE
        DEVICE = "cpu"
        from radial_diffusers.attention.triton_kernels import interpreting

        backends = ["torch", "triton"] if interpreting() else ["torch"]
        ok = check(["torch"])
        if interpreting():
            ok &= check_triton_configs(frames=2, tpf=48, text=7, block=16, heads=1, d=16)
            ok &= check_v2(frames=2, tpf=48, text=7, block=16, heads=1, d=16)
        timings(backends, True, [("tiny wan (dry run)", "wan", 2, 96, 0, 0.2, 1, 16)])
        return 0 if ok else 1
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    torch.manual_seed(int(time.time()))
    backends = (["triton"] if _triton_ready(torch.device("cuda")) else []) + ["flex", "torch"]
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, backends {backends}")
    # Order: what the defaults do first (correctness, then timings), every other launch config last, so that a run
    # cut short by its time limit still has the numbers of the configs users get.
    tune = os.environ.get("RADIAL_TRITON_AUTOTUNE")  # gpu_check.sh sets 0 (fixed configs) unless GPU_CHECK_TUNE=1
    os.environ["RADIAL_TRITON_AUTOTUNE"] = "0"  # small correctness shapes: default configs, no tuning runs
    ok = check(backends)
    if "triton" in backends:
        ok &= check_v2()
    print("\ncorrectness of the defaults:", "all checks passed" if ok else "FAILURES (above)", flush=True)
    if tune is None:
        del os.environ["RADIAL_TRITON_AUTOTUNE"]  # the library's default: tune, as users' runs do
    else:
        os.environ["RADIAL_TRITON_AUTOTUNE"] = tune
    if not args.quick:
        # the PyTorch path gathers per query block and is slow by design on a GPU: timed only when asked for
        timed = args.time_backends.split(",") if args.time_backends else [b for b in backends if b != "torch"]
        timings([b for b in backends if b in timed], args.backward,
                GEOMETRIES + ([HUNYUAN_509] if args.hunyuan_509 else []))
    if "triton" in backends:
        os.environ["RADIAL_TRITON_AUTOTUNE"] = "0"
        ok &= check_triton_configs()
    print("\nRESULT:", "all correctness checks passed" if ok else "CORRECTNESS FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
