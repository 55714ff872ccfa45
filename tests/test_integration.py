"""Radial processors + step hook inside the tiny Wan T2V / Wan I2V / HunyuanVideo pipelines."""

from __future__ import annotations

import warnings

import pytest
import torch

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from radial_diffusers.families import random_tiny_models
from radial_diffusers.processors import RadialWanAttnProcessor
from radial_diffusers.tiny import default_call_kwargs, load_tiny
from tiny_calls import call_kwargs

MODELS = list(random_tiny_models())  # every registered random tiny model
# Pipelines whose __call__ takes one prompt and makes one video (Diffusers 0.42 WanVACEPipeline): batch 1, with CFG
ONE_PROMPT_PIPELINES = ("WanVACEPipeline",)


@pytest.fixture(scope="module")
def pipes(tiny_pipes):
    return tiny_pipes


def _call(pipe, name, steps=3, batch=2, seed=0, **extra):
    kwargs = dict(call_kwargs(pipe, name, batch, seed), num_inference_steps=steps, output_type="latent")
    # batch via a list of prompts (WanImageToVideoPipeline does not repeat image embeds for num_videos_per_prompt)
    prompts = ["a cat dancing on the beach", "a dog running in the snow"][:batch]
    kwargs.update(extra)
    with torch.no_grad():
        if type(pipe).__name__ in ONE_PROMPT_PIPELINES:
            prompts = prompts[0]
            kwargs["negative_prompt"] = kwargs["negative_prompt"][0]
        return pipe(prompt=prompts, generator=torch.Generator().manual_seed(seed), **kwargs).frames


@pytest.mark.parametrize("name", MODELS)
def test_all_dense_config_reproduces_stock_exactly(pipes, name):
    pipe = pipes[name]
    stock = _call(pipe, name)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1.0, block_size=16))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense = _call(pipe, name)
    finally:
        rd.remove_radial_attention(pipe)
    assert torch.equal(dense, stock)
    assert sum(state.sparse_calls.values()) == 0 and sum(state.dense_calls.values()) > 0


