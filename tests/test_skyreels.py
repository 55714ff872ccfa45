"""SkyReels-V2: radial attention AND diffusion forcing's block-causal frame mask, exactly (CPU).

With ``causal_block_size > 1`` the DF pipelines set ``transformer.config.num_frame_per_block`` and the transformer
passes a block-causal frame mask to every ``attn1``. The step hook builds the layouts of radial AND that mask per
geometry (one layout when a causal chunk is a whole number of blocks, one per chunk otherwise); the processor only
reads them. The registry-wide tests (test_families.py, test_integration.py) cover the three tiny models without the
causal mask.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor
from torch._dynamo.testing import CompileCounterWithBackend

import radial_diffusers as rd
from radial_diffusers.errors import ConfigError
from radial_diffusers.layout import BlockLayout, FrameCausalLayout, frame_causal_block_mask
from radial_diffusers.processors import RadialSkyReelsV2AttnProcessor
from radial_diffusers.tiny import tiny_skyreels_v2_df_pipeline

DENSE = rd.RadialConfig(dense_steps=1.0, block_size=16)
SPARSE = rd.RadialConfig(dense_steps=1, dense_layers=1, block_size=16)


@pytest.fixture(scope="module")
def df():
    pipe = tiny_skyreels_v2_df_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def checked_calls(monkeypatch):
    """Every sparse ``attn1`` call, next to the stock processor (dense SDPA) on the same inputs with the expanded
    radial token mask AND the transformer's own mask: ``(max abs error, had a causal mask)`` per call."""
    calls = []
    original = RadialSkyReelsV2AttnProcessor.__call__

    def call(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        out = original(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is None and self.use_sparse:
            mask = self.state.layout.token_mask()  # the radial mask alone, expanded to tokens
            if attention_mask is not None:
                mask = mask & attention_mask[0, 0]
            b, s = hidden_states.shape[:2]
            ref = SkyReelsV2AttnProcessor()(attn, hidden_states, None, mask.expand(b, 1, s, s), rotary_emb)
            calls.append((float((out - ref).abs().max()), attention_mask is not None))
        return out

    monkeypatch.setattr(RadialSkyReelsV2AttnProcessor, "__call__", call)
    return calls


def _run(pipe, size: int, steps: int = 2, **extra):
    kwargs = dict(num_inference_steps=steps, output_type="latent", height=size, width=size, max_sequence_length=16,
                  guidance_scale=5.0, negative_prompt="blurry low quality")  # CFG; batch 2 is test_integration's
    kwargs.update(extra)
    torch.manual_seed(0)  # the DF pipelines' addnoise_condition draws from the global RNG
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(prompt="a cat dancing on the beach", generator=torch.Generator().manual_seed(0), **kwargs).frames


def _with(pipe, config, fn):
    state = rd.apply_radial_attention(pipe, config)
    try:
        return state, fn()
    finally:
        rd.remove_radial_attention(pipe)


# (label, call, size, frames per causal block): 21 frames -> 6 latent frames; 192 px -> 12x12 tokens per frame, 240 px
# -> 15x15 (from 12x12 tokens on, the radial mask at block 16 keeps neighbouring frames, which the causal mask cuts)
CASES = [
    ("t2v", dict(num_frames=17), 128, 1),
    ("df-causal-aligned", dict(num_frames=21, causal_block_size=2), 192, 2),  # chunk 288 = 18 blocks
    ("df-causal-unaligned", dict(num_frames=21, causal_block_size=3), 240, 3),  # chunk 675: one call per chunk
]


@pytest.mark.parametrize("label, extra, size, nfpb", CASES, ids=[c[0] for c in CASES])
def test_stock_all_dense_and_sparse_equal_sdpa_with_radial_and_causal(df, checked_calls, label, extra, size, nfpb):
    if label == "t2v":
        from radial_diffusers.tiny import load_tiny

        pipe = load_tiny("tiny-skyreels-v2")
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = df
    try:
        stock = _run(pipe, size, **extra)
        assert pipe.transformer.config.num_frame_per_block == nfpb
        state, dense = _with(pipe, DENSE, lambda: _run(pipe, size, **extra))
        assert torch.equal(dense, stock) and sum(state.sparse_calls.values()) == 0  # bit-exact, stock processors
        state, sparse = _with(pipe, SPARSE, lambda: _run(pipe, size, **extra))
        assert torch.equal(_run(pipe, size, **extra), stock)  # removing restores stock
    finally:
        pipe.transformer._set_ar_attention(1)
    assert checked_calls and len(checked_calls) == sum(state.sparse_calls.values())
    assert max(err for err, _ in checked_calls) < 1e-5
    assert all(causal == (nfpb > 1) for _, causal in checked_calls)
    assert torch.isfinite(sparse).all() and not torch.equal(sparse, stock)
    # the state reports what was computed: radial AND block-causal
    frames, h, w = state.geometry
    radial = state.block_mask(frames_per_block=1)
    assert state.frames_per_block == nfpb
    if nfpb == 1:
        assert state.causal is None and torch.equal(state.block_mask(), radial) and state.stats().density < 0.6
        return
    combined = state.block_mask()
    assert torch.equal(combined, radial & frame_causal_block_mask(radial.shape[0], 16, frames * h * w, nfpb * h * w))
    assert state.stats().density < float(radial.float().mean()) - 0.04  # the causal mask cut radial tiles
    causal = state.causal
    if label == "df-causal-aligned":  # one call over the AND of the two block masks
        assert causal.layout is not None and not causal.chunks
        layouts = [causal.layout]
    else:  # one call per causal chunk
        assert causal.layout is None and len(causal.chunks) == frames // nfpb
        layouts = [lay for _, _, lay in causal.chunks]
    union = torch.zeros_like(combined)
    for lay in layouts:
        union |= lay.block_mask()
    assert torch.equal(union, combined)


def test_chunked_op_equals_float64_attention_with_radial_and_causal():
    """The per-chunk calls (kv_lengths at the chunk end, the chunk's rows kept) on the op itself."""
    frames, h, w, nfpb, bs = 6, 6, 6, 2, 16
    seq, chunk = frames * h * w, nfpb * h * w  # 216 tokens in chunks of 72: not whole blocks
    radial = BlockLayout.from_block_mask(rd.radial_block_mask(frames, h * w, model="wan", block_size=bs,
                                                              decay_factor=0.2), bs, seq)
    causal = FrameCausalLayout.build(radial, chunk)
    assert causal.layout is None and [(s, e) for s, e, _ in causal.chunks] == [(0, 72), (72, 144), (144, 216)]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, seq, 2, 24, generator=gen) for _ in range(3))
    from radial_diffusers.processors import _chunked_causal_attention

    out = _chunked_causal_attention(q, k, v, causal, "torch")
    ids = torch.arange(seq) // chunk
    allowed = radial.token_mask() & (ids[None, :] <= ids[:, None])
    assert causal.is_mask(ids[None, :] <= ids[:, None]) and not causal.is_mask(torch.ones(seq, seq).tril().bool())
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(24)
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_refusals_leave_the_step_state_alone(df):
    tr = df.transformer
    state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_steps=0, dense_layers=0, block_size=16))
    ctx = torch.randn(1, 16, 32)
    captured = {}
    attn = tr.blocks[1].attn1
    hook = attn.register_forward_pre_hook(lambda m, a: captured.__setitem__("args", a))

    def forward(frames):
        with torch.no_grad():
            tr(torch.randn(1, 16, frames, 8, 8), timestep=torch.tensor([[500] * frames]), encoder_hidden_states=ctx,
               enable_diffusion_forcing=True)

    try:
        forward(4)  # num_frame_per_block=1: no mask
        hidden, _, mask, rotary = captured["args"]
        assert mask is None and state.causal is None
        s = hidden.shape[1]
        before = (state.step, state.geometry, dict(state.sparse_calls))
        token_causal = torch.ones(1, 1, s, s, dtype=torch.bool).tril()
        with torch.no_grad(), pytest.raises(ValueError, match="num_frame_per_block=1 does not make a block-causal"):
            attn(hidden, None, token_causal, rotary)

        tr._set_ar_attention(2)
        with pytest.raises(ConfigError, match=r"3 latent frames are not a multiple of .*num_frame_per_block=2.*"
                                              r"causal_block_size=1"):
            forward(3)  # refused by the hook, before the step state or the layout changes
        assert (state.step, state.geometry, dict(state.sparse_calls)) == before and state.frames_per_block == 1

        forward(4)  # 2 causal blocks of 2 frames: the hook builds the combined layouts
        hidden, _, mask, rotary = captured["args"]
        assert mask.shape == (1, 1, s, s) and state.causal is not None and state.causal.chunk == 2 * 16
        before = (state.step, dict(state.sparse_calls))
        with torch.no_grad():
            with pytest.raises(ValueError, match="not the block-causal frame mask of num_frame_per_block"):
                attn(hidden, None, token_causal, rotary)
            with pytest.raises(ValueError, match=r"takes only the transformer's block-causal frame mask .*float32"):
                attn(hidden, None, mask.float(), rotary)
            attn(hidden, None, mask, rotary)  # the transformer's own mask is taken
        assert state.step == before[0] and sum(state.sparse_calls.values()) == sum(before[1].values()) + 1
    finally:
        hook.remove()
        tr._set_ar_attention(1)
        rd.remove_radial_attention(tr)


