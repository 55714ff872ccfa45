"""Runs the context-parallel cases of ``tests/test_parallel.py`` on one process, or as a torchrun worker (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/parallel_worker.py OUT.pt 2x1 1x2 1x2c \
        [--latent] [--only=tiny-wan,tiny-hunyuan]

Each ``UxR`` argument is a Ulysses x ring configuration; every rank runs every case (the same seeds) of every
``multi-gpu`` family, and rank 0 saves the results to ``OUT.pt``; a ``UxRc`` argument runs the :data:`COMPILED`
families with their transformer blocks compiled, a ``UxRa`` argument :func:`anything_case` (Diffusers' uneven
modes); ``--latent`` compares the denoised latents instead of the videos; ``--only`` runs those tiny models
instead of every family's. :func:`run_case` with ``parallel=None``
gives the single-process reference.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import radial_diffusers as rd  # noqa: E402
from radial_diffusers.families import get_tiny  # noqa: E402
from radial_diffusers.tiny import load_tiny  # noqa: E402
from tiny_calls import call_kwargs  # noqa: E402



def subjects() -> list[str]:
    """The tiny model of every family and variant whose registry features include ``"multi-gpu"``."""
    from radial_diffusers.families import families

    names = []
    for family in families():
        if "multi-gpu" in family.features:
            names.append(family.tiny[0].name)
        names += [v.tiny for v in family.variants if "multi-gpu" in v.features]
    return names


# + SkyReels-V2 diffusion forcing: its per-token modulation, split at every block, and its per-frame timesteps;
# + Cosmos 1.0: its learnable position embedding, split where it is made, and its per-sample modulation, kept whole
FAMILIES = tuple(subjects()) + ("tiny-skyreels-v2-df", "tiny-cosmos1")
#: The families a ``UxRc`` mode runs, their transformer's blocks compiled (Diffusers' regional compilation; the
#: ``aot_eager`` backend keeps it short on CPU): a pipeline call through the compiled torch.cond branches.
COMPILED = ("tiny-wan",)
#: Pipelines that round their video to 8 bits (Cosmos', for their guardrail): float noise between the
#: runs (~1e-6) flips a level, so their denoised latents are compared instead.
EIGHT_BIT = ("tiny-cosmos1", "tiny-cosmos2", "tiny-cosmos2.5")
# Step 0 dense (dense_steps=1), step 1 sparse: a two-step pipeline call runs both branches.
CONFIG = dict(block_size=16, dense_steps=1, dense_layers=0)


def _pipe_call(pipe, name: str) -> dict:
    """Two steps at 17 frames, 4x4 tokens per latent frame: 80 tokens, split unevenly into blocks of 16 by two
    ring ranks (a key chunk starting mid-block)."""
    kwargs = call_kwargs(pipe, name, batch=1, cfg=False)
    spatial = next(getattr(pipe, n) for n in ("vae_scale_factor_spatial", "vae_spatial_scale_factor",  # Mochi's
                                              "vae_spatial_compression_ratio") if hasattr(pipe, n))  # LTX's
    side = 4 * 2 * spatial  # the tiny Wan and Mochi transformers' patch is 2 (HunyuanVideo's and LTX's 1: 8x8 tokens)
    kwargs.update(num_frames=17)
    if name == "tiny-skyreels-v2-df":  # asynchronous: each latent frame one step behind the last (other timesteps)
        kwargs.update(ar_step=1)
    if "height" in inspect.signature(pipe.__call__).parameters:  # HunyuanVideo-1.5 I2V: the image's size
        kwargs.update(height=side, width=side)
    return dict(prompt="a red circle moving right", num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs)


class _Capture:
    """A forward pre-hook keeping the transformer's inputs of the last call (the whole inputs: it runs before
    Diffusers' context-parallel split)."""

    def __init__(self, transformer):
        self.call = None
        self.handle = transformer.register_forward_pre_hook(self, with_kwargs=True, prepend=True)

    def __call__(self, module, args, kwargs):
        self.call = (args, dict(kwargs))