@pytest.mark.parametrize("name", MODELS)
def test_sparse_run_batch2_cfg(pipes, name):
    """A batch-2 CFG run: the first block's self-attention at the first sparse step equals the stock processor (dense
    SDPA) with the expanded radial token mask (and the text padding as key lengths) on the same inputs."""
    import inspect

    pipe = pipes[name]
    stock = _call(pipe, name)
    first = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    # the first attention layer of every expert (Wan2.2 A14B has two), checked where it first runs sparse
    layers = {id(s.processors[0]): (s._originals[0][0], s._originals[0][1], s) for s in first.experts}
    seen = {}

    def capture(module, args, kwargs, output):
        if not seen and module.processor.use_sparse:
            seen.update(args=args, kwargs=kwargs, out=output, key=id(module.processor))

    hooks = [attn.register_forward_hook(capture, with_kwargs=True) for attn, _, _ in layers.values()]
    try:
        sparse = _call(pipe, name)
        attn, dense_proc, state = layers[seen["key"]]  # dense_proc: the stock processor radial attention replaced
        call = dict(inspect.signature(dense_proc).bind(attn, *seen["args"], **seen["kwargs"]).arguments)
        del call["attn"]
        batch, text_mask = call["hidden_states"].shape[0], call.get("attention_mask")
        with torch.no_grad():
            if "attention_mask" not in call and "attention_mask" not in inspect.signature(dense_proc).parameters:
                # Kandinsky 5: the stock self-attention takes no mask; its SDPA call gets the radial token mask
                with sdpa_restricted_to(state.layout.token_mask()):
                    want = dense_proc(attn, **call)
            elif text_mask is not None and text_mask.ndim == 2:
                # Mochi: the mask is over the text only, and the stock processor attends per sample over [video,
                # valid text] with F.scaled_dot_product_attention: give that call the radial token mask.
                # HunyuanVideo-1.5: a text-only mask too; its stock processor makes the [video, text] mask itself,
                # which the radial token mask then narrows
                with sdpa_restricted_to(state.layout.token_mask()):
                    want = dense_proc(attn, **call)
            else:
                kv = None if text_mask is None else text_mask.reshape(batch, -1).sum(-1)
                want = dense_proc(attn, **{**call, "attention_mask": _token_mask(state, batch, kv)})
    finally:
        for hook in hooks:
            hook.remove()
        rd.remove_radial_attention(pipe)
    # 4: CFG batched into one call (CogVideoX); 1: a one-prompt pipeline, CFG as two calls
    assert batch in (1, 2, 4) and (batch == 1) == (type(pipe).__name__ in ONE_PROMPT_PIPELINES) and state.layout.density < 0.6
    for got, ref in zip(*((x,) if torch.is_tensor(x) else x for x in (seen["out"], want)), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert sum(state.sparse_calls.values()) > 0
    assert sparse.shape == stock.shape and torch.isfinite(sparse).all()
    assert not torch.equal(sparse, stock)  # the sparse branch changed the computation
    # removing restores the stock processors and output
    assert torch.equal(_call(pipe, name), stock)
    for expert in first.experts:
        procs = [m.processor for _, m in expert.family.attention_modules(expert._transformer())]
        assert procs == [original for _, original in expert._originals]  # the stock processors, back in place


def _token_mask(state, batch, kv_lengths=None):
    layout = state.layout
    mask = layout.token_mask()[None, None].expand(batch, 1, -1, -1).clone()
    if kv_lengths is not None:
        mask &= torch.arange(layout.seq_len)[None, None, None, :] < kv_lengths[:, None, None, None]
    return mask


def test_wan_sparse_processor_equals_stock_with_expanded_mask(pipes):
    """The sparse path is the stock q/k/v/norm/RoPE path with the radial token mask: compare one layer."""
    pipe = pipes["tiny-wan"]
    tr = pipe.transformer
    state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_steps=0, dense_layers=0, block_size=16))
    try:
        latents = torch.randn(2, 16, 5, 16, 16)
        captured = {}
        attn = tr.blocks[1].attn1
        hook = attn.register_forward_pre_hook(lambda m, a: captured.setdefault("args", a))
        with torch.no_grad():
            tr(latents, timestep=torch.tensor([500, 500]), encoder_hidden_states=torch.randn(2, 16, 32))
        hook.remove()
        hidden, _, _, rotary = captured["args"]
        proc = attn.processor
        assert proc.use_sparse and state.layout.density < 0.6
        with torch.no_grad():
            ours = attn(hidden, None, None, rotary)
            stock_proc = rd.processors.WanAttnProcessor()
            stock = stock_proc(attn, hidden, None, _token_mask(state, 2), rotary)
        torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-4)
    finally:
        rd.remove_radial_attention(tr)


def test_hunyuan_sparse_processor_equals_stock_with_expanded_mask(pipes):
    pipe = pipes["tiny-hunyuan"]
    tr = pipe.transformer
    state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_steps=0, block_size=16))
    try:
        for attn in (tr.transformer_blocks[0].attn, tr.single_transformer_blocks[0].attn):
            captured = {}
            hook = attn.register_forward_pre_hook(lambda m, a, k: captured.setdefault("kw", (a, k)), with_kwargs=True)
            text_mask = torch.ones(2, 16, dtype=torch.bool)
            text_mask[1, 9:] = False  # sample 1 has 7 padded text tokens
            with torch.no_grad():
                tr(torch.randn(2, 4, 5, 8, 8), timestep=torch.tensor([500, 500]),
                   encoder_hidden_states=torch.randn(2, 16, 16), encoder_attention_mask=text_mask,
                   pooled_projections=torch.randn(2, 8), guidance=torch.tensor([6000.0, 6000.0]))
            hook.remove()
            args, kwargs = captured["kw"]
            call = dict(zip(["hidden_states", "encoder_hidden_states", "attention_mask", "image_rotary_emb"], args))
            call.update(kwargs)
            assert attn.processor.use_sparse
            with torch.no_grad():
                ours = attn.processor(attn, **call)
                kv = call["attention_mask"].reshape(2, -1).sum(-1)
                stock = rd.processors.HunyuanVideoAttnProcessor2_0()(
                    attn, **{**call, "attention_mask": _token_mask(state, 2, kv)})
            for a, b in zip(ours, stock):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert state.text_tokens == 16 and state.layout.density < 0.6
    finally:
        rd.remove_radial_attention(tr)


