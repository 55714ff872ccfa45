"""Radial attention under Diffusers' context parallelism: the ring pieces against the single-call op, and the
tiny Wan and LTX-Video models under Ulysses 2, ring 2 and (four processes) Ulysses 2 x ring 2 against one process
(gloo on CPU, spawned with torchrun).

Tolerance: float32 throughout. Ulysses moves heads, not sums, so its attention is bit-identical; ring attention
adds each query row's softmax over two or four key chunks by log-sum-exp merges (a few float32 roundings, relative
1e-7 each) and the all-reduced gradients sum per-rank partials in another order. Measured: at most 7.2e-7 of the
output's and 5.8e-7 of the gradients' largest magnitude; asserted: 1e-5 of it (and frames of uint8-scale video,
in [0, 1]: 1e-5)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import radial_diffusers as rd
from radial_diffusers.errors import UnsupportedModelError
from radial_diffusers.layout import BlockLayout
from radial_diffusers.attention.chunks import PairPlan, chunk_bounds, merge_partial
from radial_diffusers.parallel import (check_parallel_call, hunyuan_video_plan, installed_cp_plan, ltx_video_plan,
                                      ring_step_ranges, text_padding)
from radial_diffusers.tiny import load_tiny

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parallel_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5
# Kandinsky 5's RoPE rounds q and k through bfloat16 (also in float32 models): two processes' float-order noise
# (~1e-7) flips a few of those roundings, measured up to 1.5e-5 of the scale
# Cosmos 1.0's EDM sampling scales the model's output by sigmas up to 80: the float-order noise of the transformer
# output (~1e-6 of its scale) reaches 1.6e-5 of the denoised latents' under ring 2
RTOL_BY_MODEL = {"tiny-kandinsky5": 1e-4, "tiny-cosmos1": 1e-4}


def _random_layout(n_blocks: int, block_size: int, seq_len: int, seed: int) -> BlockLayout:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_blocks, n_blocks, generator=g) < 0.4
    mask |= torch.eye(n_blocks, dtype=torch.bool)
    mask[3] = False  # a block row with no kept block: its queries attend nothing
    return BlockLayout.from_block_mask(mask, block_size, seq_len)


@pytest.mark.parametrize("parts", [2, 3, 4])
@pytest.mark.parametrize("seq_len", [160, 147])  # whole blocks; a partial tail block and unaligned chunks
def test_ring_pairs_merge_to_the_whole_op(parts, seq_len):
    """Per query chunk, the pair plans over every key chunk, merged by log-sum-exp, equal the op on the whole
    sequence (output, log-sum-exp), and their backward shares, given the merged output and log-sum-exp, add up to
    its gradients; with per-sample key padding."""
    block = 16
    layout = _random_layout(-(-seq_len // block), block, seq_len, seed=parts)
    g = torch.Generator().manual_seed(seq_len)
    q, k, v = (torch.randn(2, seq_len, 2, 8, generator=g) for _ in range(3))
    kv_lengths = torch.tensor([seq_len, seq_len - 21])
    grad = torch.randn(q.shape, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    want, want_lse = rd.block_sparse_attention(*leaves, layout, kv_lengths=kv_lengths, backend="torch",
                                               return_lse=True)
    want.backward(grad)
    bounds = chunk_bounds(seq_len, parts)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for q0, q1 in bounds:
        out = lse = None
        plans = [(k0, k1, PairPlan.build(layout, q0, q1 - q0, k0, k1 - k0)) for k0, k1 in bounds]
        for k0, k1, plan in plans:
            o, l = plan.forward(q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], kv_lengths, None, "torch")
            out, lse = (o, l) if out is None else merge_partial(out, lse, o, l)
        torch.testing.assert_close(out.to(q.dtype), want[:, q0:q1].detach())
        torch.testing.assert_close(lse, want_lse[..., q0:q1].detach().float())
        for k0, k1, plan in plans:
            if plan.empty:
                continue
            gq, gk, gv = plan.backward(grad[:, q0:q1], q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], out.to(q.dtype),
                                       lse, kv_lengths, None, "torch")
            dq[:, q0:q1] += gq
            dk[:, k0:k1] += gk
            dv[:, k0:k1] += gv
    for got, leaf in zip((dq, dk, dv), leaves):
        torch.testing.assert_close(got, leaf.grad)


@pytest.mark.parametrize("position", ["after", "before"])
@pytest.mark.parametrize("ulysses, ring", [(2, 1), (1, 2), (2, 2), (1, 3)])
def test_joint_sequence_shards_merge_to_the_whole_op(position, ulysses, ring):
    """A joint text + video sequence, each rank holding a chunk of the video and one of the text: the ring rank's
    plans against every ring rank's chunk, merged by log-sum-exp, equal the op on the whole sequence at the tokens
    it holds, and the backward shares add up to its gradients (Ulysses: one call in global order)."""
    from types import SimpleNamespace

    from radial_diffusers.parallel import _CPOp

    block, video, text = 16, 140, 24
    seq = video + text
    layout = _random_layout(-(-seq // block), block, seq, seed=ulysses * 10 + ring)
    g = torch.Generator().manual_seed(7)
    q, k, v, grad = (torch.randn(2, seq, 2, 8, generator=g) for _ in range(4))
    kv_lengths = torch.tensor([seq, seq - 9]) if position == "after" else None  # padded text at the end
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    want, want_lse = rd.block_sparse_attention(*leaves, layout, kv_lengths=kv_lengths, backend="torch",
                                               return_lse=True)
    want.backward(grad)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    def gather(t, ranges):
        return torch.cat([t[:, g0:g0 + n] for _, g0, n in ranges], dim=1)

    for r in range(ring):
        cp = SimpleNamespace(ring_degree=ring, _ring_local_rank=r, ulysses_degree=ulysses)
        op = _CPOp(layout, kv_lengths, "torch", SimpleNamespace(context_parallel_config=cp), text, position)
        steps = [ring_step_ranges(seq, text, position, ring, ulysses, r, step) for step in range(ring)]
        rows = steps[0][0]
        lq = gather(q, rows)
        plans = [(cols, op._plan(step, lq.shape[1], sum(n for *_, n in cols))) for step, (_, cols) in enumerate(steps)]
        out = lse = None
        for cols, plan in plans:
            o, l = plan.forward(lq, gather(k, cols), gather(v, cols), kv_lengths, None, "torch")
            out, lse = (o, l) if out is None else merge_partial(out, lse, o, l)
        torch.testing.assert_close(out, gather(want.detach(), rows))
        for cols, plan in plans:
            if plan.empty:
                continue
            gq, gk, gv = plan.backward(gather(grad, rows), lq, gather(k, cols), gather(v, cols), out, lse,
                                       kv_lengths, None, "torch")
            for local, g0, n in rows:
                dq[:, g0:g0 + n] += gq[:, local:local + n]
            for local, g0, n in cols:
                dk[:, g0:g0 + n] += gk[:, local:local + n]
                dv[:, g0:g0 + n] += gv[:, local:local + n]
    for got, leaf in zip((dq, dk, dv), leaves):
        torch.testing.assert_close(got, leaf.grad)


def test_pair_plan_skips_pairs_without_kept_blocks():
    mask = torch.eye(8, dtype=torch.bool)  # block-diagonal: chunk pairs off the diagonal keep nothing
    layout = BlockLayout.from_block_mask(mask, 16, 128)
    assert PairPlan.build(layout, 0, 64, 64, 64).empty
    assert not PairPlan.build(layout, 64, 64, 64, 64).empty
    unaligned = PairPlan.build(layout, 40, 40, 40, 40)  # the key chunk starts mid-block: a head and the rest
    assert len(unaligned.windows) == 2


def test_chunk_bounds_match_tensor_split():
    for total, parts in ((320, 4), (147, 4), (7, 3)):
        sizes = [len(c) for c in torch.arange(total).tensor_split(parts)]
        assert [b - a for a, b in chunk_bounds(total, parts)] == sizes


def _parallel_transformer(ulysses: int = 1, ring: int = 1, anything: bool = False, name: str = "tiny-wan",
                          plan: dict | None = None):
    """A tiny pipeline whose transformer has a context-parallel config and plan hooks installed as
    enable_parallelism installs them (no process group: the checks read the config and the hooks only);
    ``plan``: a plan or a function of the transformer giving one (default: the transformer's ``_cp_plan``)."""
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    from diffusers.hooks.context_parallel import apply_context_parallel

    pipe = load_tiny(name)
    cp = ContextParallelConfig(ulysses_degree=ulysses, ring_degree=ring, ulysses_anything=anything)
    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=cp)
    plan = plan(pipe.transformer) if callable(plan) else plan
    apply_context_parallel(pipe.transformer, cp, pipe.transformer._cp_plan if plan is None else plan)
    return pipe


