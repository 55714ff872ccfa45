"""The transformer configs of the released hub checkpoints of every family, shrunk, with inputs for one forward call.

The tiny models (``radial_diffusers.tiny``) are configs we chose; these are the ones users load: each entry of
:data:`REAL` is ``(hub id, where the config was read, transformer class, config)``, the config as the checkpoint's
``transformer/config.json`` or Diffusers' conversion script (``scripts/convert_*_to_diffusers.py`` at Diffusers
58eb52c) gives it. :func:`shrink` cuts depth to 1-2 layers and heads to 2 (``attention_head_dim`` kept, so the RoPE
axes still sum to it) and the MLP; widths tied to the inner dim (``added_kv_proj_dim`` of Wan / SkyReels-V2
image-to-video, ``cross_attention_dim`` of LTX-Video) follow it. Everything that changes the geometry or the attention
layout is kept: patch sizes, channels, text widths and lengths, RoPE settings, sample sizes, QK norm, the
image-conditioning extras, ``inject_sample_info``, ``vace_in_channels`` (text lengths are the pipelines' own, except
HunyuanVideo-1.5's first encoder: 256 of its 1,000 tokens). :data:`CASES` pairs a config with inputs and the latent
token grid and text length radial attention must read from the call.
"""

from __future__ import annotations

import copy

import torch

D = "diffusers@58eb52c scripts/"

WAN_BASE = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, freq_dim=256,
                patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=4096, rope_max_seq_len=1024,
                pos_embed_seq_len=None, image_dim=None)
# The fields each family's released configs share (as WAN_BASE for Wan); the entries below add what differs.
HUNYUAN_BASE = dict(out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                    qk_norm="rms_norm", text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
                    rope_axes_dim=(16, 56, 56))
HUNYUAN15_BASE = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                      num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                      text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                      rope_axes_dim=(16, 56, 56), task_type="i2v", use_meanflow=False)
COGVIDEOX_5B_BASE = dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64,
                         max_text_seq_length=226, num_attention_heads=48, num_layers=42, out_channels=16,
                         patch_size=2, text_embed_dim=4096, time_embed_dim=512, use_rotary_positional_embeddings=True)
COGVIDEOX15_BASE = dict(COGVIDEOX_5B_BASE, patch_bias=False, patch_size_t=2, sample_frames=81, sample_height=300,
                        sample_width=300, use_learned_positional_embeddings=False)
LTX_BASE = dict(activation_fn="gelu-approximate", attention_bias=True, attention_out_bias=True, caption_channels=4096,
                in_channels=128, norm_elementwise_affine=False, norm_eps=1e-06, num_attention_heads=32,
                out_channels=128, patch_size=1, patch_size_t=1, qk_norm="rms_norm_across_heads")