def test_policy_switches_at_steps_and_layers(pipes):
    pipe = pipes["tiny-wan"]
    state = rd.apply_radial_attention(
        pipe, rd.RadialConfig(dense_steps=2, dense_layers=1, last_dense_steps=1, block_size=16))
    state.record = True
    try:
        _call(pipe, "tiny-wan", steps=6, batch=1)
    finally:
        rd.remove_radial_attention(pipe)
    assert state.num_steps == 6
    # two transformer calls (CFG) per step, two layers each
    seen = {}
    for step, layer, sparse in state.trace:
        seen.setdefault((step, layer), set()).add(sparse)
    expected = {(s, l): {2 <= s < 5 and l >= 1} for s in range(6) for l in range(2)}
    assert seen == expected
    assert len(state.trace) == 6 * 2 * 2


def test_fraction_and_new_call_resets(pipes):
    pipe = pipes["tiny-hunyuan"]
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=0.5, block_size=16))
    state.record = True
    try:
        _call(pipe, "tiny-hunyuan", steps=4, batch=1)
        first = list(state.trace)
        state.trace.clear()
        _call(pipe, "tiny-hunyuan", steps=4, batch=1)
    finally:
        rd.remove_radial_attention(pipe)
    assert state.trace == first
    assert {s for s, _, sparse in first if not sparse} == {0, 1}
    assert {s for s, _, sparse in first if sparse} == {2, 3}


def test_bare_transformer_counts_steps_and_needs_step_count(pipes):
    tr = pipes["tiny-wan"].transformer
    kwargs = dict(encoder_hidden_states=torch.randn(1, 16, 32))
    latents = torch.randn(1, 16, 5, 16, 16)
    state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    state.record = True
    try:
        with torch.no_grad():
            for t in (900, 900, 600, 600, 300, 950):  # CFG pairs, then a new call
                tr(latents, timestep=torch.tensor([t]), **kwargs)
        assert [s for s, layer, _ in state.trace if layer == 0] == [0, 0, 1, 1, 2, 0]
        assert [sp for _, layer, sp in state.trace if layer == 0] == [False, False, True, True, True, False]
    finally:
        rd.remove_radial_attention(tr)
    # a bare transformer has no scheduler: a policy that needs the step count fails at apply, naming the fix
    with pytest.raises(ValueError, match="num_inference_steps"):
        rd.apply_radial_attention(tr, rd.RadialConfig(last_dense_steps=2, dense_steps=0, block_size=16))
    with pytest.raises(ValueError, match="fraction"):
        rd.apply_radial_attention(tr, rd.RadialConfig(block_size=16))  # preset: a fraction of the schedule
    assert getattr(tr, "_radial_state", None) is None
    state = rd.apply_radial_attention(
        tr, rd.RadialConfig(last_dense_steps=1, dense_steps=0, dense_layers=0, block_size=16, num_inference_steps=3))
    state.record = True
    try:
        with torch.no_grad():
            for t in (900, 600, 300):
                tr(latents, timestep=torch.tensor([t]), **kwargs)
        assert [sp for _, layer, sp in state.trace if layer == 0] == [True, True, False]
    finally:
        rd.remove_radial_attention(tr)


