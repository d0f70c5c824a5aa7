"""Train a small face-recognition model with the classifier's classes sharded over the
processes of a torch.distributed group.

    torchrun --standalone --nproc_per_node 2 examples/train_face_sharded.py

Synthetic identities: each has a fixed random centre in input space and its samples are
noisy copies of it. The backbone (an MLP) is replicated with DistributedDataParallel; the
ArcFace head (`tritonloss.distributed.ShardedMarginSoftmax`) holds 1/world of the classes
on each rank and stays outside DDP. On the CPU the backend is gloo and the head runs the
eager path (set TRITON_INTERPRET=1 to run the Triton kernels interpreted, slowly); with
`--backend nccl` each rank takes the GPU of its LOCAL_RANK and the head runs the kernels.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tritonloss.distributed import ShardedMarginSoftmax


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="gloo")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--dim", type=int, default=32, help="embedding size")
    p.add_argument("--sample-rate", type=float, default=1.0, help="Partial FC: fraction of each shard's classes")
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()

    dist.init_process_group(args.backend)
    rank = dist.get_rank()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same backbone and identity centres on every rank
    centres = torch.randn(args.classes, args.inputs, device=device)
    backbone = torch.nn.Sequential(torch.nn.Linear(args.inputs, 128), torch.nn.ReLU(),
                                   torch.nn.Linear(128, args.dim)).to(device)
    backbone = DistributedDataParallel(backbone)
    torch.manual_seed(1 + rank)  # each rank its own head shard and its own samples
    head = ShardedMarginSoftmax(args.dim, args.classes, scale=16.0, m2=0.2, sample_rate=args.sample_rate).to(device)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=args.lr, momentum=0.9)
    for step in range(args.steps):
        labels = torch.randint(0, args.classes, (args.batch,), device=device)
        inputs = centres[labels] + 0.5 * torch.randn(args.batch, args.inputs, device=device)
        loss = head(backbone(inputs), labels)  # the same loss of the whole gathered batch on every rank
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d} loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