def test_refused_combinations_change_nothing():
    """Ulysses degree not dividing the heads, a family that is not "multi-gpu" in the registry: clear errors before
    any processor changes."""
    pipe = _parallel_transformer(ulysses=4)  # tiny Wan: 2 heads
    before = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
    with pytest.raises(UnsupportedModelError, match=r"ulysses_degree=4 does not divide its 2 attention heads"):
        rd.apply_radial_attention(pipe)
    assert [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")] == before
    rd.apply_radial_attention(_parallel_transformer(ulysses=4, anything=True), rd.RadialConfig(block_size=16))  # uneven heads: accepted

    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    for name, match in (("tiny-ltx2", r"LTX-2 yet \(no context-parallel plan: radial-diffusers has none"),
                        ("tiny-hunyuan-i2v", r"image_condition_type='token_replace'.*run it on one process")):
        other = load_tiny(name.removesuffix("-i2v"))
        if name == "tiny-hunyuan-i2v":  # HunyuanVideo-I2V's 16-channel variant: first-frame tokens modulated apart
            other.transformer.register_to_config(image_condition_type="token_replace")
        other.transformer._parallel_config = ParallelConfig(
            context_parallel_config=ContextParallelConfig(ring_degree=2))
        before = [m.processor for m in other.transformer.modules() if hasattr(m, "processor")]
        with pytest.raises(UnsupportedModelError, match=match):
            rd.apply_radial_attention(other)
        assert [m.processor for m in other.transformer.modules() if hasattr(m, "processor")] == before


def test_skyreels_block_causal_mask_under_context_parallelism_is_refused_with_the_fix():
    """SkyReels-V2 diffusion forcing with causal_block_size > 1 (the transformer's block-causal frame mask): refused
    at the call, before anything is sharded or a step counted (1 frame per block: the two-process runs)."""
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2Transformer3DModel

    from radial_diffusers.parallel import skyreels_v2_plan

    pipe = _parallel_transformer(ring=2, name="tiny-skyreels-v2-df", plan=skyreels_v2_plan)
    transformer = pipe.transformer
    assert isinstance(transformer, SkyReelsV2Transformer3DModel)
    state = rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=1))
    transformer._set_ar_attention(2)  # what the DF pipelines do for causal_block_size=2
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 6, 8, 8, generator=g)
    with pytest.raises(UnsupportedModelError, match=r"block-causal frame mask \(2 latent frames per causal block.*"
                                                    r"call with causal_block_size=1 .*or on one process"):
        transformer(latents, torch.full((1, 6), 900.0),
                    torch.randn(1, 16, transformer.config.text_dim, generator=g), enable_diffusion_forcing=True)
    assert state.geometry is None and not state.sparse_calls and not state.dense_calls


