"""Radial attention next to what Diffusers users do to a model: replace its processors, reset its attention backend,
share its transformer with another pipeline (``from_pipe``), copy or pickle it, wrap it in ``torch.compile``."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import radial_diffusers as rd
from radial_diffusers.errors import ConfigError, UnsupportedModelError
from radial_diffusers.processors import RadialWanAttnProcessor
from radial_diffusers.tiny import tiny_ltx_pipeline, tiny_wan_pipeline

SPARSE = rd.RadialConfig(block_size=16, dense_steps=0, dense_layers=0)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # 5 latent frames of 16 x 16: 320 tokens, a sparse mask at block 16
    return (torch.randn(1, 16, 5, 16, 16, generator=g), torch.tensor([500.0]), torch.randn(1, 16, 32, generator=g))


def _run(transformer, inputs):
    with torch.no_grad():
        return transformer(*inputs).sample


@pytest.fixture
def wan():
    return tiny_wan_pipeline(seed=0).transformer


def test_processors_replaced_after_apply_warn_and_are_kept_on_removal(wan):
    """``set_attn_processor`` (or CogVideoX's ``fuse_qkv_projections``) after apply: the next call warns that those
    layers no longer run radial attention; removal leaves the user's replacement, and a radial processor put back
    later (Diffusers' ``unfuse_qkv_projections`` restores what it replaced) runs the stock path."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    x = _inputs()
    stock = _run(wan, x)
    state = rd.apply_radial_attention(wan, SPARSE)
    radial = _run(wan, x)
    assert not torch.equal(radial, stock)
    block = wan.blocks[1].attn1
    mine = block.processor
    user = WanAttnProcessor()
    block.set_processor(user)
    with pytest.warns(UserWarning, match=r"1 of the 2 attention processors it installed .* were replaced"):
        _run(wan, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per change, not per call
        _run(wan, x)
    rd.remove_radial_attention(wan)
    assert block.processor is user and not isinstance(wan.blocks[0].attn1.processor, RadialWanAttnProcessor)
    block.set_processor(mine)  # a stale radial processor: stock from now on
    assert torch.equal(_run(wan, x), stock) and state.processors[1].removed


def test_reset_attention_backend_while_installed_survives_removal(wan):
    wan.set_attention_backend("_native_math")
    rd.apply_radial_attention(wan, SPARSE)
    wan.reset_attention_backend()
    rd.remove_radial_attention(wan)
    assert [b.attn1.processor._attention_backend for b in wan.blocks] == [None, None]


def _from_pipe_pair():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = tiny_wan_pipeline(seed=0)
    other = WanPipeline.from_pipe(pipe, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert other.transformer is pipe.transformer
    return pipe, other


def _steps(pipe, state, steps: int) -> dict[int, bool]:
    state.record, state.trace = True, []
    with torch.no_grad():
        pipe("a cat", num_frames=17, height=64, width=64, num_inference_steps=steps, max_sequence_length=16,
             guidance_scale=1.0, output_type="latent")
    return {step: sparse for step, _, sparse in state.trace}


def test_a_pipeline_sharing_the_transformer_counts_its_own_steps():
    """``from_pipe`` with another scheduler: the pipeline radial attention was applied to is idle, so its schedule is
    not matched; the caller's steps are counted (0, 1, 2), and a policy that needs the schedule's length is refused
    with the fix instead of being resolved against the idle pipeline's schedule."""
    pipe, other = _from_pipe_pair()
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=0))
    assert _steps(pipe, state, 5) == {0: False, 1: True, 2: True, 3: True, 4: True}
    assert _steps(other, state, 3) == {0: False, 1: True, 2: True}
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16))  # the preset: a fraction of the steps
    with pytest.raises(ConfigError, match=r"WanPipeline.from_pipe.*apply radial attention to the pipeline you call"):
        _steps(other, state, 3)
    state = rd.apply_radial_attention(other, rd.RadialConfig(block_size=16, dense_steps=0.5, dense_layers=0))
    assert _steps(other, state, 4) == {0: False, 1: False, 2: True, 3: True}


