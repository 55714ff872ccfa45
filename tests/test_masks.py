"""radial_block_mask against a literal port of upstream gen_log_mask_shrinked, plus reference values and helpers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from radial_diffusers.masks import (
    MaskStats,
    _radial_block_mask_np,
    latent_frames_for,
    mask_stats,
    radial_block_mask,
    save_mask_png,
)


def _load_port():
    path = Path(__file__).with_name("official_mask_port.py")
    spec = importlib.util.spec_from_file_location("_official_mask_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_port_module = _load_port()
port = _port_module.official_block_mask


def _diff(ours: torch.Tensor, ref: torch.Tensor) -> str:
    """Readable description of where two block masks differ (for assertion messages)."""
    if ours.shape != ref.shape:
        return f"shape {tuple(ours.shape)} != port {tuple(ref.shape)}"
    idx = torch.nonzero(ours != ref).tolist()
    shown = ", ".join(f"({r},{c}): ours={bool(ours[r, c])} port={bool(ref[r, c])}" for r, c in idx[:20])
    return f"{len(idx)} differing blocks: {shown}"


def _assert_same(ours: torch.Tensor, ref: torch.Tensor, geometry: dict) -> None:
    assert ours.dtype == torch.bool
    assert ours.shape == ref.shape and torch.equal(ours, ref), f"{geometry}: {_diff(ours, ref)}"


def _with_diagonal(mask: torch.Tensor) -> torch.Tensor:
    return mask | torch.eye(mask.shape[0], dtype=torch.bool)


def _assert_official(ours: torch.Tensor, ref: torch.Tensor, geometry: dict) -> None:
    """Aligned geometries: upstream's mask, plus the diagonal blocks upstream's crop loses (and nothing else)."""
    _assert_same(ours, _with_diagonal(ref), geometry)
    if bool(ref.diagonal().all()):
        _assert_same(ours, ref, geometry)


def _token_mask(frames, tpf, *, model, block_size, decay_factor, adjacent, sink) -> torch.Tensor:
    """The token-level radial mask (video tokens only), assembled from the port's frame-pair tiles."""
    if sink is None:
        sink = model == "wan"
    out = torch.zeros((frames * tpf,) * 2, dtype=torch.bool)
    for i in range(frames):
        for j in range(frames):
            tile = _port_module.pair_tile(i, j, tpf, model, adjacent, decay_factor, block_size, sink)
            out[i * tpf : (i + 1) * tpf, j * tpf : (j + 1) * tpf] = tile
    return out


