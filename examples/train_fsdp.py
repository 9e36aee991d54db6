"""Train a small transformer-style MLP stack sharded with FSDP2 (fully_shard) and the tnq compressed reduce-scatter.

    torchrun --nproc-per-node 4 examples/train_fsdp.py --bits 3                     # torchrun (flat mode)
    torchrun --nnodes 2 --nproc-per-node 8 ... examples/train_fsdp.py --hierarchical  # node_size = LOCAL_WORLD_SIZE
    python examples/train_fsdp.py --nproc 2 --bits 3 --steps 20                       # spawns 2 local gloo ranks
    python examples/train_fsdp.py --nproc 2 --compressor none                         # FSDP2's own reduce-scatter

The data is synthetic (a fixed random teacher, each rank its own inputs). Each step prints the loss and the bytes
this rank sent in its reduce-scatters (tnq_kernels.fsdp's statistics), next to what FSDP2's fp32 reduce-scatter of
the same gradients sends.
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="torch.distributed backend")
    p.add_argument("--compressor", choices=("tnq", "none"), default="tnq",
                   help="tnq: compress_reduce_scatter with the default codebook; none: FSDP2's own reduce-scatter")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--hierarchical", action="store_true",
                   help="node_size = LOCAL_WORLD_SIZE: uncompressed inside a node, compressed across nodes")
    p.add_argument("--error-feedback", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=2, help="ranks to spawn when not started by torchrun")
    return p.parse_args(argv)


class Block(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.fc1, self.fc2 = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


def build_model(width: int, layers: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(32, width), *[Block(width) for _ in range(layers)],
                               torch.nn.Linear(width, 10))


def train(rank: int, world: int, local_rank: int, args) -> None:
    device = torch.device("cuda", local_rank) if args.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(args.seed)
    model = build_model(args.width, args.layers).to(device)
    teacher = build_model(64, 1).to(device)
    for block in model[1:-1]:
        fully_shard(block)
    fully_shard(model)
    state = None
    if args.compressor == "tnq":
        import tnq_kernels.fsdp as tnq_fsdp
        node = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if args.hierarchical else None
        state = tnq_fsdp.compress_reduce_scatter(model, bits=args.bits, seed=args.seed, node_size=node,
                                                 error_feedback=args.error_feedback)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(1000 + rank)
    n_params = sum(p.numel() for p in model.parameters())  # the full (unsharded) count: DTensor numel
    fp32 = (world - 1) * 4 * n_params // world  # FSDP2's fp32 ring reduce-scatter, per rank, per step (unpadded)
    for step in range(args.steps):
        x = torch.randn(args.batch, 32, generator=gen, device=device)
        with torch.no_grad():
            y = teacher(x).argmax(1)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        avg = loss.detach().reshape(1) / world
        dist.all_reduce(avg)
        if rank == 0 and (step % 10 == 0 or step + 1 == args.steps):
            sent = state.stats()["last_bytes_sent"] if state is not None else fp32
            print(f"step {step:4d}  loss {avg.item():.4f}  sent {sent / 1e3:9.1f} kB/rank "
                  f"(fp32 reduce-scatter {fp32 / 1e3:.1f} kB, x{fp32 / max(sent, 1):.1f})", flush=True)
    if rank == 0:
        total = state.bytes_sent if state is not None else fp32 * args.steps
        print(f"done: final loss {avg.item():.4f}, {total / 1e6:.2f} MB sent per rank in {args.steps} steps")


def _worker(local_rank: int, world: int, port: int, args) -> None:
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=local_rank,
                            world_size=world)
    try:
        train(local_rank, world, local_rank, args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        dist.init_process_group(args.backend)
        try:
            train(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), args)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.nproc, port, args), nprocs=args.nproc, join=True)


if __name__ == "__main__":
    main()