def _grads(transformer, call, lora_targets, replicated=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, the parameter gradients and the LoRA gradients (each summed over the ranks, each of which
    back-propagates its shard) of a loss on the transformer's output for the captured call, after adding a LoRA on
    the family's targets, A and B both random (seeded: every rank and the single process get the same adapter), so
    that both get gradients. Parameters of the modules matching ``replicated`` (the family's ``cp_replicated``,
    whose gradients are whole on every rank) are left out."""
    import re

    from peft import LoraConfig

    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=lora_targets, init_lora_weights=False))
    args, kwargs = call
    transformer.requires_grad_(True)
    kwargs = dict(kwargs, return_dict=False)
    out = transformer(*args, **kwargs)[0]
    out.square().mean().backward()
    named = [(n, p.grad) for n, p in transformer.named_parameters() if p.grad is not None
             and not any(re.fullmatch(r, n.rpartition(".")[0]) for r in replicated)]
    grads = torch.cat([g.flatten() for _, g in named])
    lora = torch.cat([g.flatten() for n, g in named if ".lora_" in n])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(grads)
        torch.distributed.all_reduce(lora)
    transformer.zero_grad(set_to_none=True)
    transformer.requires_grad_(False)
    return out.detach(), grads, lora


def run_case(name: str, parallel: tuple[int, int] | None, radial_first: bool = False, compiled: bool = False,
             latent: bool = False) -> dict:
    """Frames of a two-step pipeline call (a dense and a sparse step), the transformer's output and gradients at a
    sparse step, and its output after ``remove_radial_attention`` (not under ring attention: Diffusers' stock ring
    attention refuses the native backend, the only one on CPU); under ``parallel = (ulysses, ring)``
    (``enable_parallelism`` before or after ``apply_radial_attention``) or on one process (``None``)."""
    pipe = load_tiny(name)
    if name.startswith("tiny-hunyuan1.5"):  # a joint text of 27 tokens, 1 less: the parallel runs pad it to 28
        pipe.tokenizer_max_length -= 1
    config = rd.RadialConfig(**CONFIG)

    def enable():
        if parallel is not None:
            rd.enable_context_parallelism(pipe, ulysses=parallel[0], ring=parallel[1])

    if radial_first:
        state = rd.apply_radial_attention(pipe, config)
        enable()
    else:
        enable()
        state = rd.apply_radial_attention(pipe, config)
    if compiled:  # the dense / sparse branch is a torch.cond; not fullgraph: Diffusers' split hook logs a warning
        pipe.transformer.compile_repeated_blocks(backend="aot_eager")
    capture = _Capture(pipe.transformer)  # the last denoising call: step 1 of 2, a sparse step
    if latent or name in EIGHT_BIT:  # the denoised latents (no VAE decode, which every rank would repeat)
        frames = pipe(**dict(_pipe_call(pipe, name), output_type="latent")).frames[0].float()
    else:
        frames = torch.from_numpy(pipe(**_pipe_call(pipe, name)).frames[0])
    capture.handle.remove()
    call = capture.call
    calls = None if compiled else (dict(state.sparse_calls), dict(state.dense_calls))  # eager mode counts them
    if compiled:  # the video only (one compilation): compiled gradients under context parallelism are refused
        out = grads = lora = None
    else:
        family = get_tiny(name)[0]
        out, grads, lora = _grads(pipe.transformer, call, family.lora_targets, family.cp_replicated)
    rd.remove_radial_attention(pipe)
    stock = None
    # Diffusers' stock ring attention needs a GPU backend (log-sum-exp); a joint text + video family's stock
    # processor cannot run on its shards (a video chunk and a text chunk), nor Cosmos' (no parallel config)
    if (parallel is None or parallel[1] == 1) and get_tiny(name)[0].stock_runs_parallel and not compiled:
        args, kwargs = call
        stock = pipe.transformer(*args, **dict(kwargs, return_dict=False))[0]
    def plain(t):  # a gathered output may still be an AsyncCollectiveTensor, which torch.load refuses
        return None if t is None else torch.from_numpy(t.detach().float().numpy().copy())

    return {"frames": frames, "out": plain(out), "grads": plain(grads), "lora": plain(lora), "stock": plain(stock),
            "calls": calls}


def anything_case(ulysses: int, ring: int, seq: int = 331) -> dict:
    """Our op under Diffusers' uneven modes (``ulysses_anything`` / ``ring_anything``; forward only: Diffusers has
    no backward for them): a ``seq``-token sequence (``tensor_split`` into unequal shards, as Diffusers' sharder
    does) through :func:`~radial_diffusers.parallel.parallel_block_sparse_attention`, every rank's rows gathered,
    and the single-process op's output (``"got"``, ``"want"``). Op-level: Diffusers' own uneven all-gather of a
    model's output needs equal sizes on gloo."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    from radial_diffusers.layout import BlockLayout
    from radial_diffusers.parallel import parallel_block_sparse_attention

    cp = ContextParallelConfig(ulysses_degree=ulysses if ulysses > 1 else None,
                               ring_degree=ring if ring > 1 else None, ulysses_anything=ulysses > 1,
                               ring_anything=ring > 1)
    cp.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"),
             init_device_mesh("cpu", (ring, ulysses), mesh_dim_names=("ring", "ulysses")))
    g = torch.Generator().manual_seed(3)
    blocks = -(-seq // 16)
    mask = (torch.rand(blocks, blocks, generator=g) < 0.4) | torch.eye(blocks, dtype=torch.bool)
    layout = BlockLayout.from_block_mask(mask, 16, seq_len=seq)
    q, k, v = (torch.randn(2, seq, 2, 8, generator=g) for _ in range(3))
    parts, index = ulysses * ring, dist.get_rank(cp._flattened_mesh.get_group())
    local = [t.tensor_split(parts, dim=1)[index] for t in (q, k, v)]
    out = parallel_block_sparse_attention(*local, layout, ParallelConfig(context_parallel_config=cp), backend="torch")
    rows = [None] * parts
    dist.all_gather_object(rows, out, group=cp._flattened_mesh.get_group())
    return {"got": torch.cat(rows, dim=1), "want": rd.block_sparse_attention(q, k, v, layout, backend="torch")}


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    latent = "--latent" in argv
    only = [a.removeprefix("--only=").split(",") for a in argv if a.startswith("--only=")]
    out_path, *modes = [a for a in argv if a != "--latent" and not a.startswith("--only=")]
    subjects = only[0] if only else FAMILIES
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {}
    for mode in modes:
        if mode.endswith("a"):  # the uneven modes, op-level
            u, r = (int(v) for v in mode[:-1].split("x"))
            results[("anything", u, r, False)] = anything_case(u, r)
            continue
        compiled = mode.endswith("c")
        u, r = (int(v) for v in mode.rstrip("c").split("x"))
        for name in (COMPILED if compiled else subjects):
            results[(name, u, r, compiled)] = run_case(name, (u, r), radial_first=(u + r + len(name)) % 2 == 0,
                                                       compiled=compiled, latent=latent)
    if dist.get_rank() == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