REAL = {
    # Wan (convert_wan_to_diffusers.py get_transformer_config; A14B & VACE-14B also on the hub pages, identical)
    "wan2.1-t2v-1.3b": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", D + "convert_wan_to_diffusers.py 'Wan-T2V-1.3B'",
                        "WanTransformer3DModel",
                        dict(WAN_BASE, ffn_dim=8960, in_channels=16, num_attention_heads=12, num_layers=30,
                             out_channels=16)),
    "wan2.1-t2v-14b": ("Wan-AI/Wan2.1-T2V-14B-Diffusers", D + "convert_wan_to_diffusers.py 'Wan-T2V-14B'",
                       "WanTransformer3DModel",
                       dict(WAN_BASE, ffn_dim=13824, in_channels=16, num_attention_heads=40, num_layers=40,
                            out_channels=16)),
    "wan2.1-i2v-14b-480p": ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                            D + "convert_wan_to_diffusers.py 'Wan-I2V-14B-480p' (720p identical)",
                            "WanTransformer3DModel",
                            dict(WAN_BASE, image_dim=1280, added_kv_proj_dim=5120, ffn_dim=13824, in_channels=36,
                                 num_attention_heads=40, num_layers=40, out_channels=16)),
    "wan2.1-flf2v-14b-720p": ("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers (not in families.hub_ids)",
                              D + "convert_wan_to_diffusers.py 'Wan-FLF2V-14B-720P'", "WanTransformer3DModel",
                              dict(WAN_BASE, image_dim=1280, added_kv_proj_dim=5120, ffn_dim=13824, in_channels=36,
                                   num_attention_heads=40, num_layers=40, out_channels=16, pos_embed_seq_len=514)),
    "wan2.2-ti2v-5b": ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", D + "convert_wan_to_diffusers.py 'Wan2.2-TI2V-5B'",
                       "WanTransformer3DModel",
                       dict(WAN_BASE, ffn_dim=14336, in_channels=48, num_attention_heads=24, num_layers=30,
                            out_channels=48)),
    "wan2.2-t2v-a14b": ("Wan-AI/Wan2.2-T2V-A14B-Diffusers (transformer and transformer_2)",
                        D + "convert_wan_to_diffusers.py 'Wan2.2-T2V-A14B'; = hub transformer_2/config.json",
                        "WanTransformer3DModel",
                        dict(WAN_BASE, ffn_dim=13824, in_channels=16, num_attention_heads=40, num_layers=40,
                             out_channels=16)),
    "wan2.2-i2v-a14b": ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", D + "convert_wan_to_diffusers.py 'Wan2.2-I2V-14B-720p'",
                        "WanTransformer3DModel",
                        dict(WAN_BASE, ffn_dim=13824, in_channels=36, num_attention_heads=40, num_layers=40,
                             out_channels=16)),
    "wan2.1-vace-1.3b": ("Wan-AI/Wan2.1-VACE-1.3B-diffusers", D + "convert_wan_to_diffusers.py 'Wan-VACE-1.3B'",
                         "WanVACETransformer3DModel",
                         dict(WAN_BASE, ffn_dim=8960, in_channels=16, num_attention_heads=12, num_layers=30,
                              out_channels=16, vace_layers=list(range(0, 30, 2)), vace_in_channels=96)),
    "wan2.1-vace-14b": ("Wan-AI/Wan2.1-VACE-14B-diffusers",
                        D + "convert_wan_to_diffusers.py 'Wan-VACE-14B'; = hub mirror of transformer/config.json",
                        "WanVACETransformer3DModel",
                        dict(WAN_BASE, ffn_dim=13824, in_channels=16, num_attention_heads=40, num_layers=40,
                             out_channels=16, vace_layers=[0, 5, 10, 15, 20, 25, 30, 35], vace_in_channels=96)),
    # SkyReels-V2 (convert_skyreelsv2_to_diffusers.py)
    "skyreels-v2-df-1.3b-540p": ("Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
                                 D + "convert_skyreelsv2_to_diffusers.py 'SkyReels-V2-DF-1.3B-540P'",
                                 "SkyReelsV2Transformer3DModel",
                                 dict(WAN_BASE, ffn_dim=8960, in_channels=16, num_attention_heads=12,
                                      inject_sample_info=True, num_layers=30, out_channels=16)),
    "skyreels-v2-t2v-14b-540p": ("Skywork/SkyReels-V2-T2V-14B-540P-Diffusers (DF-14B identical)",
                                 D + "convert_skyreelsv2_to_diffusers.py 'SkyReels-V2-T2V-14B-540P'",
                                 "SkyReelsV2Transformer3DModel",
                                 dict(WAN_BASE, ffn_dim=13824, in_channels=16, num_attention_heads=40,
                                      inject_sample_info=False, num_layers=40, out_channels=16)),
    "skyreels-v2-i2v-1.3b-540p": ("Skywork/SkyReels-V2-I2V-1.3B-540P-Diffusers",
                                  D + "convert_skyreelsv2_to_diffusers.py 'SkyReels-V2-I2V-1.3B-540P'",
                                  "SkyReelsV2Transformer3DModel",
                                  dict(WAN_BASE, added_kv_proj_dim=1536, ffn_dim=8960, in_channels=36,
                                       num_attention_heads=12, inject_sample_info=False, num_layers=30,
                                       out_channels=16, image_dim=1280)),
    # HunyuanVideo (convert_hunyuan_video_to_diffusers.py TRANSFORMER_CONFIGS; T2V = hub config via RIFLEx mirror)
    "hunyuan-t2v": ("hunyuanvideo-community/HunyuanVideo",
                    D + "convert_hunyuan_video_to_diffusers.py 'HYVideo-T/2-cfgdistill'",
                    "HunyuanVideoTransformer3DModel",
                    dict(HUNYUAN_BASE, in_channels=16, guidance_embeds=True, image_condition_type=None)),
    "hunyuan-i2v-33ch": ("hunyuanvideo-community/HunyuanVideo-I2V",
                         D + "convert_hunyuan_video_to_diffusers.py 'HYVideo-T/2-I2V-33ch'",
                         "HunyuanVideoTransformer3DModel",
                         dict(HUNYUAN_BASE, in_channels=33, guidance_embeds=False,
                              image_condition_type="latent_concat")),
    "hunyuan-i2v-16ch": ("HunyuanVideo-I2V, the 16-channel token_replace variant",
                         D + "convert_hunyuan_video_to_diffusers.py 'HYVideo-T/2-I2V-16ch'",
                         "HunyuanVideoTransformer3DModel",
                         dict(HUNYUAN_BASE, in_channels=16, guidance_embeds=True,
                              image_condition_type="token_replace")),
    # HunyuanVideo-1.5 (convert_hunyuan_video1_5_to_diffusers.py: only target_size / task_type differ from the
    # class defaults; docs: HunyuanVideo15Transformer3DModel defaults)
    "hunyuan1.5-480p-t2v": ("hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
                            D + "convert_hunyuan_video1_5_to_diffusers.py '480p_t2v' (+ class defaults)",
                            "HunyuanVideo15Transformer3DModel",
                            dict(HUNYUAN15_BASE, target_size=640)),
    "hunyuan1.5-720p-i2v": ("hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_i2v",
                            D + "convert_hunyuan_video1_5_to_diffusers.py '720p_i2v' (+ class defaults)",
                            "HunyuanVideo15Transformer3DModel",
                            dict(HUNYUAN15_BASE, target_size=960)),
    # CogVideoX (hub config pages for 2b and 5b; convert_cogvideox_to_diffusers.py for I2V / 1.5)
    "cogvideox-2b": ("THUDM/CogVideoX-2b", "hub THUDM/CogVideoX-2b transformer/config.json (blame ad5ce86)",
                     "CogVideoXTransformer3DModel",
                     dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0,
                          flip_sin_to_cos=True, freq_shift=0, in_channels=16, max_text_seq_length=226,
                          norm_elementwise_affine=True, norm_eps=1e-05, num_attention_heads=30, num_layers=30,
                          out_channels=16, patch_size=2, sample_frames=49, sample_height=60, sample_width=90,
                          spatial_interpolation_scale=1.875, temporal_compression_ratio=4,
                          temporal_interpolation_scale=1.0, text_embed_dim=4096, time_embed_dim=512,
                          timestep_activation_fn="silu")),
    "cogvideox-5b": ("THUDM/CogVideoX-5b", "hub config (via thu-ml/CogVideoX-RIFLEx-diffusers copy of 5b 8fc5b28)",
                     "CogVideoXTransformer3DModel",
                     dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0,
                          flip_sin_to_cos=True, freq_shift=0, in_channels=16, max_text_seq_length=226,
                          norm_elementwise_affine=True, norm_eps=1e-05, num_attention_heads=48, num_layers=42,
                          ofs_embed_dim=None, out_channels=16, patch_bias=True, patch_size=2, patch_size_t=None,
                          sample_frames=49, sample_height=60, sample_width=90, spatial_interpolation_scale=1.875,
                          temporal_compression_ratio=4, temporal_interpolation_scale=1.0, text_embed_dim=4096,
                          time_embed_dim=512, timestep_activation_fn="silu", use_learned_positional_embeddings=False,
                          use_rotary_positional_embeddings=True)),
    "cogvideox-5b-i2v": ("THUDM/CogVideoX-5b-I2V",
                         D + "convert_cogvideox_to_diffusers.py --i2v --version 1.0 (5B: 42 layers, 48 heads, rope)",
                         "CogVideoXTransformer3DModel",
                         dict(COGVIDEOX_5B_BASE, in_channels=32, ofs_embed_dim=None, patch_bias=True,
                              patch_size_t=None, sample_frames=49, sample_height=60, sample_width=90,
                              use_learned_positional_embeddings=True)),
    "cogvideox1.5-5b": ("THUDM/CogVideoX1.5-5B",
                        D + "convert_cogvideox_to_diffusers.py --version 1.5 (5B: 42 layers, 48 heads, rope)",
                        "CogVideoXTransformer3DModel",
                        dict(COGVIDEOX15_BASE, in_channels=16, ofs_embed_dim=None)),
    "cogvideox1.5-5b-i2v": ("THUDM/CogVideoX1.5-5B-I2V (not in families.hub_ids)",
                            D + "convert_cogvideox_to_diffusers.py --i2v --version 1.5",
                            "CogVideoXTransformer3DModel",
                            dict(COGVIDEOX15_BASE, in_channels=32, ofs_embed_dim=512)),
    # LTX-Video (hub config pages; convert_ltx_to_diffusers.py get_transformer_config; 0.9.5 = the 0.9.0 transformer)
    "ltx-0.9.x": ("Lightricks/LTX-Video, LTX-Video-0.9.5",
                  "hub Lightricks/LTX-Video transformer/config.json (ac4a709); " + D + "convert_ltx_to_diffusers.py",
                  "LTXVideoTransformer3DModel",
                  dict(LTX_BASE, attention_head_dim=64, cross_attention_dim=2048, num_layers=28)),
    "ltx-0.9.7-dev": ("Lightricks/LTX-Video-0.9.7-dev",
                      "hub Lightricks/LTX-Video-0.9.7-dev transformer/config.json (refs/pr/3); " + D
                      + "convert_ltx_to_diffusers.py '0.9.7'",
                      "LTXVideoTransformer3DModel",
                      dict(LTX_BASE, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)),
    # LTX-2 (convert_ltx2_to_diffusers.py get_transformer_config '2.0', at diffusers 8d8a656)
    "ltx2": ("Lightricks/LTX-2", "diffusers@8d8a656 scripts/convert_ltx2_to_diffusers.py '2.0'",
             "LTX2VideoTransformer3DModel",
             dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                  attention_head_dim=128, cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20,
                  base_height=2048, base_width=2048, audio_in_channels=128, audio_out_channels=128,
                  audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=32, audio_attention_head_dim=64,
                  audio_cross_attention_dim=2048, audio_scale_factor=4, audio_pos_embed_max_pos=20,
                  audio_sampling_rate=16000, audio_hop_length=160, num_layers=48, activation_fn="gelu-approximate",
                  qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6,
                  caption_channels=3840, attention_bias=True, attention_out_bias=True, rope_theta=10000.0,
                  rope_double_precision=True, causal_offset=1, timestep_scale_multiplier=1000,
                  cross_attn_timestep_scale_multiplier=1000, rope_type="split")),
    # LTX-2.3: the 2.0 transformer with gated attention, cross-attention modulation and prompt AdaLN (no prompt
    # embeddings), and the perturbed processors of spatio-temporal guidance (a later convert_ltx2_to_diffusers.py,
    # version '2.3', model_id Lightricks/LTX-2.3)
    "ltx2.3": ("Lightricks/LTX-2.3", "convert_ltx2_to_diffusers.py '2.3' (a later revision than diffusers@8d8a656)",
               "LTX2VideoTransformer3DModel", None),
    # Mochi (hub genmo/mochi-1-preview refs/pr/27 transformer/config.json)
    "mochi-1-preview": ("genmo/mochi-1-preview", "hub genmo/mochi-1-preview transformer/config.json (raw refs/pr/27)",
                        "MochiTransformer3DModel",
                        dict(activation_fn="swiglu", attention_head_dim=128, in_channels=12, max_sequence_length=256,
                             num_attention_heads=24, num_layers=48, out_channels=None, patch_size=2,
                             pooled_projection_dim=1536, qk_norm="rms_norm", text_embed_dim=4096,
                             time_embed_dim=256)),
}

