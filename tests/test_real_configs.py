"""Radial attention on the transformers of the released checkpoints (their hub configs, shrunk in depth and width:
``real_configs``), one forward call each, float32 on CPU:

- installed with every layer dense, the output equals the stock processors' exactly;
- sparse (block 16, no dense layer or step), every attention module runs sparse, the output is finite and equals the
  stock model's with each self-attention SDPA call restricted to the radial token mask (the reference), while it
  differs from the unmasked stock output;
- the latent token grid and text length radial attention reads from the call are the ones the config implies.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import transformer_cosmos, transformer_kandinsky

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from radial_diffusers.families import family_of
from real_configs import CASES, REAL, build


class _NearestResize:
    """Stands in for ``torchvision.transforms`` in Cosmos' forward: ``functional.resize`` with nearest interpolation
    of an ``(N, C, H, W)`` tensor, as torchvision computes it for tensors."""

    class InterpolationMode:
        NEAREST = "nearest"

    class functional:  # noqa: N801 - torchvision's name
        @staticmethod
        def resize(x, size, interpolation):
            assert interpolation == "nearest"
            return torch.nn.functional.interpolate(x, size=list(size), mode="nearest")


@pytest.mark.parametrize("case", list(CASES))
def test_released_config(case, monkeypatch):
    key, make_inputs, ((frames, height, width), text_tokens) = CASES[case]
    # Kandinsky 5's NABLA checkpoints: radial attention replaces NABLA (a flex-attention mask), so the stock reference
    # here is full attention over the same tiled token order
    monkeypatch.setattr(transformer_kandinsky, "nablaT_v2", lambda *args, **kwargs: None)
    # Cosmos resizes its padding mask with torchvision's nearest resize, where installed (not a dependency here)
    monkeypatch.setattr(transformer_cosmos, "transforms", _NearestResize, raising=False)
    torch.manual_seed(0)
    model = build(key)
    modules = family_of(model).attention_modules(model)
    inputs = make_inputs(model)

    @torch.no_grad()
    def forward() -> torch.Tensor:
        return model(**inputs)[0]  # the output's sample (Kandinsky 5 returns a bare tensor with return_dict=False)

    stock = forward()
    with pytest.warns(UserWarning, match="covers all .* attention layers"):
        rd.apply_radial_attention(model, rd.RadialConfig(dense_layers=999, dense_steps=0, block_size=16))
    try:
        all_dense = forward()
    finally:
        rd.remove_radial_attention(model)
    assert torch.equal(all_dense, stock), f"{REAL[key][0]}: all-dense radial differs from stock"

    state = rd.apply_radial_attention(model, rd.RadialConfig(dense_layers=0, dense_steps=0, block_size=16))
    try:
        sparse = forward()
    finally:
        rd.remove_radial_attention(model)
    assert tuple(state.geometry) == (frames, height, width) and state.text_tokens == text_tokens
    assert state.layout.seq_len == frames * height * width + text_tokens
    assert state.layout.density < 1 and set(state.sparse_calls) == {i for i, _ in modules}
    assert torch.isfinite(sparse).all()

    calls: list = []
    with sdpa_restricted_to(state.layout.token_mask(), self_attention_from=frames * height * width, calls=calls):
        reference = forward()
    # every radial module's self-attention took the reference mask (Mochi's stock processor: once per sample)
    assert len(calls) >= len(modules)
    scale = reference.abs().max()
    to_reference, to_stock = (sparse - reference).abs().max(), (sparse - stock).abs().max()
    assert to_reference <= 1e-4 * scale  # measured 2-5e-7 of the scale
    # the mask changed the output far beyond the rounding above, so the comparison can fail (smallest ratio ~4,600)
    assert to_stock > 100 * to_reference


def test_latent_geometry_pads_a_partial_temporal_patch_as_the_pipeline_does():
    """CogVideoX 1.5 (patch_size_t=2): ``CogVideoXPipeline`` pads 81 frames' 21 latent frames to 22, 11 tokens."""
    from types import SimpleNamespace

    from radial_diffusers.pipelines import latent_geometry

    pipe = SimpleNamespace(transformer=build("cogvideox1.5-5b"), vae_scale_factor_temporal=4,
                           vae_scale_factor_spatial=8)
    assert latent_geometry(pipe, 81, 768, 1360) == (11, 48, 85)
    assert latent_geometry(pipe, 85, 768, 1360) == (11, 48, 85)  # 22 latent frames: whole patches
    assert latent_geometry(pipe, 89, 768, 1360) == (12, 48, 85)