def test_an_ltx_pipeline_that_ran_is_idle_for_a_pipeline_sharing_its_transformer():
    """Diffusers' LTX-Video pipelines leave ``_current_timestep`` at their last step after a run: a ``from_pipe``
    sibling with its own scheduler still counts its own steps, not as steps of the finished run's schedule."""
    from diffusers import LTXPipeline

    from radial_diffusers.tiny import default_call_kwargs

    pipe = tiny_ltx_pipeline(seed=0)
    other = LTXPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2, dense_layers=0))

    def steps(target, n):
        state.record, state.trace = True, []
        with torch.no_grad():
            target("a cat", num_frames=17, height=64, width=64, num_inference_steps=n, output_type="latent",
                   **default_call_kwargs("tiny-ltx"))
        return [(step, sparse) for step, layer, sparse in state.trace if layer == 0]

    assert steps(pipe, 3) == [(0, False), (1, False), (2, True)]
    assert pipe._current_timestep is not None  # what makes the case: the finished run still says it is at a step
    assert steps(other, 6) == [(0, False), (1, False), (2, True), (3, True), (4, True), (5, True)]
    assert steps(pipe, 3) == [(0, False), (1, False), (2, True)]


def test_an_interrupted_run_is_idle_for_a_pipeline_sharing_its_transformer():
    """A callback that sets ``pipe._interrupt`` stops the run with ``_current_timestep`` set and the scheduler
    mid-schedule: the pipeline is idle, and a ``from_pipe`` sibling counts its own steps."""
    from diffusers import LTXPipeline

    from radial_diffusers.tiny import default_call_kwargs

    pipe = tiny_ltx_pipeline(seed=0)
    other = LTXPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2, dense_layers=0))

    def stop(p, i, t, kwargs):
        p._interrupt = i >= 1
        return kwargs

    common = dict(num_frames=17, height=64, width=64, output_type="latent", **default_call_kwargs("tiny-ltx"))
    with torch.no_grad():
        pipe("a cat", num_inference_steps=3, callback_on_step_end=stop, **common)
        assert pipe._interrupt and pipe._current_timestep is not None and pipe.scheduler.step_index == 2
        state.record, state.trace = True, []
        other("a cat", num_inference_steps=6, **common)
    assert [(s, sp) for s, layer, sp in state.trace if layer == 0] == [
        (0, False), (1, False), (2, True), (3, True), (4, True), (5, True)]


def test_remove_unwraps_a_torch_compile_wrapper():
    """``pipe.transformer = torch.compile(pipe.transformer)`` after applying (what the apply error advises):
    ``remove_radial_attention(pipe)`` reaches the compiled module and restores it."""
    pipe = tiny_wan_pipeline(seed=0)
    stock = [b.attn1.processor for b in pipe.transformer.blocks]
    rd.apply_radial_attention(pipe, SPARSE)
    pipe.transformer = torch.compile(pipe.transformer)
    rd.remove_radial_attention(pipe)
    inner = pipe.transformer._orig_mod
    assert [b.attn1.processor for b in inner.blocks] == stock
    assert inner._radial_state is None and not inner._forward_pre_hooks