# Kandinsky 5.0 Video (the official repository's configs/*.yaml dit_params and attention, ai-forever/Kandinsky-5;
# Diffusers' Kandinsky5Transformer3DModel takes the same names, the attention settings as attention_*). The 5-second
# Lite checkpoints attend densely ("flash" there, "regular" in Diffusers), the 10-second Lite and the Pro ones with
# NABLA over 8 x 8 token tiles; the I2V checkpoints share their T2V siblings' transformer configs.
KANDINSKY5_LITE = dict(in_visual_dim=16, out_visual_dim=16, time_dim=512, patch_size=(1, 2, 2), model_dim=1792,
                       ff_dim=7168, num_text_blocks=2, num_visual_blocks=32, axes_dims=(16, 24, 24), visual_cond=True,
                       in_text_dim=3584, in_text_dim2=768)
KANDINSKY5_NABLA = dict(attention_type="nabla", attention_causal=False, attention_local=False, attention_glob=False,
                        attention_window=3, attention_wT=11, attention_wW=3, attention_wH=3, attention_add_sta=True,
                        attention_method="topcdf")
K5 = "ai-forever/Kandinsky-5 configs/"
REAL.update({
    "kandinsky5-lite-5s": ("kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers", K5 + "config_5s_sft.yaml",
                           "Kandinsky5Transformer3DModel", dict(KANDINSKY5_LITE, attention_type="regular")),
    "kandinsky5-lite-10s": ("kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers", K5 + "config_10s_sft.yaml",
                            "Kandinsky5Transformer3DModel", dict(KANDINSKY5_LITE, **KANDINSKY5_NABLA, attention_P=0.9)),
    "kandinsky5-pro-5s": ("kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers (I2V-Pro: the same transformer)",
                          K5 + "k5_pro_t2v_5s_sft_hd_parallel.yaml", "Kandinsky5Transformer3DModel",
                          dict(KANDINSKY5_LITE, time_dim=1024, model_dim=4096, ff_dim=16384, num_text_blocks=4,
                               num_visual_blocks=60, axes_dims=(32, 48, 48), **KANDINSKY5_NABLA, attention_P=0.8)),
})