def test_df_async_steps_on_the_noisiest_frame(df):
    """Per-frame timesteps (B, F): the hook steps on their max, so a call is dense while any frame is in the dense
    phase (dense_steps=2 of 4: sparse only once every frame is past step 1)."""
    state = rd.apply_radial_attention(df, rd.RadialConfig(dense_steps=2, dense_layers=1, block_size=16))
    trace = []
    hook = df.transformer.register_forward_hook(
        lambda m, a, kw, out: trace.append((float(kw["timestep"].max()), state.step, state.processors[1].use_sparse)),
        with_kwargs=True)
    try:
        _run(df, 96, steps=4, num_frames=21, ar_step=2, causal_block_size=2)
    finally:
        hook.remove()
        rd.remove_radial_attention(df)
        df.transformer._set_ar_attention(1)
    ts = [float(t) for t in df.scheduler.timesteps]
    assert len(trace) > 4 and all(t == ts[step] and sparse == (step >= 2) for t, step, sparse in trace)
    assert any(sparse for _, _, sparse in trace) and not trace[0][2]


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_with_the_causal_plan_built_by_the_hook(df, _fresh_dynamo):
    """torch.compile(fullgraph=True) of the DF transformer with the block-causal mask (unaligned: per-chunk calls),
    compiled on a fresh state, so the hook builds the combined layouts while Dynamo traces: one graph for a dense
    and three sparse steps (and one for the step hook), equal to eager."""
    tr = df.transformer
    tr._set_ar_attention(2)
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 6, 12, 12, generator=gen), torch.randn(1, 16, 32, generator=gen)
    timesteps = [[999] * 6, [700] * 2 + [850] * 4, [400] * 2 + [700] * 4, [0] * 2 + [400] * 4]  # max: 4 steps

    def run(model):
        with torch.no_grad():
            return [model(x, timestep=torch.tensor([t]), encoder_hidden_states=ctx, enable_diffusion_forcing=True,
                          return_dict=False)[0] for t in timesteps]

    config = rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=1)
    try:
        stock = run(tr)
        state = rd.apply_radial_attention(tr, config)
        counter = CompileCounterWithBackend("aot_eager")
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = run(torch.compile(tr, fullgraph=True, backend=counter))
        assert counter.frame_count == 2 and state.step == 3 and state.causal.layout is None  # hook + forward
        rd.apply_radial_attention(tr, config)  # a fresh state, eager
        eager = run(tr)
    finally:
        rd.remove_radial_attention(tr)
        tr._set_ar_attention(1)
    torch.testing.assert_close(eager[0], stock[0], rtol=0, atol=0)  # dense step
    assert not torch.allclose(eager[1], stock[1])  # radial AND causal ran
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frame_causal_layout_pickles_after_a_mask_check():
    """A checked mask is remembered by weak reference (not picklable): a pickled layout (torch.save of a model after a
    block-causal run) drops it and equals the original otherwise."""
    import pickle

    frames, h, w, bs = 6, 6, 6, 16
    seq, chunk = frames * h * w, 2 * h * w
    radial = BlockLayout.from_block_mask(rd.radial_block_mask(frames, h * w, model="wan", block_size=bs,
                                                              decay_factor=0.2), bs, seq)
    causal = FrameCausalLayout.build(radial, chunk)
    ids = torch.arange(seq) // chunk
    mask = ids[None, :] <= ids[:, None]
    assert causal.is_mask(mask) and causal._checked
    copy = pickle.loads(pickle.dumps(causal))
    assert copy._checked == [] and copy.chunk == causal.chunk and copy.is_mask(mask)
    assert [(s, e) for s, e, _ in copy.chunks] == [(s, e) for s, e, _ in causal.chunks]
    assert all(torch.equal(a.block_mask(), b.block_mask()) for (_, _, a), (_, _, b) in zip(copy.chunks, causal.chunks))
