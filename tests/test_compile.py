"""torch.compile with radial attention: the step hook and the processors compile clean with fullgraph=True.

* Whole model, ``torch.compile(transformer, fullgraph=True)``: the hook is traced (no lock, no Python value that
  depends on the timestep), so a run of several denoising steps of one geometry is one graph with no recompile, and
  each step still takes the branch (dense or radial) the policy gives it.
* Regional, ``compile_repeated_blocks(fullgraph=True)`` under Diffusers' ``recompile_limit=1`` contract
  (``TorchCompileTesterMixin.test_torch_compile_repeated_blocks``) with the preset's dense first layer next to sparse
  layers: one graph per block class, whatever the layer or the step.

``aot_eager`` keeps the tests fast on CPU and still runs AOTAutograd (functionalized ``torch.cond``, the in-place
update of the hook's step tensors); Inductor is exercised by Diffusers' own compile tests, and here on LTX-2 (its
split RoPE once failed under Inductor only).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import radial_diffusers as rd
from radial_diffusers.tiny import default_call_kwargs, load_tiny

# 5 latent frames of 8x8 tokens: genuinely sparse with 16-token blocks (see test_integration.GEOMETRY).
TIMESTEPS = (999.0, 700.0, 400.0)


def _transformer_and_inputs(name: str, frames: int = 5):
    transformer = load_tiny(name, seed=0).transformer.eval()
    gen = torch.Generator().manual_seed(0)
    cfg = transformer.config
    if name in ("tiny-wan", "tiny-mochi"):
        inputs = dict(hidden_states=torch.randn(1, cfg.in_channels, frames, 16, 16, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, getattr(cfg, "text_dim", None) or cfg.text_embed_dim,
                                                        generator=gen))
        if name == "tiny-mochi":
            inputs["encoder_attention_mask"] = (torch.arange(16) < 11)[None].long()  # 11 valid text tokens
    elif name == "tiny-cogvideox":  # (B, F, C, H, W) latents, text first in the joint sequence
        inputs = dict(hidden_states=torch.randn(1, frames, cfg.in_channels, 16, 16, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, cfg.text_embed_dim, generator=gen))
    elif name == "tiny-ltx":  # packed tokens, the latent grid as arguments
        inputs = dict(hidden_states=torch.randn(1, frames * 64, cfg.in_channels, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, cfg.caption_channels, generator=gen),
                      encoder_attention_mask=torch.ones(1, 16, dtype=torch.long), num_frames=frames, height=8, width=8)
    elif name == "tiny-ltx2":  # LTX-Video's packed video tokens, and an audio stream of 12 latent frames
        inputs = dict(hidden_states=torch.randn(1, frames * 64, cfg.in_channels, generator=gen),
                      audio_hidden_states=torch.randn(1, 12, cfg.audio_in_channels, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, cfg.caption_channels, generator=gen),
                      audio_encoder_hidden_states=torch.randn(1, 16, cfg.caption_channels, generator=gen),
                      encoder_attention_mask=torch.ones(1, 16, dtype=torch.long), num_frames=frames, height=8, width=8,
                      audio_num_frames=12)
    elif name == "tiny-kandinsky5":  # channels-last latents (noise, condition, mask), RoPE positions as arguments
        inputs = dict(hidden_states=torch.randn(1, frames, 16, 16, 2 * cfg.in_visual_dim + 1, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, cfg.in_text_dim, generator=gen),
                      pooled_projections=torch.randn(1, cfg.in_text_dim2, generator=gen),
                      visual_rope_pos=[torch.arange(frames), torch.arange(8), torch.arange(8)],
                      text_rope_pos=torch.arange(16), scale_factor=(1.0, 2.0, 2.0))
    elif name == "tiny-cosmos2.5":  # (B, C, F, H, W) with the condition-mask channel; text through the projection
        inputs = dict(hidden_states=torch.randn(1, cfg.in_channels - 1, frames, 16, 16, generator=gen),
                      condition_mask=torch.zeros(1, 1, frames, 16, 16),
                      encoder_hidden_states=torch.randn(1, 16, cfg.crossattn_proj_in_channels, generator=gen))
    else:
        inputs = dict(hidden_states=torch.randn(1, cfg.in_channels, frames, 8, 8, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, cfg.text_embed_dim, generator=gen),
                      encoder_attention_mask=torch.ones(1, 16, dtype=torch.bool),
                      pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen),
                      guidance=torch.tensor([3500.0]))
    return transformer, inputs


def _run(model, inputs, timesteps=TIMESTEPS):
    with torch.no_grad():
        return [model(timestep=torch.tensor([t]), return_dict=False, **inputs)[0] for t in timesteps]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan", "tiny-cogvideox", "tiny-ltx", "tiny-ltx2", "tiny-mochi",
                                  "tiny-kandinsky5", "tiny-cosmos2.5"])
def test_whole_model_fullgraph_compile_no_recompile_between_steps(name):
    """torch.compile(transformer, fullgraph=True) with the hook traced: 3 steps (dense, sparse, sparse) of one
    geometry compile once (the hook and the forward, one graph each), and each step matches eager, i.e. the compiled graph switches branch at run time."""
    transformer, inputs = _transformer_and_inputs(name)
    stock = _run(transformer, inputs)
    state = rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=1))
    eager = _run(transformer, inputs)
    assert state.layout.density < 0.8 and state.step == 2
    torch.testing.assert_close(eager[0], stock[0], rtol=0, atol=0)  # dense step
    assert not torch.allclose(eager[1], stock[1])  # sparse step: radial attention ran

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(transformer, fullgraph=True, backend=counter)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = _run(compiled, inputs)
        second = _run(compiled, inputs)  # a second denoising run: the step resets on the larger timestep
    # two frames, each compiled once: the step hook (a torch forward pre-hook, compiled on its own) and the forward
    assert counter.frame_count == 2
    assert state.step == 2
    for got in (first, second):
        for g, e in zip(got, eager):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="Inductor's CPU code generation needs a C++ compiler")
def test_inductor_compiles_ltx2_split_rope():
    """The default backend, Inductor (the tests above trace with aot_eager): LTX-2's split RoPE with per-head tables
    inside the torch.cond branches compiles and matches eager on a dense and two sparse steps. Diffusers' (B, H, S, D)
    application of it failed there on Inductor's stride assertion; the processor applies it per head in place."""
    transformer, inputs = _transformer_and_inputs("tiny-ltx2")
    assert transformer.config.rope_type == "split"
    rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=1))
    eager = _run(transformer, inputs)
    compiled = _run(torch.compile(transformer, fullgraph=True), inputs)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,graphs", [("tiny-wan", 1), ("tiny-hunyuan", 4)])