# Cosmos (convert_cosmos_to_diffusers.py TRANSFORMER_CONFIGS): every released config concatenates the padding mask
COSMOS_BASE = dict(out_channels=16, attention_head_dim=128, mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256,
                   max_size=(128, 240, 240), patch_size=(1, 2, 2), concat_padding_mask=True)
COSMOS = D + "convert_cosmos_to_diffusers.py "
REAL.update({
    "cosmos-predict2-2b-v2w": ("nvidia/Cosmos-Predict2-2B-Video2World", COSMOS + "'Cosmos-2.0-Diffusion-2B-Video2World'",
                               "CosmosTransformer3DModel",
                               dict(COSMOS_BASE, in_channels=17, num_attention_heads=16, num_layers=28,
                                    rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None)),
    "cosmos-predict2-14b-v2w": ("nvidia/Cosmos-Predict2-14B-Video2World",
                                COSMOS + "'Cosmos-2.0-Diffusion-14B-Video2World'", "CosmosTransformer3DModel",
                                dict(COSMOS_BASE, in_channels=17, num_attention_heads=40, num_layers=36,
                                     rope_scale=(20 / 24, 2.0, 2.0), extra_pos_embed_type=None)),
    "cosmos-predict2.5-2b": ("nvidia/Cosmos-Predict2.5-2B (revision diffusers/base/post-trained; not in "
                             "families.hub_ids)", COSMOS + "'Cosmos-2.5-Predict-Base-2B'", "CosmosTransformer3DModel",
                             dict(COSMOS_BASE, in_channels=17, num_attention_heads=16, num_layers=28,
                                  rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None, use_crossattn_projection=True,
                                  crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024)),
    # the script's key is img_context_dim; the transformer's argument is img_context_dim_in (the image context's
    # width, SigLIP's 1152); the ControlNet feeds every 7th block
    "cosmos-transfer2.5-2b": ("nvidia/Cosmos-Transfer2.5-2B (not in families.hub_ids)",
                              COSMOS + "'Cosmos-2.5-Transfer-General-2B'", "CosmosTransformer3DModel",
                              dict(COSMOS_BASE, in_channels=17, num_attention_heads=16, num_layers=28,
                                   rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None,
                                   use_crossattn_projection=True, crossattn_proj_in_channels=100352,
                                   encoder_hidden_states_channels=1024, controlnet_block_every_n=7,
                                   img_context_dim_in=1152)),
    "cosmos-1.0-7b-t2w": ("nvidia/Cosmos-1.0-Diffusion-7B-Text2World (not in families.hub_ids)",
                          COSMOS + "'Cosmos-1.0-Diffusion-7B-Text2World'", "CosmosTransformer3DModel",
                          dict(COSMOS_BASE, in_channels=16, num_attention_heads=32, num_layers=28,
                               rope_scale=(2.0, 1.0, 1.0), extra_pos_embed_type="learnable")),
})

