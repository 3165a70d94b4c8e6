"""Which blocks and channels LC-Net's gates keep, per input, on CIFAR-10 holdout images.

    python benchmarks/lcnet_gates.py lnet_resnet20.cifar10 cnet_resnet20.cifar10 [RUN_DIR ...] \
        --data-dir ../shared/data > benchmarks/lcnet_gates.txt

For each residual block: the share of inputs that execute it (L-Net) and its mean branch
scale; the mean share of inner channels kept (C-Net) and how many distinct keep-masks the
images produce. One distinct pattern per block means the gates are input-independent:
a static pruning, whatever the thresholds.
"""
import argparse

import torch

from anycost.data import BatchLoader, load_dataset
from anycost.eval import OperatingPoint
from anycost.zoo import resolve_model

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("models", nargs="+", help="zoo names, checkpoints or run folders")
ap.add_argument("--data-dir", default="../shared/data")
ap.add_argument("-n", type=int, default=1000, help="holdout images to look at")
ap.add_argument("--tau", type=float, default=0.5, help="keep threshold on the gate probabilities")
args = ap.parse_args()
torch.set_num_threads(1)
sd = load_dataset("cifar10", args.data_dir)
thr = torch.logit(torch.tensor(args.tau)).item()
for spec in args.models:
    m = resolve_model(spec)
    meta = m.pretrained_cfg
    seen = []  # (predictor, output) per block, in execution order
    hooks = [p.register_forward_hook(lambda mod, i, o: seen.append((mod, o))) for p in m.predictors]
    x, y = next(iter(BatchLoader(sd.get("holdout"), args.n, meta.get("mean", sd.mean), meta.get("std", sd.std))))
    with torch.no_grad():
        out = m.infer(x, OperatingPoint("t", {"tau": args.tau}))  # x: (n, 3, 32, 32)
    for h in hooks:
        h.remove()
    acc = 100 * (out.logits.argmax(1) == y).float().mean().item()
    print(f"{spec}: {acc:.2f} % on {len(y)} holdout images, {out.macs.mean().item() / 1e6:.2f} M MACs (tau {args.tau})")
    for b, (mod, o) in enumerate(seen):
        ll, ls, cl, cs = mod.split(o)
        s = f"  block {b + 1}:"
        if ll is not None:
            s += f" executed by {100 * (ll > thr).float().mean():5.1f} % of inputs, branch scale {ls.mean():.2f}"
        if cl is not None:
            k = cl > thr  # (n, C)
            s += f" | channels kept {100 * k.float().mean():5.1f} %, distinct masks {torch.unique(k, dim=0).shape[0]}"
        print(s)