def test_regional_compile_dense_first_layer_within_recompile_limit_1(name, graphs):
    """compile_repeated_blocks(fullgraph=True) under recompile_limit=1 (Diffusers' contract) with the preset's dense
    layers (Wan: layer 0) next to sparse layers, over dense and sparse steps: one graph per compiled block class
    (HunyuanVideo: dual, single, token-refiner blocks and the patch embedding)."""
    transformer, inputs = _transformer_and_inputs(name)
    # Wan: the preset's dense layer 0; HunyuanVideo's preset has none, so ask for one
    dense_layers = None if name == "tiny-wan" else 1
    state = rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=dense_layers))
    eager = _run(transformer, inputs)
    assert state.dense_calls[0] == 3 and state.sparse_calls[1] == 2  # layer 0 always dense, layer 1 sparse after step 0

    counter = CompileCounterWithBackend("aot_eager")
    transformer.compile_repeated_blocks(fullgraph=True, backend=counter)
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled = _run(transformer, inputs)
    assert counter.frame_count == graphs
    for g, e in zip(compiled, eager):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_compiled_transformer_in_pipeline_follows_scheduler_without_recompiling():
    """pipe.transformer.compile(fullgraph=True): the traced hook reads pipe.scheduler.timesteps (new tensor per call)
    for the step index; two pipeline runs of 3 steps compile once and match the eager pipeline."""
    pipe = load_tiny("tiny-wan", seed=0)
    rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=1))
    kwargs = dict(default_call_kwargs("tiny-wan"), prompt="a cat", num_frames=17, height=128, width=128,
                  num_inference_steps=3, guidance_scale=1.0, output_type="latent")

    def call():
        with torch.no_grad():
            return pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames

    eager = call()
    counter = CompileCounterWithBackend("aot_eager")
    pipe.transformer.compile(fullgraph=True, backend=counter)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first, second = call(), call()
    assert counter.frame_count == 2  # the step hook and the forward
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, eager, rtol=1e-5, atol=1e-5)