def test_warns_when_dense_steps_cover_schedule(pipes):
    pipe = pipes["tiny-wan"]
    rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=2, last_dense_steps=1, block_size=16))
    try:
        with pytest.warns(UserWarning, match="whole 3-step schedule"):
            _call(pipe, "tiny-wan", steps=3, batch=1)
    finally:
        rd.remove_radial_attention(pipe)


def test_lora_loaded_on_top_still_works(tmp_path):
    """A LoRA saved in the Diffusers format and loaded with pipe.load_lora_weights runs through radial attention."""
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = load_tiny("tiny-wan", seed=0)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    donor.transformer.add_adapter(cfg)
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor.transformer),
                                  transformer_lora_adapter_metadata=cfg.to_dict())

    pipe = load_tiny("tiny-wan", seed=0)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    base = _call(pipe, "tiny-wan", batch=1)
    pipe.load_lora_weights(tmp_path, adapter_name="length")
    state.reset_counters()
    with_lora = _call(pipe, "tiny-wan", batch=1)
    assert sum(state.sparse_calls.values()) > 0
    assert isinstance(pipe.transformer.blocks[0].attn1.processor, RadialWanAttnProcessor)
    assert not torch.equal(with_lora, base) and torch.isfinite(with_lora).all()
    # the same LoRA on the donor (identical weights) through the same radial processors gives the same output
    rd.apply_radial_attention(donor, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    torch.testing.assert_close(_call(donor, "tiny-wan", batch=1), with_lora, atol=1e-5, rtol=1e-5)


def test_group_offload_composes(pipes):
    pipe = load_tiny("tiny-wan", seed=0)
    reference_state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    want = _call(pipe, "tiny-wan", batch=1)
    pipe.transformer.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
    reference_state.reset_counters()
    got = _call(pipe, "tiny-wan", batch=1)
    assert torch.equal(got, want) and sum(reference_state.sparse_calls.values()) > 0
    # Diffusers treats every module's `_diffusers_hook` registry as its own: each one carries the offloading hook
    hooked = [m for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    assert hooked and all(m._diffusers_hook.get_hook("group_offloading") is not None for m in hooked)


def test_step_hook_is_a_plain_forward_pre_hook_removed_with_radial():
    tr = load_tiny("tiny-wan", seed=0).transformer  # fresh: no Diffusers hook left by another test
    before = dict(tr._forward_pre_hooks)
    rd.apply_radial_attention(tr, rd.RadialConfig(num_inference_steps=4, block_size=16))
    assert not hasattr(tr, "_diffusers_hook") and len(tr._forward_pre_hooks) == len(before) + 1
    rd.remove_radial_attention(tr)
    assert dict(tr._forward_pre_hooks) == before


def test_layout_that_keeps_every_block_runs_the_stock_processor(pipes):
    """A geometry whose radial layout is full (here 2x2x4 tokens at block 16): the stock processor runs every step
    (the same attention, by the dense kernel), so the output equals stock exactly and no sparse call is made."""
    tr = pipes["tiny-wan"].transformer
    gen = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 4, 32, generator=gen), return_dict=False)
    with torch.no_grad():
        stock = [tr(timestep=torch.tensor([t]), **inputs)[0] for t in (900.0, 500.0)]
        state = rd.apply_radial_attention(tr, rd.RadialConfig(num_inference_steps=2, dense_steps=0, dense_layers=0,
                                                               block_size=16))
        try:
            got = [tr(timestep=torch.tensor([t]), **inputs)[0] for t in (900.0, 500.0)]
        finally:
            rd.remove_radial_attention(tr)
    assert state.layout.density == 1.0 and state.step == 1
    assert sum(state.sparse_calls.values()) == 0 and sum(state.dense_calls.values()) > 0
    for g, s in zip(got, stock):
        assert torch.equal(g, s)


