"""Train a small MLP with DistributedDataParallel and a gradient compressor; print loss, bytes and step time.

    torchrun --nproc-per-node 4 examples/train_ddp.py --compressor tnq --bits 3          # torchrun
    python examples/train_ddp.py --nproc 2 --compressor tnq --bits 3 --steps 50           # spawns 2 local ranks
    torchrun --nproc-per-node 8 examples/train_ddp.py --backend nccl --compressor tnq --scheme two_phase

Compressors: none (fp32 all-reduce), fp16 (torch's fp16_compress_hook), and tnq/tqsgd/nqsgd/qsgd (the
tnq_kernels.ddp hook with that codebook). The data is synthetic (a fixed random teacher network, each rank its own
inputs), so nothing is downloaded. "wire" is the per-rank bytes of one step under ring algorithms (for tnq: the
hook's own statistics, ``TNQState.last_bytes_sent``), next to what an fp32 all-reduce of the same gradients sends.
"""
import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

COMPRESSORS = ("none", "fp16", "tnq", "tqsgd", "nqsgd", "qsgd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="torch.distributed backend")
    p.add_argument("--compressor", choices=COMPRESSORS, default="tnq")
    p.add_argument("--bits", type=int, default=3, help="bits per gradient element (tnq codebooks)")
    p.add_argument("--scheme", choices=("auto", "allgather", "two_phase"), default="auto")
    p.add_argument("--block-size", type=int, default=2048, help="elements per fp32 scale (0: one per bucket)")
    p.add_argument("--error-feedback", action="store_true")
    p.add_argument("--warmup-steps", type=int, default=0, help="first steps with uncompressed all-reduce")
    p.add_argument("--tnq-backend", choices=("auto", "reference", "triton"), default=None,
                   help="tnq_kernels backend (default: TNQ_BACKEND or auto)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1, help="print a line every N steps (0: only the summary)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank on CPU (0: cores / ranks)")
    p.add_argument("--nproc", type=int, default=2, help="ranks to spawn when not started by torchrun")
    return p.parse_args(argv)


def build_model(width: int, depth: int) -> torch.nn.Module:
    layers, d_in = [], 32
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(d_in, width), torch.nn.GELU()]
        d_in = width
    layers.append(torch.nn.Linear(d_in, 10))
    return torch.nn.Sequential(*layers)


def register(net: DDP, args):
    """Attach the chosen hook; returns the TNQState for tnq compressors, else None."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    if args.compressor == "fp16":
        net.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.compressor != "none":
        from tnq_kernels import ddp as tnq_ddp
        state = tnq_ddp.TNQState(bits=args.bits, block_size=args.block_size, codebook=args.compressor,
                                 scheme=args.scheme, seed=args.seed, error_feedback=args.error_feedback,
                                 warmup_steps=args.warmup_steps, backend=args.tnq_backend)
        net.register_comm_hook(state, tnq_ddp.tnq_hook)
        return state
    return None


def wire_bytes(args, state, n_params: int, world: int) -> tuple[int, int]:
    """(bytes this rank sent in the last step, bytes of an fp32 ring all-reduce of the same gradients)."""
    fp32 = 2 * (world - 1) * 4 * n_params // world
    if state is not None:
        return state.last_bytes_sent, fp32
    return (fp32 // 2 if args.compressor == "fp16" else fp32), fp32


def train(rank: int, world: int, local_rank: int, args) -> None:
    if args.backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(args.seed)
    model = build_model(args.width, args.depth).to(device)
    teacher = build_model(64, 2).to(device)
    net = DDP(model, bucket_cap_mb=args.bucket_mb, device_ids=[local_rank] if args.backend == "nccl" else None)
    state = register(net, args)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device=device).manual_seed(1000 + rank)

    bar = None
    if rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, desc=f"{args.compressor} x{world}", unit="step", file=sys.stderr)
        bar.write(f"world {world}, backend {args.backend}, {n_params / 1e6:.2f}M parameters, compressor "
                  f"{args.compressor}" + (f" {args.bits} bits, scheme {state.scheme_for(world)}" if state else ""))
    times, loss = [], torch.zeros(1, device=device)
    for step in range(args.steps):
        x = torch.randn(args.batch, 32, generator=gen, device=device)
        with torch.no_grad():
            y = teacher(x).argmax(1)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        avg = loss.detach().reshape(1) / world
        dist.all_reduce(avg)
        sent, fp32 = wire_bytes(args, state, n_params, world)
        if bar is not None:
            bar.set_postfix(loss=f"{avg.item():.4f}", wire_kB=f"{sent / 1e3:.1f}", ms=f"{1e3 * dt:.1f}")
            if args.log_every and (step % args.log_every == 0 or step + 1 == args.steps):
                bar.write(f"step {step:5d}  loss {avg.item():.4f}  wire {sent / 1e3:10.1f} kB/rank "
                          f"(fp32 all-reduce {fp32 / 1e3:.1f} kB, x{fp32 / max(sent, 1):.1f})  {1e3 * dt:7.1f} ms")
            bar.update(1)
    if bar is not None:
        bar.close()
        med = sorted(times)[len(times) // 2]
        total = state.bytes_sent if state is not None else wire_bytes(args, None, n_params, world)[0] * args.steps
        print(f"done: final loss {avg.item():.4f}, median step {1e3 * med:.1f} ms, "
              f"{total / 1e6:.2f} MB sent per rank in {args.steps} steps")


def _worker(local_rank: int, world: int, port: int, args) -> None:
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=local_rank,
                            world_size=world)
    try:
        train(local_rank, world, local_rank, args)
        dist.barrier()  # every rank is done before any tears its connections down
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