def _union_rule_reference(latent_frames, tokens_per_frame, *, block_size, text_tokens=0, **rule) -> torch.Tensor:
    """Upstream's block keep rule applied to the whole padded token mask at once (no per-tile split, no crop)."""
    b, video = block_size, latent_frames * tokens_per_frame
    n = -(-(video + text_tokens) // b)
    tokens = torch.zeros((n * b,) * 2, dtype=torch.bool)
    tokens[:video, :video] = _token_mask(latent_frames, tokens_per_frame, block_size=b, **rule)
    count = tokens.reshape(n, b, n, b).sum(dim=1)  # (query block, key block, key column): kept rows
    return 5 * (3 * count > b).sum(-1) > 3 * (count > 0).sum(-1)


def _picture(mask: torch.Tensor) -> str:
    return "\n".join("".join("#" if v else "." for v in row) for row in mask.tolist())


# ----------------------------------------------------------------------------------------------------------------
# Equality with the port on aligned geometries
# ----------------------------------------------------------------------------------------------------------------

MAX_TOKENS = 6000  # keep the naive port fast: its cost grows with (frames * tpf) ** 2

decays = st.one_of(
    st.sampled_from([0.01, 0.05, 0.2, 0.25, 0.5, 0.95, 1.0, 1.5, 2.0, 3.0]),
    st.floats(min_value=0.01, max_value=3.0, allow_nan=False, allow_infinity=False),
)


def _with_rule(draw, frames: int, tpf: int, block: int, text: int) -> dict:
    """radial_block_mask kwargs for a geometry, with a drawn model, decay, Wan rule and sink."""
    return dict(
        latent_frames=frames,
        tokens_per_frame=tpf,
        model=draw(st.sampled_from(["wan", "hunyuan"])),
        block_size=block,
        decay_factor=draw(decays),
        text_tokens=text,
        adjacent=draw(st.sampled_from(["full", "half"])),
        sink=draw(st.booleans()),
    )


@st.composite
def aligned_geometries(draw):
    """Geometries with frames * tpf and text tokens multiples of block_size; tpf itself often is not."""
    b = draw(st.sampled_from([16, 32, 64, 128]))
    frames = draw(st.integers(1, 24))
    step = b // math.gcd(frames, b)  # tpf must be a multiple of this for frames * tpf % b == 0
    k_max = min(1200, MAX_TOKENS // frames) // step
    tpf = step * draw(st.integers(1, max(1, k_max)))
    text = b * draw(st.integers(0, 3))
    return _with_rule(draw, frames, tpf, b, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aligned_geometries())
def test_equals_official_port_on_aligned_geometries(geometry):
    assert (geometry["latent_frames"] * geometry["tokens_per_frame"]) % geometry["block_size"] == 0
    ours = radial_block_mask(**geometry)
    ref = port(**geometry)
    _assert_official(ours, ref, geometry)


@pytest.mark.parametrize(
    "frames, tpf, b",
    [
        (8, 16, 128),  # 16 tokens per frame, 8 frames share a block: every frame has its own canvas offset
        (3, 1200, 16),  # tpf 1200 = 75 blocks of 16
        (16, 360, 64),  # offsets 360 % 64 = 40 -> 8 distinct offsets
        (1, 1152, 128),  # one frame: only the dist-0 tile
        (24, 240, 16),  # many frames: decimation kicks in for dist >= 16 (P = 256)
        (15, 384, 128),  # tpf = 3 blocks, non power of two
        (12, 496, 64),  # P = 512 with tpf close to it
    ],
)
@pytest.mark.parametrize(
    "model, adjacent, sink", [("wan", "full", True), ("wan", "half", False), ("hunyuan", "full", True)]
)
def test_equals_official_port_fixed_cases(frames, tpf, b, model, adjacent, sink):
    for d in (0.2, 0.95):
        geometry = dict(
            latent_frames=frames, tokens_per_frame=tpf, model=model, block_size=b, decay_factor=d,
            adjacent=adjacent, sink=sink,
        )
        _assert_official(radial_block_mask(**geometry), port(**geometry), geometry)


@pytest.mark.parametrize(
    "frames, tpf, b, model, decay, text, adjacent",
    [
        (12, 1536, 64, "wan", 0.8, 0, "full"),  # Wan2.2's official block 64 and decay, 512x768 frames
        (4, 3600, 64, "hunyuan", 0.95, 256, "full"),  # HunyuanVideo 720x1280 frames with its text
        (5, 3840, 128, "wan", 0.2, 0, "half"),  # Wan2.1 768x1280 frames, the releases' half band
    ],
)
def test_equals_official_port_at_real_frame_sizes(frames, tpf, b, model, decay, text, adjacent):
    """The random cases stay under 6,000 tokens; real checkpoints have about 350-3,840 tokens per frame (LTX-Video
    512x704: 352, CogVideoX 480x720: 1,350, Wan 480x832: 1,560, HunyuanVideo 720x1280: 3,600). A one-off sweep
    against upstream's own code, 37,459 geometries up to 70 frames, agreed in the same way (BENCHMARKS)."""
    geometry = dict(latent_frames=frames, tokens_per_frame=tpf, model=model, block_size=b, decay_factor=decay,
                    text_tokens=text, adjacent=adjacent)
    _assert_official(radial_block_mask(**geometry), port(**geometry), geometry)


def test_wan22_preset_mask_equals_official_at_block_64():
    """Wan2.2 (official: block 64, decay 0.8, the Wan rule): 256x448x33 -> 9 latent frames of 16x28 = 448 tokens,
    4032 = 63 blocks of 64, aligned although 448 is not a multiple of 64."""
    from radial_diffusers import RadialConfig

    cfg = RadialConfig(block_size=64).with_preset("wan2.2")
    geometry = dict(latent_frames=9, tokens_per_frame=448, model="wan", block_size=64,
                    decay_factor=cfg.decay_factor, adjacent=cfg.adjacent, sink=cfg.sink)
    assert cfg.decay_factor == 0.8 and cfg.sink
    _assert_official(radial_block_mask(**geometry), port(**geometry), geometry)


@st.composite
def near_integer_widths(draw):
    """Decay factors putting the float band width on, or one ulp around, an integer: exercises the float32 test."""
    b = draw(st.sampled_from([16, 32, 64, 128]))
    frames = draw(st.integers(3, 12))
    step = b // math.gcd(frames, b)
    tpf = step * draw(st.integers(1, max(1, min(1200, MAX_TOKENS // frames) // step)))
    base = 2 ** tpf.bit_length() / 4  # undecayed band length for dist 2..3
    target = draw(st.integers(1, max(1, int(base))))
    d = target / base
    d = draw(st.sampled_from([d, float(np.nextafter(d, 0.0)), float(np.nextafter(d, np.inf))]))
    if not d > 0:
        d = 1.0
    return dict(
        latent_frames=frames, tokens_per_frame=tpf, model=draw(st.sampled_from(["wan", "hunyuan"])), block_size=b,
        decay_factor=d, adjacent="full", sink=False,
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_integer_widths())
def test_equals_official_port_near_integer_band_widths(geometry):
    _assert_official(radial_block_mask(**geometry), port(**geometry), geometry)


@pytest.mark.parametrize("model", ["wan", "hunyuan"])
@pytest.mark.parametrize(
    "frames, tpf, block, lost", [(8, 240, 128, [3]), (8, 120, 64, [3]), (8, 30, 16, [3]), (16, 120, 128, [1, 2, 3, 4])]
)
def test_aligned_rows_upstream_leaves_empty_keep_their_diagonal(model, frames, tpf, block, lost):
    # tpf = 2 * 128 - 16 at block 128: frame 1 starts 240 % 128 = 112 tokens into block 1, upstream crops its tile to
    # 2 whole blocks of its own rows, and its last 112 rows (in block 3, with 16 rows of frame 2) are kept by no
    # tile: upstream leaves block row 3 empty. Only the diagonal block is added there.
    ref = port(frames, tpf, model=model, block_size=block, decay_factor=1.0)
    assert (~ref.any(dim=1)).nonzero().flatten().tolist() == lost
    ours = radial_block_mask(frames, tpf, model=model, block_size=block, decay_factor=1.0)
    assert (ours & ~ref).nonzero().tolist() == [[r, r] for r in lost]
    assert not bool((ref & ~ours).any())


def test_aligned_544x960x61_keeps_every_diagonal_block():
    # the same crop at a real resolution (2040 tokens per frame = 16 * 128 - 8): rows 31, 47, 63, 79 would be empty
    mask = radial_block_mask(16, 2040, model="wan", block_size=128, decay_factor=0.2)
    assert bool(mask.diagonal().all())
    for row in (31, 47, 63, 79):
        assert mask[row].nonzero().flatten().tolist() == [row]


# ----------------------------------------------------------------------------------------------------------------
# The notes' 16x16 example (tpf=256, F=8, B=128, d=1)
# ----------------------------------------------------------------------------------------------------------------

HUNYUAN_16 = """\
##########..##..
##########..##..
############..##
############..##
##############..
##############..
################
################
################
################
..##############
..##############
##..############
##..############
..##..##########
..##..##########"""


def test_tiny_example_hunyuan():
    mask = radial_block_mask(8, 256, model="hunyuan", block_size=128, decay_factor=1.0)
    assert mask.shape == (16, 16)
    assert _picture(mask) == HUNYUAN_16
    assert torch.equal(mask, port(8, 256, model="hunyuan", block_size=128, decay_factor=1.0))


def test_tiny_example_wan_has_sink_columns():
    expected = "\n".join("##" + row[2:] for row in HUNYUAN_16.splitlines())
    mask = radial_block_mask(8, 256, model="wan", block_size=128, decay_factor=1.0)
    assert _picture(mask) == expected
    # the sink is the only difference: Wan without the sink is the HunyuanVideo picture
    assert _picture(radial_block_mask(8, 256, model="wan", block_size=128, sink=False)) == HUNYUAN_16
    assert _picture(radial_block_mask(8, 256, model="hunyuan", block_size=128, sink=True)) == expected


def test_tiny_example_with_text_tokens():
    rows = [row + "##" for row in HUNYUAN_16.splitlines()] + ["#" * 18] * 2
    mask = radial_block_mask(8, 256, model="hunyuan", block_size=128, text_tokens=256)
    assert mask.shape == (18, 18)
    assert _picture(mask) == "\n".join(rows)
    assert torch.equal(mask, port(8, 256, model="hunyuan", block_size=128, text_tokens=256))


def test_sink_default_follows_model():
    for model, default in (("wan", True), ("hunyuan", False)):
        kwargs = dict(model=model, block_size=32, decay_factor=0.5)
        assert torch.equal(radial_block_mask(12, 160, **kwargs), radial_block_mask(12, 160, sink=default, **kwargs))
        flipped = radial_block_mask(12, 160, sink=not default, **kwargs)
        assert not torch.equal(radial_block_mask(12, 160, **kwargs), flipped)


def test_hunyuan_ignores_adjacent_rule():
    kwargs = dict(model="hunyuan", block_size=64, decay_factor=0.2)
    assert torch.equal(radial_block_mask(10, 1024, adjacent="half", **kwargs), radial_block_mask(10, 1024, **kwargs))


# ----------------------------------------------------------------------------------------------------------------
# Reference values (too large for the port; computed with radial_block_mask only)
# ----------------------------------------------------------------------------------------------------------------


def test_issue_61_wan_768x1280x69_half_rule():
    mask = radial_block_mask(18, 3840, model="wan", decay_factor=0.2, adjacent="half")
    assert mask.shape == (540, 540)
    assert int(mask.sum()) == 76_798 and mask.numel() == 291_600
    # upstream prints the float32 value "mask sparsity: 0.7366323..." (1 - sum / numel computed by torch)
    assert f"{(1 - mask.sum() / mask.numel()).item():.9f}".startswith("0.7366323")
    # saturation (issue #61): a band of 0.01 * 1024 tokens is clamped to one block, as is 0.2 * 1024 -> same blocks
    assert torch.equal(radial_block_mask(18, 3840, model="wan", decay_factor=0.01, adjacent="half"), mask)
    head = radial_block_mask(18, 3840, model="wan", decay_factor=0.2, adjacent="full")
    assert int(head.sum()) != 76_798
    assert bool((head | mask).eq(head).all())  # the full adjacent band only adds blocks


def _sparsity(mask: torch.Tensor) -> float:
    return 1.0 - int(mask.sum()) / mask.numel()


@pytest.mark.parametrize(
    "frames, tpf, model, adjacent, sink, paper",
    [
        (128, 3600, "hunyuan", "full", True, 0.883),  # HunyuanVideo 720x1280x509 (4x)
        (64, 3600, "hunyuan", "full", True, 0.808),  # HunyuanVideo 720x1280x253 (2x)
        (41, 3840, "wan", "full", True, 0.736),  # Wan2.1 768x1280x161 (2x), HEAD adjacent rule
    ],
)
def test_paper_table_sparsities(frames, tpf, model, adjacent, sink, paper):
    # The paper's one-decimal percentages match the video-video block mask truncated to 0.1 %:
    # 0.88372 -> 88.3, 0.80831 -> 80.8, 0.73612 -> 73.6. (With 256 text tokens 253 frames would give 0.8065.)
    mask = radial_block_mask(frames, tpf, model=model, decay_factor=1.0, adjacent=adjacent, sink=sink)
    assert mask.shape == (frames * tpf // 128,) * 2
    assert math.floor(_sparsity(mask) * 1000) / 1000 == pytest.approx(paper, abs=1e-12)


def test_paper_hunyuan_values_need_the_sink():
    without = _sparsity(radial_block_mask(128, 3600, model="hunyuan", decay_factor=1.0, sink=False))
    assert not 0.883 <= without < 0.884
    half = _sparsity(radial_block_mask(41, 3840, model="wan", decay_factor=1.0, adjacent="half"))
    assert not 0.736 <= half < 0.737  # the Wan value needs the HEAD (full) adjacent rule


def test_hunyuan_text_rows_and_columns_dense_at_scale():
    mask = radial_block_mask(128, 3600, model="hunyuan", decay_factor=1.0, text_tokens=256)
    assert mask.shape == (3602, 3602)
    assert bool(mask[3600:].all()) and bool(mask[:, 3600:].all())


# ----------------------------------------------------------------------------------------------------------------
# Unaligned geometries: padded grid; upstream's per-tile rule, the rule on the union of tiles, the diagonal
# ----------------------------------------------------------------------------------------------------------------


def _padded_len(frames, tpf, text, b):
    return b * -(-(frames * tpf + text) // b)


def _straddling(frames, tpf, b) -> set[int]:
    """Video blocks holding tokens of two or more frames, and the partial last video block."""
    video = frames * tpf
    return {
        a for a in range(-(-video // b)) if (a * b) // tpf != (min(a * b + b, video) - 1) // tpf or a * b + b > video
    }


def test_unaligned_wan_480x832x81_adds_to_port_only_where_blocks_straddle_frames():
    frames, tpf = latent_frames_for(81), 1560
    assert frames == 21
    mask = radial_block_mask(frames, tpf, model="wan", decay_factor=0.2)
    assert mask.shape == (256, 256)  # ceil(32760 / 128)
    ref = port(frames, tpf, model="wan", decay_factor=0.2, s=_padded_len(frames, tpf, 0, 128), text_dense=False)
    assert not bool((ref & ~mask).any())  # everything upstream's rule keeps on the padded grid is kept
    straddling = _straddling(frames, tpf, 128)
    added = (mask & ~ref).nonzero().tolist()
    assert added and all(r in straddling or c in straddling for r, c in added)
    # block 255 holds the last 120 tokens of frame 20: no text, so it follows the keep rule (not forced dense)
    assert not bool(mask[255].all()) and not bool(mask[:, 255].all())
    assert bool(mask[255, 0]) and bool(mask[255, 255])  # sink column and its own frame


def test_unaligned_wan_720x1280x81_shape_and_aligned_prefix():
    frames, tpf = 21, 3600
    mask = radial_block_mask(frames, tpf, model="wan", decay_factor=0.2)
    assert mask.shape == (591, 591)  # ceil(75600 / 128) = 591
    assert bool(mask[590, 0]) and bool(mask[590, 590]) and not bool(mask[590].all())
    # frames 0..7 end exactly on block 225 (8 * 3600 = 225 * 128): their block mask is the aligned 8-frame mask
    assert torch.equal(mask[:225, :225], radial_block_mask(8, tpf, model="wan", decay_factor=0.2))


@st.composite
def unaligned_geometries(draw):
    b = draw(st.sampled_from([16, 32, 64, 128]))
    frames = draw(st.integers(1, 16))
    tpf = draw(st.integers(1, min(600, 2500 // frames)))
    text = draw(st.integers(0, 300))
    return _with_rule(draw, frames, tpf, b, text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unaligned_geometries())
def test_unaligned_is_port_or_union_rule_or_diagonal(geometry):
    g = geometry
    n = -(-(g["latent_frames"] * g["tokens_per_frame"] + g["text_tokens"]) // g["block_size"])
    ours = radial_block_mask(**g)
    assert ours.shape == (n, n)
    expected = port(**g, s=n * g["block_size"], text_dense=g["text_tokens"] > 0)
    if (g["latent_frames"] * g["tokens_per_frame"]) % g["block_size"]:
        expected = expected | _union_rule_reference(**g)
    _assert_same(ours, _with_diagonal(expected), g)


@pytest.mark.parametrize("frames, tpf, b, text", [(5, 64, 16, 32), (9, 448, 64, 128), (13, 1350, 128, 256),
                                                  (3, 40, 16, 48)])
def test_text_before_with_whole_text_blocks_is_the_after_mask_permuted(frames, tpf, b, text):
    """[text, video] with a text length of whole blocks: the [video, text] mask with the text blocks moved first."""
    for model in ("wan", "hunyuan"):
        g = dict(model=model, block_size=b, decay_factor=0.5, text_tokens=text)
        after = radial_block_mask(frames, tpf, **g, text_position="after")
        before = radial_block_mask(frames, tpf, **g, text_position="before")
        n, t = after.shape[0], text // b
        v = n - t  # video blocks (all whole here or the last partial: no block holds text and video)
        order = torch.cat([torch.arange(v, n), torch.arange(v)])
        if (frames * tpf) % b == 0:
            assert torch.equal(before, after[order][:, order])
        assert before[:t].all() and before[:, :t].all()


def _union_rule_reference_text_first(latent_frames, tokens_per_frame, *, block_size, text_tokens, **rule):
    """The keep rule on the whole padded token mask with the video tokens after ``text_tokens`` text tokens."""
    b, video, start = block_size, latent_frames * tokens_per_frame, text_tokens
    n = -(-(video + start) // b)
    tokens = torch.zeros((n * b,) * 2, dtype=torch.bool)
    tokens[start:start + video, start:start + video] = _token_mask(latent_frames, tokens_per_frame, block_size=b,
                                                                   **rule)
    count = tokens.reshape(n, b, n, b).sum(dim=1)
    return 5 * (3 * count > b).sum(-1) > 3 * (count > 0).sum(-1), tokens.reshape(n, b, n, b).any(3).any(1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unaligned_geometries())
@example({"latent_frames": 16, "tokens_per_frame": 7, "model": "wan", "block_size": 16, "decay_factor": 0.01,
          "text_tokens": 16, "adjacent": "full", "sink": False})
def test_text_before_is_dense_text_union_rule_and_diagonal(geometry):
    """Any text length before the video: text blocks dense, the diagonal kept, and no block kept that holds no token
    pair of the token mask (outside the text). Unaligned (video or text not whole blocks), every block the union rule
    keeps is kept; aligned, the mask is the official one of the [video, text] order with the text blocks moved first
    (the official per-tile rule keeps fewer blocks than the union rule on some aligned geometries: e.g. 16 frames of
    7 tokens at block 16, decay 0.01)."""
    g = dict(geometry, text_tokens=max(1, geometry["text_tokens"]))
    ours = radial_block_mask(**g, text_position="before")
    n = ours.shape[0]
    video = g["latent_frames"] * g["tokens_per_frame"]
    assert n == -(-(video + g["text_tokens"]) // g["block_size"])
    t = -(-g["text_tokens"] // g["block_size"])
    assert ours[:t].all() and ours[:, :t].all() and ours.diagonal().all()
    union, touched = _union_rule_reference_text_first(**g)
    if video % g["block_size"] or g["text_tokens"] % g["block_size"]:
        assert not (union & ~ours).any()
    else:
        after = radial_block_mask(**g, text_position="after")
        order = torch.cat([torch.arange(n - t, n), torch.arange(n - t)])
        assert torch.equal(ours, after[order][:, order])
    extra = ours & ~touched
    extra[:t] = False
    extra[:, :t] = False
    extra.fill_diagonal_(False)
    assert not extra.any(), _picture(extra.int().bool())


def test_union_rule_keeps_blocks_no_single_tile_keeps():
    # 1 frame of 3 tokens in a block of 16 (Diffusers' tiny test geometry): the block was dropped (3 rows < 16 / 3)
    assert torch.equal(radial_block_mask(1, 3, model="wan", block_size=16), torch.ones(1, 1, dtype=torch.bool))
    # 2 frames of 9 tokens, block 16: block 0 = frame 0 + 7 rows of frame 1, block 1 = the last 2 tokens of frame 1.
    # Key block 1's two columns are kept by all 16 rows of block 0 (frames 0 and 1 see each other fully), but each
    # tile holds only 9 or 7 of those rows, below the 1/3 test: only the union keeps block (0, 1).
    g = dict(model="hunyuan", block_size=16, decay_factor=1.0, adjacent="full", sink=False)
    ref = port(2, 9, **g, s=32, text_dense=False)
    assert ref.tolist() == [[True, False], [False, False]]
    assert _union_rule_reference(2, 9, **g).tolist() == [[True, True], [False, False]]
    assert radial_block_mask(2, 9, **g).tolist() == [[True, True], [False, True]]  # + the tail's diagonal


# The issue's measured cases and a broad sweep of resolutions, frame counts and block sizes: no query block may be
# left with nothing to attend to, and every block attends to itself.
SWEEP_RESOLUTIONS = [
    (16, 16), (32, 32), (48, 80), (64, 64), (96, 160), (192, 192), (256, 256), (320, 512), (480, 832), (480, 848),
    (512, 512), (544, 960), (576, 1024), (720, 1280), (768, 1280),
]


@pytest.mark.parametrize("model, text", [("wan", 0), ("hunyuan", 256), ("hunyuan", 77)])
@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_every_query_block_keeps_its_diagonal_sweep(model, text, block):
    checked = 0
    for height, width in SWEEP_RESOLUTIONS:
        tpf = (height // 16) * (width // 16)
        for num_frames in (1, 5, 17, 29, 33, 61, 81, 129):
            frames = latent_frames_for(num_frames)
            n = -(-(frames * tpf + text) // block)
            if n > 400:  # keep the sweep fast; the issue's large geometries are checked below
                continue
            mask = radial_block_mask(frames, tpf, model=model, block_size=block, decay_factor=0.2, text_tokens=text)
            assert bool(mask.diagonal().all()), (height, width, num_frames, block)
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize(
    "frames, tpf, model, text",
    [
        (21, 2040, "wan", 0),  # Wan 544x960x81: 8 empty query blocks before
        (9, 3600, "wan", 0),  # Wan 720x1280x33: the tail block was empty
        (33, 2040, "hunyuan", 256),  # HunyuanVideo 544x960x129: 8 video blocks lost their own diagonal
        (1, 3, "wan", 0),  # Diffusers' tiny test geometry: 3 tokens in one block
        (9, 16, "wan", 0),  # 33 frames at 64x64: the whole self-attention was zero
        (41, 3600, "wan", 0),  # 720x1280x161
    ],
)
@pytest.mark.parametrize("block", [16, 128])
def test_issue_geometries_have_no_empty_rows(frames, tpf, model, text, block):
    if -(-(frames * tpf + text) // block) > 12_000:
        pytest.skip("mask too large for a fast test")
    mask = radial_block_mask(frames, tpf, model=model, block_size=block, decay_factor=0.2, text_tokens=text)
    assert bool(mask.diagonal().all())
    assert bool(mask.any(dim=1).all()) and bool(mask.any(dim=0).all())


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(block_size=48), "block_size"),
        (dict(block_size=100), "block_size"),
        (dict(block_size=8), "block_size"),
        (dict(block_size=0), "block_size"),
        (dict(latent_frames=0), "latent_frames"),
        (dict(latent_frames=-3), "latent_frames"),
        (dict(tokens_per_frame=0), "tokens_per_frame"),
        (dict(tokens_per_frame=-128), "tokens_per_frame"),
        (dict(model="sora"), "model"),
        (dict(model="Wan"), "model"),
        (dict(adjacent="quarter"), "adjacent"),
        (dict(decay_factor=0.0), "decay_factor"),
        (dict(decay_factor=-0.5), "decay_factor"),
        (dict(decay_factor=float("nan")), "decay_factor"),
        (dict(decay_factor=float("inf")), "decay_factor"),
        (dict(text_tokens=-1), "text_tokens"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs, name):
    args = dict(latent_frames=4, tokens_per_frame=256, model="wan", block_size=128, decay_factor=1.0)
    args.update(kwargs)
    frames, tpf = args.pop("latent_frames"), args.pop("tokens_per_frame")
    with pytest.raises(ValueError, match=name):
        radial_block_mask(frames, tpf, **args)


def test_latent_frames_for():
    assert [latent_frames_for(n) for n in (1, 5, 69, 81, 161, 253, 509)] == [1, 2, 18, 21, 41, 64, 128]
    with pytest.raises(ValueError, match="num_frames"):
        latent_frames_for(0)


# ----------------------------------------------------------------------------------------------------------------
# Copy semantics and caching
# ----------------------------------------------------------------------------------------------------------------


def test_returns_fresh_copy():
    kwargs = dict(model="wan", block_size=64, decay_factor=0.5)
    first = radial_block_mask(6, 640, **kwargs)
    expected = first.clone()
    first.logical_not_()
    first[0, 0] = False
    second = radial_block_mask(6, 640, **kwargs)
    assert torch.equal(second, expected)
    assert second.data_ptr() != first.data_ptr()


def test_second_call_is_served_from_the_cache(monkeypatch):
    from radial_diffusers import masks

    _radial_block_mask_np.cache_clear()
    kwargs = dict(model="wan", decay_factor=0.2, adjacent="half")
    cold = radial_block_mask(18, 3840, **kwargs)
    info = _radial_block_mask_np.cache_info()
    assert (info.hits, info.misses) == (0, 1)

    def fail(*args, **kw):
        raise AssertionError("the mask was rebuilt instead of read from the cache")

    monkeypatch.setattr(masks, "_per_tile_blocks", fail)  # a rebuild would call it
    warm = radial_block_mask(18, 3840, **kwargs)
    assert _radial_block_mask_np.cache_info().hits == 1
    assert torch.equal(cold, warm)
    with pytest.raises(AssertionError, match="rebuilt"):
        radial_block_mask(18, 3840, model="wan", decay_factor=0.3, adjacent="half")  # another geometry: a miss


def test_equivalent_argument_types_share_one_cache_entry():
    _radial_block_mask_np.cache_clear()
    radial_block_mask(4, 256, decay_factor=1)
    radial_block_mask(np.int64(4), 256, decay_factor=1.0)
    info = _radial_block_mask_np.cache_info()
    assert info.misses == 1 and info.hits == 1


# ----------------------------------------------------------------------------------------------------------------
# mask_stats and save_mask_png
# ----------------------------------------------------------------------------------------------------------------


def test_mask_stats_density_aligned():
    mask = radial_block_mask(18, 3840, model="wan", decay_factor=0.2, adjacent="half")
    stats = mask_stats(mask, block_size=128)
    assert isinstance(stats, MaskStats)
    assert stats.n_blocks == 540 and stats.kept_blocks == 76_798 and stats.seq_len == 540 * 128
    assert stats.density == pytest.approx(76_798 / 291_600, rel=0, abs=1e-15)
    # aligned: computed FLOPs are kept blocks * B^2 token pairs
    assert stats.sparse_flops == 4.0 * 76_798 * 128 * 128 * 128
    assert stats.dense_flops == 4.0 * (540 * 128) ** 2 * 128
    assert stats.flops_saved == pytest.approx(1 - 76_798 / 291_600)
    assert stats.speedup_bound == pytest.approx(291_600 / 76_798)


@pytest.mark.parametrize(
    "frames, tpf, text, b, head_dim", [(5, 100, 0, 32, 64), (3, 70, 45, 16, 128), (7, 33, 0, 64, 80)]
)
def test_mask_stats_flops_unaligned_brute_force(frames, tpf, text, b, head_dim):
    mask = radial_block_mask(frames, tpf, model="hunyuan", block_size=b, decay_factor=0.5, text_tokens=text)
    seq_len = frames * tpf + text
    n = mask.shape[0]
    assert (n - 1) * b < seq_len <= n * b and seq_len % b != 0
    tokens = mask.repeat_interleave(b, 0).repeat_interleave(b, 1)[:seq_len, :seq_len]
    pairs = int(tokens.sum())
    stats = mask_stats(mask, block_size=b, seq_len=seq_len, head_dim=head_dim)
    assert stats.kept_blocks == int(mask.sum())
    assert stats.density == int(mask.sum()) / (n * n)
    assert stats.sparse_flops == 4.0 * pairs * head_dim
    assert stats.dense_flops == 4.0 * seq_len * seq_len * head_dim
    assert stats.flops_saved == pytest.approx(1 - pairs / seq_len**2)


def test_mask_stats_rejects_bad_input():
    mask = radial_block_mask(4, 256, block_size=128)
    with pytest.raises(ValueError, match="seq_len"):
        mask_stats(mask, block_size=128, seq_len=8 * 128 + 1)
    with pytest.raises(ValueError, match="seq_len"):
        mask_stats(mask, block_size=128, seq_len=7 * 128)
    with pytest.raises(ValueError, match="square"):
        mask_stats(mask[:, :5], block_size=128)


def test_save_mask_png_roundtrip(tmp_path):
    from PIL import Image

    mask = radial_block_mask(8, 256, model="hunyuan", block_size=128, text_tokens=256)
    path = save_mask_png(mask, tmp_path / "sub" / "mask.png")
    assert path == tmp_path / "sub" / "mask.png" and path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (18, 18)
        pixels = np.asarray(image.convert("L"))
    assert set(np.unique(pixels).tolist()) <= {0, 255}
    assert np.array_equal(pixels == 255, mask.numpy())
    assert [p.name for p in path.parent.iterdir()] == ["mask.png"]  # no temporary file left behind


def test_save_mask_png_downsamples_with_block_max(tmp_path):
    from PIL import Image

    mask = radial_block_mask(18, 3840, model="wan", decay_factor=0.2, adjacent="half")  # 540 x 540
    path = save_mask_png(mask, tmp_path / "small.png", max_side=100)
    factor = 6  # ceil(540 / 100)
    with Image.open(path) as image:
        assert image.size == (90, 90)
        pixels = np.asarray(image.convert("L")) == 255
    pooled = mask.reshape(90, factor, 90, factor).any(dim=3).any(dim=1).numpy()
    assert np.array_equal(pixels, pooled)


def test_too_large_geometry_is_a_clear_error():
    with pytest.raises(ValueError, match="larger block_size"):
        radial_block_mask(50, 62500, block_size=16)