def test_packed_token_call_without_its_grid_runs_stock_with_a_warning(pipes):
    """LTX-Video's LTXConditionPipeline calls the transformer with video_coords and no num_frames/height/width: such
    a call cannot be placed in the mask, so it runs the stock processors (one warning), and the next gridded call is
    sparse again."""
    tr = pipes["tiny-ltx"].transformer
    gen = torch.Generator().manual_seed(4)
    frames, h, w = 5, 8, 8
    hidden = torch.randn(1, frames * h * w, tr.config.in_channels, generator=gen)
    grid = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij"))
    coords = grid.reshape(1, 3, -1).float()
    inputs = dict(hidden_states=hidden, encoder_hidden_states=torch.randn(1, 6, tr.config.caption_channels,
                                                                          generator=gen),
                  encoder_attention_mask=torch.ones(1, 6, dtype=torch.long), timestep=torch.tensor([700.0]),
                  return_dict=False)
    with torch.no_grad():
        stock = tr(video_coords=coords, **inputs)[0]
        state = rd.apply_radial_attention(tr, rd.RadialConfig(num_inference_steps=2, dense_steps=0, dense_layers=0,
                                                               block_size=16))
        try:
            with pytest.raises(RuntimeError, match=r"stats\(\): no transformer call has set the latent geometry"):
                state.stats()
            with pytest.warns(UserWarning, match="without the latent grid .*num_frames, height, width"):
                got = tr(video_coords=coords, **inputs)[0]
            assert sum(state.sparse_calls.values()) == 0
            with pytest.raises(RuntimeError, match=r"block_mask\(\): no transformer call"):
                state.block_mask()
            tr(num_frames=frames, height=h, width=w, **inputs)
            assert sum(state.sparse_calls.values()) > 0 and state.layout.density < 1
        finally:
            rd.remove_radial_attention(tr)
    assert torch.equal(got, stock)


def test_errors(pipes):
    with pytest.raises(TypeError, match="WanPipeline"):
        rd.apply_radial_attention(object())
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        rd.apply_radial_attention(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="RadialConfig"):
        rd.apply_radial_attention(pipes["tiny-wan"], {"block_size": 16})
    with pytest.raises(ValueError, match="block_size"):
        rd.RadialConfig(block_size=48)
    with pytest.raises(ValueError, match="dense_steps"):
        rd.RadialConfig(dense_steps=1.5)
    tr = pipes["tiny-wan"].transformer
    rd.apply_radial_attention(tr, rd.RadialConfig(dense_steps=0, block_size=16))
    try:
        with pytest.raises(ValueError, match="patch size"), torch.no_grad():
            tr(torch.randn(1, 16, 5, 15, 16), timestep=torch.tensor([1]), encoder_hidden_states=torch.randn(1, 4, 32))
    finally:
        rd.remove_radial_attention(tr)


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, radial_diffusers as rd; rd.RadialConfig(); rd.radial_block_mask(3, 64, block_size=16); "
            "bad = [m for m in ('triton', 'peft', 'torchao', 'diffusers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name,graphs", [("tiny-wan", 1), ("tiny-hunyuan", 4)])
def test_regional_compile_keeps_one_graph_per_block_type(name, graphs):
    """compile_repeated_blocks(fullgraph=True) in a pipeline: one graph per block class over a 4-step run with dense
    and sparse steps and a dense first layer (HunyuanVideo compiles dual blocks, single blocks, the untouched token
    refiner and the patch embedding); the branch is a torch.cond inside the graph."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    pipe = load_tiny(name, seed=0)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=2, dense_layers=1, block_size=16))
    eager = _call(pipe, name, steps=4, batch=1)
    counter = CompileCounter()
    pipe.transformer.compile_repeated_blocks(backend=counter, fullgraph=True)
    state.reset_counters()
    compiled = _call(pipe, name, steps=4, batch=1)
    torch._dynamo.reset()
    assert counter.frame_count == graphs
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_step_matching_survives_low_precision_timesteps():
    """Pipelines cast t to the latents' dtype; bf16 moves ~1000-valued timesteps by up to 2."""
    from radial_diffusers.integration import RadialState, RadialStepHook

    class _Pipe:  # weak-referenceable stand-in for a pipeline
        pass

    pipe = _Pipe()
    pipe.scheduler = type("S", (), {})()
    pipe.scheduler.timesteps = torch.linspace(1000, 20, 50)
    hook = RadialStepHook(RadialState(model="wan", config=rd.RadialConfig()), pipe)
    for i, t in enumerate(pipe.scheduler.timesteps):
        hook._update_step(t.to(torch.bfloat16).expand(2))
        assert hook.state.step == i and hook.state.num_steps == 50


