"""Reference values for the training engine's numerics (tests/fixtures/train/reference.json):
torch.optim.AdamW with a no-decay group, open_clip's ClipLoss, open_clip_train's cosine
schedule, torch's clip_grad_norm_.

Run: $(scripts/refvenv.sh) scripts/reference/train_reference.py [OUT_DIR]
"""
import json
import math
import os
import sys

import torch
from open_clip.loss import ClipLoss

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/train"
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
ref = {}

# AdamW: one decayed 2-D weight, one non-decayed 1-D bias, lr changing every step (as a
# schedule does), 4 steps.
w0 = torch.randn(3, 4, dtype=torch.float32)
b0 = torch.randn(5, dtype=torch.float32)
w = w0.clone().requires_grad_(True)
b = b0.clone().requires_grad_(True)
opt = torch.optim.AdamW(
    [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
    lr=1e-2, betas=(0.9, 0.98), eps=1e-6, foreach=False,
)
lrs = [1e-2, 5e-3, 2e-2, 1e-3]
grads = []
after = []
for lr in lrs:
    gw = torch.randn(3, 4) * 0.1
    gb = torch.randn(5) * 10.0
    for g in opt.param_groups:
        g["lr"] = lr
    w.grad = gw.clone()
    b.grad = gb.clone()
    opt.step()
    grads.append({"w": gw.flatten().tolist(), "b": gb.flatten().tolist()})
    after.append({"w": w.detach().flatten().tolist(), "b": b.detach().flatten().tolist()})
ref["adamw"] = {
    "w0": w0.flatten().tolist(), "w_shape": [3, 4], "b0": b0.tolist(),
    "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.1,
    "lrs": lrs, "grads": grads, "after": after,
}

# ClipLoss on unnormalised features; open_clip's model normalises before the loss and
# passes exp(logit_scale).
img = torch.randn(6, 8)
txt = torch.randn(6, 8)
scale = 2.3
loss = ClipLoss()(
    torch.nn.functional.normalize(img, dim=-1),
    torch.nn.functional.normalize(txt, dim=-1),
    torch.tensor(scale).exp(),
)
ref["clip_loss"] = {"image": img.flatten().tolist(), "text": txt.flatten().tolist(),
                    "n": 6, "d": 8, "logit_scale": scale, "loss": loss.item()}

# open_clip_train's cosine schedule (warmup 3, 10 steps, base lr 1e-3).
try:
    from open_clip_train.scheduler import cosine_lr
except ImportError:
    sys.exit("needs open_clip_train: pip install 'open-clip-torch[training]' into the reference venv")
p = torch.nn.Parameter(torch.zeros(1))
o = torch.optim.AdamW([p], lr=1e-3)
sched = cosine_lr(o, 1e-3, 3, 10)
lrs = [sched(step) for step in range(10)]
ref["cosine"] = {"base": 1e-3, "warmup": 3, "steps": 10, "lrs": lrs}

# clip_grad_norm_
ps = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 3))]
gs = [torch.randn(4) * 3, torch.randn(2, 3) * 3]
for p, g in zip(ps, gs):
    p.grad = g.clone()
norm = torch.nn.utils.clip_grad_norm_(ps, 1.5)
ref["clip_grad_norm"] = {"grads": [g.flatten().tolist() for g in gs], "max": 1.5,
                         "norm": norm.item(), "after": [p.grad.flatten().tolist() for p in ps]}

with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump(ref, f)
print("wrote", os.path.join(OUT, "reference.json"))
