"""Writes a randomly initialised open_clip ViT-B-32 (QuickGELU, seed 0) as a safetensors
state dict: the one model both sides of scripts/bench-embed.sh load (no weights can be
downloaded here). Usage: embed_model.py OUT.safetensors"""
import sys

import open_clip
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