def test_deepcopy_and_pickle_carry_radial_attention(wan):
    x = _inputs()
    state = rd.apply_radial_attention(wan, SPARSE)
    radial = _run(wan, x)
    twin = copy.deepcopy(wan)
    buf = io.BytesIO()
    torch.save(wan, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for model in (twin, loaded):
        copied = model._radial_state
        assert copied is not state and copied._transformer() is model
        assert all(p.state is copied for p in copied.processors)
        copied.reset_counters()
        assert torch.equal(_run(model, x), radial) and sum(copied.sparse_calls.values()) == 2
    rd.remove_radial_attention(twin)
    assert not torch.equal(_run(twin, x), radial) and torch.equal(_run(wan, x), radial)


def test_a_torch_compile_wrapper_is_refused_with_the_fix(wan):
    with pytest.raises(UnsupportedModelError, match=r"torch.compile wrapper of a WanTransformer3DModel.*before "
                                                    r"compiling.*transformer.compile\(\)"):
        rd.apply_radial_attention(torch.compile(wan))


def test_a_token_grid_that_is_not_the_tokens_runs_dense_with_a_warning():
    """LTXI2VLongMultiPromptPipeline calls the transformer with ``num_frames=height=width=1`` and ``video_coords``:
    the grid does not describe the tokens, so the call is treated as one without a grid (warned, dense)."""
    pipe = tiny_ltx_pipeline(seed=0)
    transformer = pipe.transformer
    state = rd.apply_radial_attention(transformer, SPARSE)
    g = torch.Generator().manual_seed(0)
    tokens, text = torch.randn(1, 5 * 8 * 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    kwargs = dict(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.tensor([500]),
                  encoder_attention_mask=torch.ones(1, 16))
    with torch.no_grad():
        transformer(**kwargs, num_frames=5, height=8, width=8)
        assert sum(state.sparse_calls.values()) > 0
        state.reset_counters()
        with pytest.warns(UserWarning, match=r"LTXI2VLongMultiPromptPipeline a 1 x 1 x 1 grid"):
            transformer(**kwargs, num_frames=1, height=1, width=1)
    assert sum(state.sparse_calls.values()) == 0 and sum(state.dense_calls.values()) > 0


def test_a_copied_pipeline_follows_its_own_schedule_and_one_expert_copies_alone():
    """``copy.deepcopy(pipe)`` of a two-expert pipeline: the copies' hooks follow the copied pipeline's scheduler, so
    both experts keep the schedule's step indices (the low-noise expert does not restart at 0); a copy of one expert
    is that expert alone (not the other expert's state and weights)."""
    from radial_diffusers.tiny import tiny_wan22_pipeline

    pipe = tiny_wan22_pipeline(seed=0)
    rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2, dense_layers=0))
    twin = copy.deepcopy(pipe)
    traces = []
    for p in (pipe, twin):
        states = [t._radial_state for t in (p.transformer, p.transformer_2)]
        for s in states:
            s.record, s.trace = True, []
        with torch.no_grad():
            p("a cat", num_frames=17, height=64, width=64, num_inference_steps=6, max_sequence_length=16,
              guidance_scale=1.0, output_type="latent")
        traces.append([sorted({(step, sparse) for step, _, sparse in s.trace}) for s in states])
    assert traces[0] == traces[1] and traces[0][1] and min(step for step, _ in traces[0][1]) > 0
    assert all(sparse == (step >= 2) for trace in traces[0] for step, sparse in trace)
    alone = copy.deepcopy(pipe.transformer_2)
    assert alone._radial_state.experts == (alone._radial_state,)
    assert all(isinstance(p, RadialWanAttnProcessor) for n, p in pipe.transformer.attn_processors.items()
               if ".attn1." in n)


def _tiny_cogvideox_call():
    """A tiny CogVideoX transformer and a function running it on fixed inputs: 3 latent frames of 8 x 8 (patch 2: 16
    tokens each) + 8 text tokens, sparse at block 16."""
    from radial_diffusers.tiny import tiny_cogvideox_pipeline

    model = tiny_cogvideox_pipeline().transformer
    g = torch.Generator().manual_seed(0)
    x = dict(hidden_states=torch.randn(1, 3, 4, 8, 8, generator=g), timestep=torch.tensor([500]),
             encoder_hidden_states=torch.randn(1, 8, model.config.text_embed_dim, generator=g))

    def run(transformer=model):
        with torch.no_grad():
            return transformer(**x).sample

    return model, run


def _radial_layers(state, fused: bool) -> bool:
    """Whether every layer runs a radial processor of ``state`` reading fused projections or not."""
    return all(m.processor is p and p.fused is fused and not p.removed
               for (m, _), p in zip(state._originals, state.processors))