def test_step_matching_reads_the_pipelines_current_timestep():
    """At flow shift 9 the first entries of a 50-step schedule lie closer than bf16 rounds them (HunyuanVideo-1.5
    passes t in bf16): the pipeline's float32 ``current_timestep`` decides the step where it is this call's t."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from radial_diffusers.integration import RadialState, RadialStepHook

    class _Pipe:
        pass

    pipe = _Pipe()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=9.0)
    pipe.scheduler.set_timesteps(50)
    ts = pipe.scheduler.timesteps
    assert any(t.to(torch.bfloat16) == u.to(torch.bfloat16) for t, u in zip(ts[:-1], ts[1:]))  # rounds them together
    hook = RadialStepHook(RadialState(model="hunyuan1.5", config=rd.RadialConfig()), pipe)
    for i, t in enumerate(ts):
        pipe._current_timestep = t
        for _ in range(2):  # separate cond / uncond passes: one step
            hook._update_step(t.expand(1).to(torch.bfloat16))
            assert hook.state.step == i
    # Mochi sets current_timestep = 1000 - t (not a schedule entry): t itself is matched
    pipe.scheduler.timesteps = torch.linspace(0, 990, 12)
    for i, t in enumerate(pipe.scheduler.timesteps):
        pipe._current_timestep = 1000 - t
        hook._update_step(t.expand(2))
        assert hook.state.step == i


def test_mochi_in_bf16_steps_follow_its_schedule():
    """Mochi's 64-step schedule starts with entries 0.8 apart near 1000, which bf16 (its pipeline casts t to the
    latents' dtype) rounds in steps of 4; its pipeline records ``1000 - t`` as the current timestep, which still
    names the step exactly."""
    pipe = load_tiny("tiny-mochi", dtype=torch.bfloat16)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_layers=0, dense_steps=12))
    state.record = True
    with torch.no_grad():
        pipe("a cat", num_frames=13, height=64, width=64, num_inference_steps=64, output_type="latent",
             **default_call_kwargs("tiny-mochi"))
    steps = [(step, sparse) for step, layer, sparse in state.trace if layer == 0]
    assert steps == [(i, i >= 12) for i in range(64)]


def test_a_second_order_scheduler_counts_each_model_evaluation():
    """``FlowMatchHeunDiscreteScheduler`` evaluates the model twice at each repeated timestep (1000, 934, 934, 781,
    781, ...): every evaluation is a step of the schedule, so the last one is reached and last_dense_steps applies."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = load_tiny("tiny-wan", seed=0)
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_layers=0, dense_steps=1,
                                                            last_dense_steps=1))
    state.record = True
    _call(pipe, "tiny-wan", steps=4, batch=1)
    assert len(pipe.scheduler.timesteps) == 7 and len(set(pipe.scheduler.timesteps.tolist())) == 4
    steps = [(step, sparse) for step, layer, sparse in state.trace if layer == 0]
    assert sorted(set(steps)) == [(0, False), *((i, True) for i in range(1, 6)), (6, False)]
    assert [step for step, _ in steps] == sorted(step for step, _ in steps)