def test_skyreels_plan_and_its_training_guard():
    """The video and RoPE tables split at the first block, the per-token modulation at every block, the tokens
    gathered at norm_out (the two-process runs check the numbers); sequence-parallel LoRA training refuses the
    modules after the gather, and accepts the default targets."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    from lora_training import ConfigError
    from lora_training.train import _check_sequence_parallel_targets
    from radial_diffusers.families import get_family
    from radial_diffusers.parallel import skyreels_v2_plan
    from radial_diffusers.tiny import tiny_skyreels_v2_df_pipeline

    transformer = load_tiny("tiny-skyreels-v2").transformer
    plan = skyreels_v2_plan(transformer)
    assert set(plan) == {"rope", "blocks.0", "blocks.1", "norm_out"}
    assert set(plan["blocks.0"]) == {"hidden_states", "temb"} and set(plan["blocks.1"]) == {"temb"}
    assert plan["blocks.1"]["temb"].split_dim == 2 and isinstance(plan["blocks.1"]["temb"], ContextParallelInput)
    assert isinstance(plan["norm_out"], ContextParallelOutput)
    with pytest.raises(UnsupportedModelError, match="has no blocks"):
        skyreels_v2_plan(tiny_skyreels_v2_df_pipeline(0, num_layers=0).transformer)
    family = get_family("skyreels-v2")
    _check_sequence_parallel_targets(transformer, family.lora_targets, family)
    for targets in ("proj_out", ["condition_embedder.time_embedder.linear_1"], "all-linear"):
        with pytest.raises(ConfigError, match=r"under sequence_parallel, SkyReels-V2's .*whole-sequence gradients"):
            _check_sequence_parallel_targets(transformer, targets, family)


def test_a_plan_other_than_ours_is_refused():
    """LTX-Video under Diffusers' own plan (which splits the text the cross-attention needs whole), HunyuanVideo
    under a plan of the user's: refused with the fix, nothing changed; under our plan, accepted, and removing radial
    attention from the joint text + video family warns that its stock processors cannot run on the shards."""
    for name, plan in (("tiny-ltx", None), ("tiny-hunyuan", {"": {}})):
        pipe = _parallel_transformer(ring=2, name=name, plan=plan)
        before = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
        with pytest.raises(UnsupportedModelError, match=r"plan other than the one radial attention shards .* "
                                                        r"rd.enable_context_parallelism\(pipe"):
            rd.apply_radial_attention(pipe)
        assert [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")] == before
    for name, plan in (("tiny-ltx", ltx_video_plan), ("tiny-hunyuan", hunyuan_video_plan)):
        pipe = _parallel_transformer(ring=2, name=name, plan=plan)
        rd.apply_radial_attention(pipe)
        with warnings.catch_warnings(record=True) as caught:  # joint text + video: stock cannot run on the shards
            warnings.simplefilter("always")
            rd.remove_radial_attention(pipe)
        said = [w for w in caught if "stock processors cannot run on this plan's shards" in str(w.message)]
        assert len(said) == (0 if name == "tiny-ltx" else 1), name


@pytest.mark.parametrize("name", ["tiny-hunyuan", "tiny-mochi", "tiny-hunyuan1.5"])
def test_padded_text_gives_the_same_video(name):
    """Masked text tokens appended (what an uneven text gets under context parallelism) leave the radial
    transformer's output unchanged, and text_padding asks for the tokens that make the text split evenly."""
    from diffusers import ContextParallelConfig

    pipe = load_tiny(name)
    rd.apply_radial_attention(pipe, rd.RadialConfig(**parallel_worker.CONFIG))
    family = rd.families.family_of(pipe.transformer)
    capture = parallel_worker._Capture(pipe.transformer)
    pipe(**parallel_worker._pipe_call(pipe, name))  # the last call: step 2 of 2, a sparse step
    capture.handle.remove()
    args, kwargs = capture.call
    kwargs = dict(kwargs, return_dict=False)
    text = family.read_call(pipe.transformer, args, kwargs).text_tokens
    pad = text_padding(ContextParallelConfig(ring_degree=2, ulysses_degree=2), family, text + 1)
    assert pad == 3 and (text + 1 + pad) % 4 == 0
    padded_args, padded_kwargs = family.pad_text(pipe.transformer, args, kwargs, pad)
    assert family.read_call(pipe.transformer, padded_args, padded_kwargs).text_tokens == text + pad
    want = pipe.transformer(*args, **kwargs)[0]
    got = pipe.transformer(*padded_args, **padded_kwargs)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


