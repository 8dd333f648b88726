"""Zero-shot accuracy of an open_clip_train checkpoint on a CSV (filepath,title): each image
is assigned the distinct title with the highest similarity (the same rule as cliptune's
caption_accuracy; ties count as wrong).

Run: $(scripts/refvenv.sh) scripts/bench/open_clip_zeroshot.py MODEL CHECKPOINT test.csv
"""
import os
import sys

import open_clip
import pandas as pd
import torch
from PIL import Image

open_clip.add_model_config(os.path.dirname(os.path.abspath(__file__)))
model_name, ckpt, csv = sys.argv[1:4]
model, _, preprocess = open_clip.create_model_and_transforms(model_name)
state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
state = {k.removeprefix("module."): v for k, v in state.items()}
model.load_state_dict(state)
model.eval()
tok = open_clip.get_tokenizer(model_name)
df = pd.read_csv(csv)
titles = sorted(set(df["title"]))
index = {t: i for i, t in enumerate(titles)}
with torch.no_grad():
    text = torch.nn.functional.normalize(model.encode_text(tok(titles)), dim=-1)
    correct = 0
    for start in range(0, len(df), 500):
        rows = df.iloc[start:start + 500]
        px = torch.stack([preprocess(Image.open(p)) for p in rows["filepath"]])
        img = torch.nn.functional.normalize(model.encode_image(px), dim=-1)
        sims = img @ text.T
        own = torch.tensor([index[t] for t in rows["title"]])
        pos = sims.gather(1, own[:, None])
        others = sims.clone()
        others.scatter_(1, own[:, None], float("-inf"))
        correct += (pos[:, 0] > others.max(dim=1).values).sum().item()
print(f"zero_shot_accuracy {correct / len(df):.4f} ({correct}/{len(df)})")
