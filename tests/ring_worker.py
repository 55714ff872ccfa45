"""Op-level ring attention on ``WORLD_SIZE`` gloo processes (torchrun): outputs and q / k / v gradients of
:func:`radial_diffusers.parallel.parallel_block_sparse_attention` against the single-process op, on an all-kept and
a sparse layout. Rank 0 saves ``{case: {"out" | "dq" | "dk" | "dv": relative error}}`` to ``argv[1]``; ``argv[2]``
(default 1): the Ulysses degree (unified Ulysses x ring with ``WORLD_SIZE / ULYSSES`` ring ranks).

    python -m torch.distributed.run --standalone --nproc_per_node 3 tests/ring_worker.py OUT.pt
    python -m torch.distributed.run --standalone --nproc_per_node 4 tests/ring_worker.py OUT.pt 2
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main(out_path: str, ulysses: int = 1) -> None:
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    import radial_diffusers as rd
    from radial_diffusers.layout import BlockLayout
    from radial_diffusers.parallel import parallel_block_sparse_attention

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    world, rank = dist.get_world_size(), dist.get_rank()
    ring = world // ulysses
    cp = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses)
    cp.setup(rank, world, torch.device("cpu"),
             init_device_mesh("cpu", (ring, ulysses), mesh_dim_names=("ring", "ulysses")))
    config = ParallelConfig(context_parallel_config=cp)
    block, seq = 16, 40 * world  # chunks of 40 tokens: they start mid-block
    n = -(-seq // block)
    results = {}
    for case in ("all-kept", "sparse"):
        g = torch.Generator().manual_seed(1)
        mask = torch.ones(n, n, dtype=torch.bool) if case == "all-kept" else (
            (torch.rand(n, n, generator=g) < 0.4) | torch.eye(n, dtype=torch.bool))
        layout = BlockLayout.from_block_mask(mask, block, seq)
        q, k, v, grad = (torch.randn(2, seq, 2, 8, generator=g) for _ in range(4))
        whole = [t.clone().requires_grad_(True) for t in (q, k, v)]
        want = rd.block_sparse_attention(*whole, layout, backend="torch")
        want.backward(grad)
        shard = [t.chunk(world, dim=1)[rank].clone().requires_grad_(True) for t in (q, k, v)]
        got = parallel_block_sparse_attention(*shard, layout, config, backend="torch")
        got.backward(grad.chunk(world, dim=1)[rank])
        errors = {}
        for name, local, reference in (("out", got.detach(), want.detach()),
                                       *((f"d{c}", s.grad, w.grad) for c, s, w in zip("qkv", shard, whole))):
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous())
            errors[name] = ((torch.cat(parts, dim=1) - reference).abs().max() / reference.abs().max()).item()
        results[case] = errors
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    # every rank is done and the results are saved: leave without tearing the gloo group down (its teardown at exit
    # has aborted a process now and then on a loaded 2-core machine, after the work)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