def test_uneven_sequence_is_refused_with_the_fix():
    from diffusers import ContextParallelConfig

    with pytest.raises(ValueError, match="ulysses_anything=True"):
        check_parallel_call(ContextParallelConfig(ulysses_degree=2, ring_degree=2), 330, [330])
    with pytest.raises(ValueError, match="shards 320 and 15 tokens"):  # a joint sequence: video and text each
        check_parallel_call(ContextParallelConfig(ring_degree=2), 335, [320, 15])
    check_parallel_call(ContextParallelConfig(ulysses_degree=2, ulysses_anything=True), 331, [331])
    check_parallel_call(ContextParallelConfig(ring_degree=2), 336, [320, 16])


def test_diffusers_private_api_still_there():
    """The private Diffusers symbols radial context parallelism drives; when this fails, the named symbol moved
    (check the supported Diffusers range in pyproject.toml)."""
    from diffusers.models import attention_dispatch

    fn = getattr(attention_dispatch, "_templated_context_parallel_attention", None)
    assert fn is not None, "diffusers.models.attention_dispatch._templated_context_parallel_attention is gone"
    params = inspect.signature(fn).parameters
    for name in ("forward_op", "backward_op", "_parallel_config"):
        assert name in params, f"_templated_context_parallel_attention lost its {name!r} parameter"
    all_to_all = getattr(attention_dispatch, "SeqAllToAllDim", None)  # the Ulysses stage of unified
    assert all_to_all is not None and list(inspect.signature(all_to_all.forward).parameters)[1:] == [
        "group", "input", "scatter_id", "gather_id"], "diffusers' SeqAllToAllDim moved or changed its signature"
    ring = getattr(attention_dispatch, "TemplatedRingAttention", None)
    assert ring is not None, "diffusers.models.attention_dispatch.TemplatedRingAttention is gone"
    source = inspect.getsource(ring.forward)
    assert "_save_ctx=i == 0" in source and "next_rank = (rank + 1) % world_size" in source, (
        "TemplatedRingAttention no longer visits key/value chunks in the order radial_diffusers.parallel counts "
        "(step i = ring rank (rank + i) % ring_degree)")
    from diffusers.hooks import context_parallel

    for name in ("_CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE", "_CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE",
                 "apply_context_parallel"):
        assert hasattr(context_parallel, name), f"diffusers.hooks.context_parallel.{name} is gone"
    pipe = _parallel_transformer(ring=2)  # the plan read back from the hooks' names and metadata
    assert installed_cp_plan(pipe.transformer) == {
        k: v if isinstance(v, dict) else [v] for k, v in pipe.transformer._cp_plan.items()}, (
        "diffusers.hooks.context_parallel's split / gather hooks no longer keep their plan entry as .metadata under "
        "the names radial_diffusers.parallel.installed_cp_plan reads")