def test_cogvideox_fused_qkv_projections_keep_radial_attention():
    """CogVideoX's ``fuse_qkv_projections()`` replaces every processor with its stock fused one (and its
    ``unfuse_qkv_projections()`` puts back what it saved): after apply, the next call installs radial twins that read
    the fused ``to_qkv`` (sparse, the same output, no warning); unfusing takes the first processors up again, with
    the settings made meanwhile; removal while fused restores the stock fused processor, and a later unfuse the
    stock processor of separate projections (the saved radial ones are replaced)."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0

    model, run = _tiny_cogvideox_call()
    stock = run()
    state = rd.apply_radial_attention(model, SPARSE)
    radial = run()
    assert not torch.allclose(radial, stock, atol=1e-4) and sum(state.sparse_calls.values())
    first = list(state.processors)
    model.fuse_qkv_projections()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was lost: no "replaced" warning
        state.reset_counters()
        fused = run()
    assert _radial_layers(state, fused=True) and not any(p in first for p in state.processors)
    assert sum(state.sparse_calls.values())
    torch.testing.assert_close(fused, radial, atol=1e-5, rtol=1e-5)
    to_q = model.transformer_blocks[0].attn1.to_q.weight
    change = torch.randn(to_q.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the twins read the fused projection: the separate ones no longer matter
        to_q.add_(change)
    torch.testing.assert_close(run(), fused, atol=0, rtol=0)
    state.processors[1]._attention_backend = "native"  # set_attention_backend() while fused
    model.unfuse_qkv_projections()  # puts the first radial processors back: taken up again
    assert not torch.allclose(run(), fused, atol=1e-3)  # the changed to_q counts again
    assert state.processors == first and _radial_layers(state, fused=False)
    assert first[1]._attention_backend == "native"
    with torch.no_grad():
        to_q.sub_(change)
    torch.testing.assert_close(run(), radial, atol=1e-5, rtol=1e-5)

    model.fuse_qkv_projections()
    run()
    rd.remove_radial_attention(model)  # while fused: the stock fused processor comes back, fusion kept
    assert all(isinstance(m.processor, FusedCogVideoXAttnProcessor2_0) for m, _ in state._originals)
    torch.testing.assert_close(run(), stock, atol=1e-5, rtol=1e-5)
    model.unfuse_qkv_projections()  # the stock processors come back, not the removed radial ones
    assert all(m.processor is original and type(original) is CogVideoXAttnProcessor2_0
               for m, original in state._originals)
    torch.testing.assert_close(run(), stock, atol=1e-5, rtol=1e-5)


def test_cogvideox_fused_before_apply_or_while_applied_again():
    """Fused before apply, radial attention reads ``to_qkv`` from the start and survives the unfuse (the saved
    stock processor becomes a radial one, and comes back on removal); applied again while fused, the new state's
    processors are the ones an unfuse puts back."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    model, run = _tiny_cogvideox_call()
    stock = run()
    model.fuse_qkv_projections()
    state = rd.apply_radial_attention(model, SPARSE)
    assert _radial_layers(state, fused=True)
    radial = run()
    assert not torch.allclose(radial, stock, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.unfuse_qkv_projections()
        state.reset_counters()
        torch.testing.assert_close(run(), radial, atol=1e-5, rtol=1e-5)
    assert _radial_layers(state, fused=False) and sum(state.sparse_calls.values())
    rd.remove_radial_attention(model)
    assert all(type(m.processor) is CogVideoXAttnProcessor2_0 for m, _ in state._originals)
    torch.testing.assert_close(run(), stock, atol=1e-5, rtol=1e-5)

    model.fuse_qkv_projections()
    old = rd.apply_radial_attention(model, SPARSE)
    model.unfuse_qkv_projections()
    model.fuse_qkv_projections()
    run()
    new = rd.apply_radial_attention(model, SPARSE)  # again, while fused
    assert all(p.removed for p in old._installed) and _radial_layers(new, fused=True)
    assert all(p.state is new and not p.fused for p in model.original_attn_processors.values())
    model.unfuse_qkv_projections()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(run(), radial, atol=1e-5, rtol=1e-5)
    assert _radial_layers(new, fused=False)
    rd.remove_radial_attention(model)
    assert all(type(m.processor) is CogVideoXAttnProcessor2_0 for m, _ in new._originals)
    assert not any(hasattr(p, "state") for p in model.original_attn_processors.values())  # nothing of ours kept


def test_cogvideox_user_processor_choices_are_not_taken_over():
    """A processor the user sets after apply stays theirs, fused or not, and a later fusion does not bring radial
    attention back over it: the layers run what the user chose, with the warning."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0

    model, run = _tiny_cogvideox_call()
    state = rd.apply_radial_attention(model, SPARSE)
    model.fuse_qkv_projections()
    mine = FusedCogVideoXAttnProcessor2_0()
    run()  # twins
    model.set_attn_processor(mine)
    with pytest.warns(UserWarning, match="2 of the 2 attention processors"):
        run()
    assert all(m.processor is mine for m, _ in state._originals)

    model, run = _tiny_cogvideox_call()
    state = rd.apply_radial_attention(model, SPARSE)
    model.set_attn_processor(CogVideoXAttnProcessor2_0())
    with pytest.warns(UserWarning, match="2 of the 2"):
        run()
    model.fuse_qkv_projections()  # saves the user's processors, not radial ones
    state.reset_counters()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the count did not change: no second warning
        run()
    assert not sum(state.sparse_calls.values())
    assert all(isinstance(m.processor, FusedCogVideoXAttnProcessor2_0) for m, _ in state._originals)