REAL["ltx2.3"] = (*REAL["ltx2.3"][:3], dict(REAL["ltx2"][3], gated_attn=True, cross_attn_mod=True,
                                              audio_gated_attn=True, audio_cross_attn_mod=True,
                                              use_prompt_embeddings=False, perturbed_attn=True))

HEADS = 2


def shrink(key: str) -> dict:
    hub, src, cls, cfg = REAL[key]
    cfg = copy.deepcopy(cfg)
    if cls == "Kandinsky5Transformer3DModel":  # heads = model_dim / head_dim, head_dim = sum(axes_dims)
        cfg.update(model_dim=HEADS * sum(cfg["axes_dims"]), ff_dim=256, num_text_blocks=1, num_visual_blocks=2)
        return cfg
    cfg["num_attention_heads"] = HEADS
    inner = HEADS * cfg["attention_head_dim"]
    if cls in ("WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel"):
        cfg.update(num_layers=2, ffn_dim=256)
        if cfg.get("added_kv_proj_dim"):
            cfg["added_kv_proj_dim"] = inner  # = inner dim in every real config (5120 = 40*128, 1536 = 12*128)
        if "vace_layers" in cfg:
            cfg["vace_layers"] = [0]
    elif cls == "HunyuanVideoTransformer3DModel":
        cfg.update(num_layers=1, num_single_layers=1, num_refiner_layers=1)
    elif cls == "HunyuanVideo15Transformer3DModel":
        cfg.update(num_layers=2, num_refiner_layers=1)
    elif cls == "CogVideoXTransformer3DModel":
        cfg.update(num_layers=2)
    elif cls == "LTXVideoTransformer3DModel":
        cfg.update(num_layers=2, cross_attention_dim=inner)  # = inner dim in both real configs
    elif cls == "MochiTransformer3DModel":
        cfg.update(num_layers=2)
    elif cls == "CosmosTransformer3DModel":
        cfg.update(num_layers=2)
        if cfg.get("use_crossattn_projection"):  # the text encoder's 28 layers x 3584 concatenated: a 100M Linear
            cfg["crossattn_proj_in_channels"] = 512
        if cfg.get("img_context_dim_in"):  # the image context is projected to the inner dim (2048 = 16 x 128)
            cfg["img_context_dim_out"] = inner
    elif cls == "LTX2VideoTransformer3DModel":
        # the cross-attention widths are the inner dims in the real config (4096 = 32*128, 2048 = 32*64)
        audio_inner = HEADS * cfg["audio_attention_head_dim"]
        cfg.update(num_layers=2, cross_attention_dim=inner, audio_num_attention_heads=HEADS,
                   audio_cross_attention_dim=audio_inner)
    return cfg


def build(key: str):
    """The shrunk transformer of ``REAL[key]``, fresh weights from torch's current seed, float32, eval mode."""
    import diffusers

    model = getattr(diffusers, REAL[key][2])(**shrink(key)).float().eval()
    if REAL[key][2] == "Kandinsky5Transformer3DModel":
        # zero-initialized modulation gates every attention's output to zero; trained ones are not zero
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "modulation" in name:
                    param.normal_(std=0.2)
    return model


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def rn(*shape, seed=0):
    """Standard normal of ``shape`` from a fixed seed (float32, CPU)."""
    return torch.randn(*shape, generator=_generator(seed))