def _torchrun(tmp_path: Path, processes: int, *modes: str) -> dict:
    out = tmp_path / f"cp{processes}.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         str(REPO / "tests" / "parallel_worker.py"), str(out), *modes],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return {name: parallel_worker.run_case(name, None) for name in parallel_worker.FAMILIES}


def _assert_matches(got: dict, want: dict, label: str, rtol: float = RTOL) -> None:
    # the same dense and sparse calls per layer (eager mode counts them, a compiled forward does not)
    assert got["calls"] is None or got["calls"] == want["calls"], label
    for key in ("frames", "out", "grads", "lora", "stock"):
        if got[key] is None:
            continue
        scale = want[key].abs().max()
        err = (got[key] - want[key]).abs().max()
        assert err <= rtol * scale, f"{label} {key}: max error {err:.3g} > {rtol} x {scale:.3g}"


def test_two_processes_ulysses_and_ring_equal_one_process(tmp_path, single):
    """Every multi-gpu family under Ulysses 2 and ring 2, and (compiled, torch.compile's torch.cond branches under
    ring attention) the video of tiny Wan, equal one eager process; the op under Diffusers' uneven Ulysses / ring
    modes (331 tokens in shards of 166 and 165) equals the single-process op."""
    results = _torchrun(tmp_path, 2, "2x1", "1x2", "1x2c", "2x1a", "1x2a")
    for (name, u, r, compiled), got in results.items():
        if name == "anything":
            torch.testing.assert_close(got["got"], got["want"], msg=f"uneven ulysses {u} ring {r}")
            continue
        _assert_matches(got, single[name], f"{name} ulysses {u} ring {r}{' compiled' if compiled else ''}",
                        RTOL_BY_MODEL.get(name, RTOL))
    assert len(results) == 2 * len(parallel_worker.FAMILIES) + len(parallel_worker.COMPILED) + 2