def test_a_finished_run_that_keeps_its_current_timestep_is_idle():
    """A pipeline that leaves ``_current_timestep`` at its last entry after the loop (LTX-Video's do), with a
    scheduler that keeps no ``step_index`` (CogVideoX's DDIM): a later call at another timestep is not a step of that
    schedule; one at the last entry is (the pipeline's final step)."""
    from radial_diffusers.integration import RadialState, RadialStepHook

    class _Pipe:
        current_timestep = property(lambda self: self._current_timestep)

    pipe = _Pipe()
    pipe.scheduler = type("S", (), {})()
    pipe.scheduler.timesteps = torch.tensor([999.0, 666.0, 333.0])
    pipe._current_timestep = pipe.scheduler.timesteps[-1]
    hook = RadialStepHook(RadialState(model="ltx", config=rd.RadialConfig(num_inference_steps=8)), pipe)
    assert hook._bound_pipeline(torch.tensor(333.0)) is pipe
    assert hook._bound_pipeline(torch.tensor(875.0)) is None
    for i, t in enumerate([1000.0, 875.0, 750.0]):
        hook._update_step(torch.tensor([t]))
        assert hook.state.step == i  # counted, not matched to the finished schedule
    pipe._current_timestep = pipe.scheduler.timesteps[1]  # running again: matched
    hook._update_step(torch.tensor([666.0]))
    assert hook.state.step == 1 and hook.state.num_steps == 3


@pytest.mark.parametrize("ascending", [False, True])
def test_bare_transformer_counts_steps_in_either_direction(ascending):
    """Without a scheduler the hook counts distinct timesteps; a call's first move sets its direction (Mochi's
    inverted schedule rises), a move against it starts a new call."""
    from radial_diffusers.integration import RadialState, RadialStepHook

    hook = RadialStepHook(RadialState(model="mochi", config=rd.RadialConfig(num_inference_steps=8)))
    schedule = torch.linspace(1000, 0, 8)
    schedule = schedule.flip(0) if ascending else schedule
    for _ in range(2):  # two calls
        for i, t in enumerate(schedule):
            for _ in range(2):
                hook._update_step(t.expand(2))
                assert hook.state.step == i


def test_swapped_scheduler_is_used(pipes):
    """The hook reads pipe.scheduler at call time: a scheduler replaced after apply sets the step count."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = load_tiny("tiny-wan", seed=0)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=0.5, block_size=16))
    state.record = True
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=3.0)
    _call(pipe, "tiny-wan", steps=4, batch=1)
    assert state.num_steps == 4
    assert {s for s, _, sparse in state.trace if sparse} == {2, 3}


def test_remove_keeps_attention_backend_chosen_after_apply(pipes):
    pipe = load_tiny("tiny-wan", seed=0)
    rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16))
    pipe.transformer.set_attention_backend("_native_math")
    rd.remove_radial_attention(pipe)
    assert pipe.transformer.blocks[0].attn1.processor._attention_backend == "_native_math"
    pipe.transformer.reset_attention_backend()


def test_bare_transformer_with_fraction_preset_fails_at_apply(pipes):
    with pytest.raises(ValueError, match="num_inference_steps"):
        rd.apply_radial_attention(pipes["tiny-wan"].transformer)
    assert not hasattr(pipes["tiny-wan"].transformer, "_radial_state") or \
        pipes["tiny-wan"].transformer._radial_state is None
    state = rd.apply_radial_attention(pipes["tiny-wan"].transformer, rd.RadialConfig(num_inference_steps=50))
    rd.remove_radial_attention(pipes["tiny-wan"].transformer)
    assert state.config.num_inference_steps == 50


@pytest.mark.parametrize("backend, error", [("triton", RuntimeError), ("flex", NotImplementedError)])
def test_a_backend_the_device_cannot_run_fails_at_the_first_call(backend, error, monkeypatch):
    """Not after the dense steps: the first call, dense, already names the backend and the fix."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pipe = load_tiny("tiny-wan", seed=0)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2, backend=backend))
    with pytest.raises(error, match=f"backend='{backend}' needs CUDA"):
        _call(pipe, "tiny-wan", steps=3, batch=1)
    assert sum(state.dense_calls.values()) == 0