# Input makers: ``maker(transformer) -> forward kwargs`` of one call at F latent frames of H x W (before patching).
def wan_inputs(F=7, H=16, W=20, text=512, image_tokens=None, per_token_t=False, vace=False, fps=None, df=False,
               batch=1, image_batch=1, nfpb=None):
    def make(t):
        c = t.config
        kw = dict(hidden_states=rn(batch, c.in_channels, F, H, W, seed=1),
                  encoder_hidden_states=rn(batch, text, c.text_dim, seed=2))
        p = c.patch_size
        if per_token_t:  # Wan2.2 TI2V expand_timesteps: (B, seq_len)
            seq = (F // p[0]) * (H // p[1]) * (W // p[2])
            ts = torch.full((batch, seq), 700.0)
            ts[:, : (H // p[1]) * (W // p[2])] = 0.0  # first frame clean (i2v mask)
            kw["timestep"] = ts
        elif df:
            kw["timestep"] = torch.linspace(900, 300, F).repeat(batch, 1)
            kw["enable_diffusion_forcing"] = True
        else:
            kw["timestep"] = torch.full((batch,), 700.0)
        if image_tokens:
            kw["encoder_hidden_states_image"] = rn(batch * image_batch, image_tokens, c.image_dim, seed=3)
        if nfpb is not None:  # what SkyReelsV2 DF pipelines do (_set_ar_attention(causal_block_size))
            t.register_to_config(num_frame_per_block=nfpb)
        if vace:
            kw["control_hidden_states"] = rn(batch, c.vace_in_channels, F, H, W, seed=4)
            kw["control_hidden_states_scale"] = torch.ones(len(c.vace_layers))
        if fps is not None:
            kw["fps"] = [fps] * batch
        return kw
    return make


def hunyuan_inputs(F=7, H=16, W=20, text=256, valid=(200, 150)):
    def make(t):
        c = t.config
        b = len(valid)
        mask = torch.zeros(b, text, dtype=torch.bool)
        for i, n in enumerate(valid):
            mask[i, :n] = True
        kw = dict(hidden_states=rn(b, c.in_channels, F, H, W, seed=1), timestep=torch.full((b,), 700.0),
                  encoder_hidden_states=rn(b, text, c.text_embed_dim, seed=2), encoder_attention_mask=mask,
                  pooled_projections=rn(b, c.pooled_projection_dim, seed=3))
        if c.guidance_embeds:
            kw["guidance"] = torch.full((b,), 6000.0)
        return kw
    return make


def hunyuan15_inputs(F=7, H=8, W=10, text=256, text2=256, image=729, valid=(200, 150), valid2=(30, 10), i2v=False):
    def make(t):
        c = t.config
        b = len(valid)
        m1 = torch.zeros(b, text, dtype=torch.long)
        m2 = torch.zeros(b, text2, dtype=torch.long)
        for i, (n1, n2) in enumerate(zip(valid, valid2)):
            m1[i, :n1] = 1
            m2[i, :n2] = 1
        img = rn(b, image, c.image_embed_dim, seed=5) if i2v else torch.zeros(b, image, c.image_embed_dim)
        return dict(hidden_states=rn(b, c.in_channels, F, H, W, seed=1), timestep=torch.full((b,), 700.0),
                    encoder_hidden_states=rn(b, text, c.text_embed_dim, seed=2), encoder_attention_mask=m1,
                    encoder_hidden_states_2=rn(b, text2, c.text_embed_2_dim, seed=3), encoder_attention_mask_2=m2,
                    image_embeds=img)
    return make


def cog_inputs(F=7, H=16, W=20, text=226, ofs=False):
    def make(t):
        c = t.config
        kw = dict(hidden_states=rn(1, F, c.in_channels, H, W, seed=1), timestep=torch.full((1,), 700),
                  encoder_hidden_states=rn(1, text, c.text_embed_dim, seed=2))
        if c.use_rotary_positional_embeddings:
            from types import SimpleNamespace

            from diffusers import CogVideoXPipeline

            fake = SimpleNamespace(vae_scale_factor_spatial=8, transformer=t)
            kw["image_rotary_emb"] = CogVideoXPipeline._prepare_rotary_positional_embeddings(
                fake, H * 8, W * 8, F, torch.device("cpu"))
        if ofs:
            kw["ofs"] = torch.full((1,), 2.0)
        return kw
    return make


def ltx_inputs(F=5, H=8, W=12, text=128, fps=25):
    def make(t):
        c = t.config
        latents = rn(1, c.in_channels, F, H, W, seed=1)
        packed = latents.permute(0, 2, 3, 4, 1).reshape(1, F * H * W, c.in_channels)  # LTXPipeline._pack_latents, p=1
        mask = torch.zeros(1, text, dtype=torch.long)
        mask[:, :90] = 1
        return dict(hidden_states=packed, encoder_hidden_states=rn(1, text, c.caption_channels, seed=2),
                    timestep=torch.full((1,), 700.0), encoder_attention_mask=mask, num_frames=F, height=H, width=W,
                    rope_interpolation_scale=(8 / fps, 32, 32))
    return make


def ltx2_inputs(F=5, H=8, W=12, text=128, audio=20, fps=24.0):
    def make(t):
        c = t.config
        latents = rn(1, c.in_channels, F, H, W, seed=1)
        packed = latents.permute(0, 2, 3, 4, 1).reshape(1, F * H * W, c.in_channels)  # LTX2Pipeline._pack_latents
        mask = torch.zeros(1, text, dtype=torch.long)
        mask[:, :90] = 1
        # without prompt embeddings (LTX-2.3) the connectors project the text to each stream's width themselves
        video_text, audio_text = ((c.caption_channels,) * 2 if c.use_prompt_embeddings
                                  else (c.cross_attention_dim, c.audio_cross_attention_dim))
        return dict(hidden_states=packed, audio_hidden_states=rn(1, audio, c.audio_in_channels, seed=3),
                    encoder_hidden_states=rn(1, text, video_text, seed=2),
                    audio_encoder_hidden_states=rn(1, text, audio_text, seed=4),
                    timestep=torch.full((1,), 700.0), audio_timestep=torch.full((1,), 700.0),
                    sigma=torch.full((1,), 700.0),  # LTX-2.3's prompt AdaLN; the pipelines pass sigma=timestep
                    encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=F, height=H, width=W,
                    fps=fps, audio_num_frames=audio)
    return make


def mochi_inputs(F=7, H=16, W=20, text=256, valid=(100, 40)):
    def make(t):
        c = t.config
        b = len(valid)
        mask = torch.zeros(b, text, dtype=torch.long)
        for i, n in enumerate(valid):
            mask[i, :n] = 1
        return dict(hidden_states=rn(b, c.in_channels, F, H, W, seed=1),
                    encoder_hidden_states=rn(b, text, c.text_embed_dim, seed=2), timestep=torch.full((b,), 700.0),
                    encoder_attention_mask=mask)
    return make


def kandinsky5_inputs(F=7, H=16, W=20, text=64, batch=1):
    """One call of ``Kandinsky5T2VPipeline``: channels-last latents (noise, and with ``visual_cond`` the condition
    latent and its mask), the RoPE positions and resolution scale it passes, and its ``sparse_params`` (made by the
    pipeline's own ``get_sparse_params``: ``None`` unless the config is NABLA's)."""
    def make(t):
        from types import SimpleNamespace

        from diffusers import Kandinsky5T2VPipeline

        c = t.config
        channels = 2 * c.in_visual_dim + 1 if c.visual_cond else c.in_visual_dim
        latents = rn(batch, F, H, W, channels, seed=1)
        pipe = SimpleNamespace(transformer=t, fast_sta_nabla=Kandinsky5T2VPipeline.fast_sta_nabla)
        return dict(hidden_states=latents, encoder_hidden_states=rn(batch, text, c.in_text_dim, seed=2),
                    pooled_projections=rn(batch, c.in_text_dim2, seed=3), timestep=torch.full((batch,), 700.0),
                    visual_rope_pos=[torch.arange(F), torch.arange(H // 2), torch.arange(W // 2)],
                    text_rope_pos=torch.arange(text), scale_factor=(1.0, 2.0, 2.0),
                    sparse_params=Kandinsky5T2VPipeline.get_sparse_params(pipe, latents, "cpu"))
    return make


def cosmos_inputs(F=7, H=16, W=20, text=512, given=0, fps=None, batch=1):
    """One call of a Cosmos pipeline: latents (with the condition-mask channel where the config has one: 1 on the
    ``given`` leading latent frames, which get a per-frame timestep of 0.0001 as video-to-world passes), the text
    (the projection's input width where the config projects it), the pixel-size padding mask and ``fps`` (Predict2
    passes one; Predict2.5 and 1.0's image path none); for Transfer2.5, the image context (256 tokens) with the text
    and a ControlNet residual for each block it feeds."""
    def make(t):
        c = t.config
        condition = c.in_channels == 17
        width = c.crossattn_proj_in_channels if c.use_crossattn_projection else c.text_embed_dim
        text_context = rn(batch, text, width, seed=2)
        if c.img_context_dim_in:
            text_context = (text_context, rn(batch, c.img_context_num_tokens, c.img_context_dim_in, seed=4))
        kw = dict(hidden_states=rn(batch, 16, F, H, W, seed=1), encoder_hidden_states=text_context,
                  padding_mask=torch.zeros(1, 1, 8 * H, 8 * W), fps=fps)
        if c.controlnet_block_every_n:
            inner = c.num_attention_heads * c.attention_head_dim
            fed = range(0, c.num_layers, c.controlnet_block_every_n)
            kw["block_controlnet_hidden_states"] = [0.1 * rn(batch, F * H * W // 4, inner, seed=5 + i) for i in fed]
        if condition:
            mask = torch.zeros(batch, 1, F, H, W)
            mask[:, :, :given] = 1
            kw["condition_mask"] = mask
            kw["timestep"] = torch.where(torch.arange(F) < given, 1e-4, 0.7).view(1, 1, F, 1, 1).repeat(batch, 1, 1, 1,
                                                                                                         1)
        else:
            kw["timestep"] = torch.full((batch,), 0.7)
        return kw
    return make


# name -> (REAL key, input maker, expected (geometry, text tokens))
CASES = {
    "wan2.1-t2v-1.3b": ("wan2.1-t2v-1.3b", wan_inputs(), ((7, 8, 10), 0)),
    "wan2.1-t2v-14b": ("wan2.1-t2v-14b", wan_inputs(), ((7, 8, 10), 0)),
    "wan2.1-i2v-14b": ("wan2.1-i2v-14b-480p", wan_inputs(image_tokens=257), ((7, 8, 10), 0)),
    "wan2.1-flf2v-14b": ("wan2.1-flf2v-14b-720p", wan_inputs(image_tokens=257, image_batch=2), ((7, 8, 10), 0)),
    "wan2.2-ti2v-5b": ("wan2.2-ti2v-5b", wan_inputs(), ((7, 8, 10), 0)),
    "wan2.2-ti2v-5b-pertoken-t": ("wan2.2-ti2v-5b", wan_inputs(per_token_t=True), ((7, 8, 10), 0)),
    "wan2.2-t2v-a14b": ("wan2.2-t2v-a14b", wan_inputs(), ((7, 8, 10), 0)),
    "wan2.2-i2v-a14b": ("wan2.2-i2v-a14b", wan_inputs(), ((7, 8, 10), 0)),
    "wan2.1-vace-1.3b": ("wan2.1-vace-1.3b", wan_inputs(vace=True), ((7, 8, 10), 0)),
    "wan2.1-vace-14b": ("wan2.1-vace-14b", wan_inputs(vace=True), ((7, 8, 10), 0)),
    "skyreels-v2-df-1.3b": ("skyreels-v2-df-1.3b-540p", wan_inputs(fps=1), ((7, 8, 10), 0)),
    "skyreels-v2-df-1.3b-dfmode": ("skyreels-v2-df-1.3b-540p", wan_inputs(fps=1, df=True), ((7, 8, 10), 0)),
    "skyreels-v2-df-1.3b-causal2-aligned": ("skyreels-v2-df-1.3b-540p", wan_inputs(F=8, fps=1, df=True, nfpb=2),
                                            ((8, 8, 10), 0)),
    "skyreels-v2-df-1.3b-causal2-unaligned": ("skyreels-v2-df-1.3b-540p",
                                              wan_inputs(F=8, H=14, fps=1, df=True, nfpb=2), ((8, 7, 10), 0)),
    "skyreels-v2-df-14b-causal5-batch2": ("skyreels-v2-t2v-14b-540p", wan_inputs(F=10, H=14, df=True, nfpb=5, batch=2),
                                          ((10, 7, 10), 0)),
    "skyreels-v2-t2v-14b": ("skyreels-v2-t2v-14b-540p", wan_inputs(), ((7, 8, 10), 0)),
    "skyreels-v2-i2v-1.3b": ("skyreels-v2-i2v-1.3b-540p", wan_inputs(image_tokens=257), ((7, 8, 10), 0)),
    "hunyuan-t2v": ("hunyuan-t2v", hunyuan_inputs(), ((7, 8, 10), 256)),
    "hunyuan-i2v-33ch": ("hunyuan-i2v-33ch", hunyuan_inputs(), ((7, 8, 10), 256)),
    "hunyuan-i2v-16ch-token-replace": ("hunyuan-i2v-16ch", hunyuan_inputs(), ((7, 8, 10), 256)),
    "hunyuan1.5-480p-t2v": ("hunyuan1.5-480p-t2v", hunyuan15_inputs(), ((7, 8, 10), 256 + 256 + 729)),
    "hunyuan1.5-720p-i2v": ("hunyuan1.5-720p-i2v", hunyuan15_inputs(i2v=True), ((7, 8, 10), 256 + 256 + 729)),
    "cogvideox-2b": ("cogvideox-2b", cog_inputs(), ((7, 8, 10), 226)),
    "cogvideox-5b": ("cogvideox-5b", cog_inputs(), ((7, 8, 10), 226)),
    "cogvideox-5b-i2v": ("cogvideox-5b-i2v", cog_inputs(F=4, H=60, W=90), ((4, 30, 45), 226)),
    "cogvideox-5b-i2v-13f": ("cogvideox-5b-i2v", cog_inputs(F=13, H=60, W=90), ((13, 30, 45), 226)),
    "cogvideox1.5-5b": ("cogvideox1.5-5b", cog_inputs(F=8), ((4, 8, 10), 226)),
    "cogvideox1.5-5b-i2v": ("cogvideox1.5-5b-i2v", cog_inputs(F=8, ofs=True), ((4, 8, 10), 226)),
    "ltx-0.9.x": ("ltx-0.9.x", ltx_inputs(), ((5, 8, 12), 0)),
    "ltx-0.9.7-dev": ("ltx-0.9.7-dev", ltx_inputs(), ((5, 8, 12), 0)),
    "ltx2": ("ltx2", ltx2_inputs(), ((5, 8, 12), 0)),
    "ltx2.3": ("ltx2.3", ltx2_inputs(), ((5, 8, 12), 0)),
    "mochi-1-preview": ("mochi-1-preview", mochi_inputs(), ((7, 8, 10), 256)),
    "kandinsky5-lite-5s": ("kandinsky5-lite-5s", kandinsky5_inputs(), ((7, 8, 10), 0)),
    # NABLA: 16 x 24 tokens a frame in 2 x 3 tiles of 8 x 8
    "kandinsky5-lite-10s-nabla": ("kandinsky5-lite-10s", kandinsky5_inputs(F=5, H=32, W=48, batch=2),
                                  ((5, 16, 24), 0)),
    "kandinsky5-pro-5s-nabla": ("kandinsky5-pro-5s", kandinsky5_inputs(F=5, H=32, W=48), ((5, 16, 24), 0)),
    "cosmos-predict2-2b-v2w": ("cosmos-predict2-2b-v2w", cosmos_inputs(given=2, fps=16), ((7, 8, 10), 0)),
    "cosmos-predict2-14b-v2w-batch2": ("cosmos-predict2-14b-v2w", cosmos_inputs(given=1, fps=16, batch=2),
                                       ((7, 8, 10), 0)),
    "cosmos-predict2.5-2b-t2w": ("cosmos-predict2.5-2b", cosmos_inputs(), ((7, 8, 10), 0)),
    "cosmos-transfer2.5-2b": ("cosmos-transfer2.5-2b", cosmos_inputs(given=1), ((7, 8, 10), 0)),
    "cosmos-1.0-7b-t2w": ("cosmos-1.0-7b-t2w", cosmos_inputs(fps=24), ((7, 8, 10), 0)),
}