def test_gradients_through_diffusers_ring_beyond_two_ranks_are_refused():
    """Diffusers' ring backward (0.42) sends each dK / dV accumulator to the next rank while the key/value chunks go
    the other way: right for 2 ring ranks only. Ring and unified Ulysses x ring run our own ring (any size, tested on
    3 processes below); Diffusers' uneven ring (``ring_anything``) with more than 2 ring ranks is refused at the
    forward when gradients would flow (every layer: dense ones run Diffusers' ring too); inference is not."""
    from diffusers import ContextParallelConfig

    from radial_diffusers.parallel import check_ring_gradients

    for ring, ulysses, anything, refused in ((3, 1, False, False), (3, 2, False, False), (2, 1, True, False),
                                             (3, 1, True, True)):
        cp = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, ring_anything=anything)
        if refused:
            with pytest.raises(NotImplementedError, match=rf"ring_anything=True\) with ring_degree={ring}"):
                check_ring_gradients(cp)
        else:
            check_ring_gradients(cp)
    pipe = _parallel_transformer(ring=3)
    pipe.transformer._parallel_config.context_parallel_config.ring_anything = True
    rd.apply_radial_attention(pipe.transformer, rd.RadialConfig(block_size=16, dense_steps=0))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    with pytest.raises(NotImplementedError, match=r"uneven ring attention"):
        pipe.transformer(x, torch.tensor([500.0]), text)


@pytest.mark.parametrize("processes, ulysses", [(3, 1), (4, 2)])
def test_our_ring_gradients_on_several_processes(tmp_path, processes, ulysses):
    """Ring attention of 3 gloo processes, and unified Ulysses 2 x ring 2 on 4 (chunks starting mid-block): outputs
    and q / k / v gradients equal the single-process op on an all-kept and a sparse layout (Diffusers' own ring gets
    dK / dV wrong from 3 ring ranks)."""
    out = tmp_path / "ring.pt"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         str(Path(__file__).resolve().parent / "ring_worker.py"), str(out), str(ulysses)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(out)
    assert set(results) == {"all-kept", "sparse"}
    for case, errors in results.items():
        assert set(errors) == {"out", "dq", "dk", "dv"} and max(errors.values()) < 1e-5, (case, errors)


def test_an_attention_backend_without_context_parallelism_is_refused_before_any_change():
    from radial_diffusers.parallel import _check_parallel_backend, _clear_parallel_config

    transformer = load_tiny("tiny-wan").transformer
    transformer.set_attention_backend("native")
    _check_parallel_backend(transformer)
    transformer.set_attention_backend("_native_math")
    with pytest.raises(ValueError, match=r"'_native_math' does not support context parallelism; call "
                                         r"transformer.set_attention_backend\(\) with one of .*nothing was changed"):
        _check_parallel_backend(transformer)
    pipe = _parallel_transformer(ulysses=2)  # as a refused enable_parallelism leaves it: config on model, processors
    for block in pipe.transformer.blocks:
        block.attn1.processor._parallel_config = pipe.transformer._parallel_config
    _clear_parallel_config(pipe.transformer)
    assert pipe.transformer._parallel_config is None
    assert all(b.attn1.processor._parallel_config is None for b in pipe.transformer.blocks)
    rd.apply_radial_attention(pipe.transformer, rd.RadialConfig(block_size=16, dense_steps=0))  # no stale config


@pytest.mark.parametrize("name, ring, refused", [("tiny-wan", 1, False), ("tiny-wan", 2, True),
                                                  ("tiny-hunyuan", 1, True), ("tiny-cogvideox", 1, True)])
def test_cli_dense_attention_under_context_parallelism(name, ring, refused):
    """``generate --attention dense --ulysses / --ring``: Diffusers' stock attention on the shards is wrong for a
    joint text + video family (its text chunks) and fails under ring on the native backend: refused with the fix."""
    import argparse

    from radial_diffusers.cli import CLIError, _check_parallel_attention
    from radial_diffusers.families import get_tiny

    family, _ = get_tiny(name)
    args = argparse.Namespace(attention="dense", ring=ring, ulysses=2 // ring)
    if refused:
        with pytest.raises(CLIError, match=r"--attention dense with --ulysses / --ring: .*run the dense baseline on "
                                           r"one process"):
            _check_parallel_attention(args, family)
    else:
        _check_parallel_attention(args, family)
    _check_parallel_attention(argparse.Namespace(attention="radial", ring=ring, ulysses=2 // ring), family)