def test_compiled_second_order_scheduler_follows_its_repeated_timesteps_as_eager_does():
    """FlowMatchHeunDiscrete repeats each timestep (two evaluations, two steps). Eager, the scheduler's step_index
    tells them apart; compiled, its state_in_first_order (one more graph, no recompile per step): both run the same
    dense / sparse steps, last_dense_steps included, and give the same latents."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = load_tiny("tiny-wan", seed=0)
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=1, last_dense_steps=1,
                                                            dense_layers=0))
    sparse = []

    def on_step_end(pipe, i, t, kwargs):
        sparse.append(bool(state._sparse_step))
        return kwargs

    def call():
        sparse.clear()
        with torch.no_grad():
            out = pipe("a cat", num_frames=17, height=64, width=64, num_inference_steps=4, guidance_scale=1.0,
                       output_type="latent", generator=torch.Generator().manual_seed(0),
                       callback_on_step_end=on_step_end, **default_call_kwargs("tiny-wan")).frames
        return out, list(sparse)

    eager, eager_steps = call()
    assert eager_steps == [False, True, True, True, True, True, False]
    counter = CompileCounterWithBackend("eager")
    pipe.transformer.compile(fullgraph=True, backend=counter)
    compiled, compiled_steps = call()
    assert compiled_steps == eager_steps and counter.frame_count == 3  # the hook in either scheduler state, forward
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):  # both graphs serve every later step and run
        again, again_steps = call()
    assert again_steps == eager_steps and counter.frame_count == 3
    torch.testing.assert_close(again, eager, rtol=1e-5, atol=1e-5)


def test_compiled_call_checks_a_named_backend_before_the_first_step():
    """The plan is built at trace time, where the op's own check is skipped: the hook checks there."""
    pipe = load_tiny("tiny-wan", seed=0)
    rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2, backend="flex"))
    pipe.transformer.compile(fullgraph=True, backend="eager")
    steps = []
    with pytest.raises(Exception, match="backend='flex' needs CUDA"), torch.no_grad():
        pipe("a cat", num_frames=17, height=64, width=64, num_inference_steps=3, output_type="latent",
             callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw, **default_call_kwargs("tiny-wan"))
    assert steps == []


def test_compiled_geometry_change_retraces_with_its_own_layout():
    """A new geometry under the same compiled model retraces (the layout is per geometry) and stays correct, also
    when Dynamo turns the changed dims dynamic; coming back to the first geometry reuses a compiled graph."""
    transformer, inputs5 = _transformer_and_inputs("tiny-wan", frames=5)
    _, inputs3 = _transformer_and_inputs("tiny-wan", frames=3)
    state = rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=0, dense_layers=0))
    eager5, eager3 = _run(transformer, inputs5, (999.0,)), _run(transformer, inputs3, (999.0,))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(transformer, fullgraph=True, backend=counter)
    for inputs, eager, geometry in ((inputs5, eager5, (5, 8, 8)), (inputs3, eager3, (3, 8, 8)),
                                    (inputs5, eager5, (5, 8, 8))):
        torch.testing.assert_close(_run(compiled, inputs, (999.0,))[0], eager[0], rtol=1e-5, atol=1e-5)
        assert state.geometry == geometry
    assert counter.frame_count == 4  # per geometry: the step hook and the forward


def test_export_refuses_a_step_dependent_policy_and_exports_a_fixed_one():
    """torch.export freezes the hook's step counter (an exported program is a pure function): a policy whose branch
    changes per step is refused with a clear error; one that does not (dense layers only) exports and matches eager."""
    transformer, inputs = _transformer_and_inputs("tiny-wan", frames=3)
    kwargs = dict(inputs, timestep=torch.tensor([500.0]))
    rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=1))
    with pytest.raises(NotImplementedError, match="step counter would be frozen"):
        torch.export.export(transformer, args=(), kwargs=kwargs)
    # a fresh state: the layout is first built while export traces with fake tensors (it must come out real)
    state = rd.apply_radial_attention(transformer, rd.RadialConfig(block_size=16, dense_steps=0, dense_layers=1))
    program = torch.export.export(transformer, args=(), kwargs=kwargs)
    assert not isinstance(state.layout.counts, torch._subclasses.FakeTensor)
    # no torch.cond and no in-place update of the hook's CPU scalars (lifted constants): AOTInductor's
    # functionalization rejects mutated constants ("mutating a non-functional tensor with a functional tensor")
    nodes = list(program.graph.nodes)
    inputs_ = {n for n in nodes if n.op == "placeholder"}
    assert not any(n.target is torch.ops.higher_order.cond for n in nodes)
    assert not any(n.target is torch.ops.aten.copy_.default and n.args[0] in inputs_ for n in nodes)
    exported = program.run_decompositions().module()
    with torch.no_grad():
        eager = transformer(**kwargs).sample
    assert state.sparse_calls[1] == 1 and state.dense_calls[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(exported(**kwargs)[0], eager, rtol=1e-5, atol=1e-5)
