"""Makes tiny CLIP checkpoints in the real formats and the reference outputs the Rust
parity tests compare against (tests/fixtures/clip/).

Run: scripts/make-fixtures.sh clip   (uses the throwaway venv of scripts/refvenv.sh)

Every LayerNorm, bias and logit_scale is perturbed so that every tensor matters.
"""
import json
import os
import sys

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/clip"
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "bias" in name or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.2)
            if name.endswith("logit_scale"):
                p.fill_(3.1)
            # class/positional embeddings are 1-D/2-D params initialised small; make them matter
            if "class_embedding" in name or "positional_embedding" in name or "position_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)


def token_rows(vocab, eot, rows, ctx):
    """Rows like a tokenizer's: SOT-ish first id, body, EOT, zero padding; one row fills the context."""
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(rows, ctx, dtype=torch.long)
    lengths = [5, 12, ctx]
    for r in range(rows):
        n = lengths[r % len(lengths)]
        ids[r, : n - 1] = torch.randint(1, eot - 1, (n - 1,), generator=g)
        ids[r, n - 1] = eot
    return ids


def save_ref(name, pixels, ids, image, text, logits):
    save_file(
        {
            "pixels": pixels.contiguous(),
            "ids": ids.contiguous(),
            "image_features": image.contiguous(),
            "text_features": text.contiguous(),
            "logits_per_image": logits.contiguous(),
        },
        os.path.join(OUT, f"{name}.ref.safetensors"),
    )


# ---------------------------------------------------------------- Hugging Face
hf_config = CLIPConfig(
    text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=1000, hidden_act="quick_gelu", eos_token_id=999,
        bos_token_id=998, pad_token_id=0,
    ),
    vision_config=dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
        image_size=32, patch_size=8, hidden_act="quick_gelu",
    ),
    projection_dim=24,
)
hf = CLIPModel(hf_config).eval()
perturb(hf)
hf_dir = os.path.join(OUT, "hf-tiny")
hf.save_pretrained(hf_dir, safe_serialization=True)
pixels = torch.randn(2, 3, 32, 32)
ids = token_rows(1000, 999, 3, 77)
with torch.no_grad():
    out = hf(input_ids=ids, pixel_values=pixels)
    img = hf.get_image_features(pixel_values=pixels)
    txt = hf.get_text_features(input_ids=ids)
    img = img.pooler_output if hasattr(img, "pooler_output") else img
    txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
save_ref("hf-tiny", pixels, ids, img, txt, out.logits_per_image)
# What transformers pools at must match what the Rust model assumes (first EOS id).
assert torch.allclose(out.text_embeds, txt / txt.norm(dim=-1, keepdim=True), atol=1e-6)

# ---------------------------------------------------------------- OpenAI / open_clip
def open_clip_model(quick_gelu):
    torch.manual_seed(2)
    return CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32, head_width=64),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=500, width=64, heads=1, layers=3),
        quick_gelu=quick_gelu,
    ).eval()


oc = open_clip_model(True)
perturb(oc)
# OpenAI ships fp16 files: store fp16 and compute the reference from the same rounded weights.
oc = oc.half().float()
state = {k: v.half() for k, v in oc.state_dict().items()}
save_file(state, os.path.join(OUT, "openai-tiny.safetensors"))
torch.save(state, os.path.join(OUT, "openai-tiny.pt"))
pixels = torch.randn(2, 3, 32, 32)
ids = token_rows(500, 499, 3, 77)
with torch.no_grad():
    img = oc.encode_image(pixels)
    txt = oc.encode_text(ids)
    logits = oc.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
save_ref("openai-tiny", pixels, ids, img, txt, logits)

# The same weights with exact GELU (open_clip names without -quickgelu).
oc_gelu = open_clip_model(False)
oc_gelu.load_state_dict({k: v.float() for k, v in state.items()})
with torch.no_grad():
    img = oc_gelu.encode_image(pixels)
    txt = oc_gelu.encode_text(ids)
    logits = oc_gelu.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
save_ref("openai-tiny-gelu", pixels, ids, img, txt, logits)


# OpenAI's JIT archives: a traced module whose parameters carry the state-dict names.
class Both(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.visual = m.visual
        self.transformer = m.transformer
        self.token_embedding = m.token_embedding
        self.positional_embedding = m.positional_embedding
        self.ln_final = m.ln_final
        self.text_projection = m.text_projection
        self.logit_scale = m.logit_scale
        self.m = [m]

    def forward(self, image, text):
        return self.m[0].encode_image(image), self.m[0].encode_text(text)


jit_model = oc.half()
traced = torch.jit.trace(Both(jit_model), (pixels.half(), ids), check_trace=False)
traced.save(os.path.join(OUT, "openai-tiny-jit.pt"))

with open(os.path.join(OUT, "README.md"), "w") as f:
    f.write(
        "Generated by scripts/reference/clip_reference.py (torch "
        f"{torch.__version__}, open_clip {open_clip.__version__}, transformers "
        f"{__import__('transformers').__version__}). Random tiny weights; do not edit by hand.\n"
    )
print("wrote", sorted(os.listdir(OUT)))
