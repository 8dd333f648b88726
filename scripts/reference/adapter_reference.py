"""Checkpoints interchangeable with Dataloop's CLIP model adapter
(dataloop-ai-apps/clip-model-adapter, model_adapter.py), checked against the real code.

The adapter saves `torch.save({"model_state_dict": model.state_dict(), ...}, best.pt)` and
loads with `clip.load(model_name, jit=False)` followed by
`model.load_state_dict(torch.load(best.pt)["model_state_dict"])` (OpenAI's `clip`
package). Both directions:

  make DIR   (default tests/fixtures/adapter) a tiny open_clip model (seed 0, every
             LayerNorm / bias / embedding perturbed), saved as the adapter's training loop
             saves it (model state dict in the fp16 mix OpenAI's clip uses on a GPU, an
             Adam optimizer state dict, epoch, best_loss) -> DIR/best.pt, plus fixed pixels
             and token ids and the open_clip and OpenAI-clip outputs of those weights
             -> DIR/best.ref.safetensors. crates/clip/tests/adapter.rs loads both.
  check DIR  DIR/best.pt written by cliptune (`cargo run -p cliptune-clip --example
             adapter_export -- DIR`) with DIR/cliptune.ref.safetensors (cliptune's outputs
             for the fixture's inputs): loads best.pt with torch.load(weights_only=True)
             and the adapter's call into OpenAI's clip and into open_clip, and requires
             cosine >= 0.99999 per row and max abs diff <= 1e-5 against cliptune.

Run with the reference venv: $(scripts/refvenv.sh) scripts/reference/adapter_reference.py make
OpenAI's `clip` package is installed into that venv from PyPI (clip-anytorch, the same
code) on first use.
"""
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file, save_file

try:
    import clip  # OpenAI's package, as the adapter's Dockerfile installs it
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "clip-anytorch"])
    import clip

# Heads = width / 64, as OpenAI's build_model infers them; small enough for a fixture.
VISION = dict(layers=2, width=64, patch_size=8, image_size=32, head_width=64)
TEXT = dict(context_length=16, vocab_size=300, width=64, heads=1, layers=2)
EMBED = 32
EOT = TEXT["vocab_size"] - 1


def open_clip_model():
    return CLIP(
        embed_dim=EMBED,
        vision_cfg=CLIPVisionCfg(**VISION),
        text_cfg=CLIPTextCfg(**TEXT),
        quick_gelu=True,  # OpenAI's activation; the adapter's models are OpenAI's
    ).eval()


def perturb(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "ln_" in name or "bias" in name or "embedding" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            if name == "logit_scale":
                p.fill_(2.9)


def inputs():
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, 3, VISION["image_size"], VISION["image_size"], generator=g)
    ctx = TEXT["context_length"]
    ids = torch.zeros(3, ctx, dtype=torch.long)
    for row, n in enumerate([4, 9, ctx]):
        ids[row, 0] = EOT - 1  # start-of-text stands just below EOT, as 49406 / 49407
        ids[row, 1 : n - 1] = torch.randint(1, EOT - 1, (n - 2,), generator=g)
        ids[row, n - 1] = EOT
    return pixels, ids


def outputs(model, pixels, ids):
    with torch.no_grad():
        img = model.encode_image(pixels).float()
        txt = model.encode_text(ids).float()
        logits = model.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    return img, txt, logits


def adapter_load(best_pt, base_state):
    """The adapter's load(): clip.load(name, jit=False), then load_state_dict of best.pt.

    `clip.load` takes a file path as well as a name; offline, the tiny base model's state
    dict stands in for the downloaded ViT-B-32.pt.
    """
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base.pt")
        torch.save(base_state, base)
        model, _ = clip.load(name=base, device="cpu", jit=False)
    checkpoint = torch.load(best_pt, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model_state_dict"])  # strict, as in the adapter
    return model.eval()


def open_clip_load(best_pt):
    model = open_clip_model()
    checkpoint = torch.load(best_pt, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model_state_dict"])
    return model


def compare(what, ours, theirs):
    cos = F.cosine_similarity(ours, theirs, dim=-1).min().item()
    diff = (ours - theirs).abs().max().item()
    print(f"  {what}: min cosine {cos:.8f}, max abs diff {diff:.2e}")
    return cos >= 0.99999 and diff <= 1e-5


def make(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip_model()
    perturb(model)
    # On a GPU the adapter's model is OpenAI's fp16 mix (clip.model.convert_weights:
    # conv / linear / attention weights and the projections in fp16, LayerNorms,
    # embeddings and logit_scale in fp32). Saving that mix keeps the fixture small and
    # exercises mixed dtypes; the reference is computed from the same rounded weights.
    clip.model.convert_weights(model)
    state = model.state_dict()  # an OrderedDict with _metadata, as the adapter saves it
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    best_pt = os.path.join(out, "best.pt")
    torch.save(
        {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(), "epoch": 1, "best_loss": 2.5},
        best_pt,
    )
    model.float()
    pixels, ids = inputs()
    img, txt, logits = outputs(model, pixels, ids)
    # The adapter's own loading call must see the same model.
    theirs = adapter_load(best_pt, {k: v.float() for k, v in state.items()})
    t_img, t_txt, _ = outputs(theirs, pixels, ids)
    print("open_clip vs OpenAI clip (adapter's load) on best.pt:")
    assert compare("image", t_img, img) and compare("text", t_txt, txt)
    save_file(
        {
            "pixels": pixels.contiguous(),
            "ids": ids.contiguous(),
            "image_features": img.contiguous(),
            "text_features": txt.contiguous(),
            "logits_per_image": logits.contiguous(),
        },
        os.path.join(out, "best.ref.safetensors"),
    )
    print(f"wrote {best_pt} ({os.path.getsize(best_pt)} bytes) and best.ref.safetensors")


def check(d):
    best_pt = os.path.join(d, "best.pt")
    ref = load_file(os.path.join(d, "cliptune.ref.safetensors"))
    state = torch.load(best_pt, map_location="cpu", weights_only=True)["model_state_dict"]
    print(f"{best_pt}: {len(state)} tensors, torch.load(weights_only=True) ok")
    ok = True
    for name, model in [
        ("OpenAI clip, adapter's load", adapter_load(best_pt, state)),
        ("open_clip create + load_state_dict", open_clip_load(best_pt)),
    ]:
        img, txt, logits = outputs(model, ref["pixels"], ref["ids"])
        print(f"{name} vs cliptune:")
        ok &= compare("image", img, ref["image_features"])
        ok &= compare("text", txt, ref["text_features"])
        ok &= compare("logits", logits, ref["logits_per_image"])
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "make"
    target = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/adapter"
    {"make": make, "check": check}[mode](target)
