"""Train the demo VLM's vision encoder and projector by LLaVA's recipe, on 2 CPU cores (issue 25).

    python -m modalscope.training.shapes_vlm --out runs/shapes-vlm      # ~50 min on 2 cores

Recipe, and why:
- LLaVA's first stage trains only the projector, on captioning, with a frozen pretrained CLIP
  encoder and a frozen LM; the user turn holds the image alone and the assistant's turn is the
  caption. We keep the frozen LM (SmolLM2-135M-Instruct), the image-only user turn (exactly the
  prompt modalscope records) and the captioning loss on the caption's tokens (and the closing
  `<|im_end|>`) only. No pretrained CLIP exists offline, so stage A gives a from-scratch ViT the
  warm start CLIP gives LLaVA: a CLIP-style contrastive objective between the image's CLS
  feature and the frozen LM's mean caption state (one LM forward per caption, no backward
  through it: ~2 min). Stage B then trains projector *and* encoder on captioning (the encoder
  is 1.8 M parameters learned from a few thousand images; freezing it would cap what stage A
  found).
- Budget (measured here, float32, 2 cores; bfloat16 autocast was ~40x slower on this CPU): a
  batch of 8 image-only prompts + captions is ~55 tokens (9 template, 36 image, ~10 caption);
  forward and backward through the 30 frozen layers cost ~2 s per batch, with the LM head
  applied only at the caption's positions. 1,200 steps of 8 (9,600 captioned images, each a
  fresh scene) fit in about 45 min; the images are drawn on the fly from a seeded stream that
  no held-out set uses.
- Reproducible: every scene and caption is a function of (seed, split, index); torch is seeded;
  a checkpoint every 100 steps makes an interrupted run resume where it stopped.

Writes `OUT/shapes_vlm.safetensors` (vision tower + projector), `OUT/train-log.jsonl` (the loss
curve and held-out accuracy along the way) and `OUT/heldout.json` (final held-out captions and
their word accuracy beside chance). `src/modalscope/assets/` holds the committed copies.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from modalscope.data.caption_words import FIELDS, caption_words, truth_words
from modalscope.data.synthetic import make_world_scene, render_scene, world_caption

RENDER = 128  # px the world is drawn at; the processor resizes to 48 as for the demo's images
BATCH = 8
STEPS = 1200
CONTRASTIVE_STEPS = 300
CONTRASTIVE_POOL = 3072
CONTRASTIVE_BATCH = 128


def scene(split: str, seed: int, index: int) -> tuple[dict, random.Random]:
    """The `index`-th scene of a split (train/heldout streams never share a seed string)."""
    rng = random.Random(f"shapes-world/{split}/{seed}/{index}")
    return make_world_scene(rng, RENDER), rng


def image_prompt(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ""}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def caption_batch(processor, prompt: str, seed: int, indices: list[int], epoch_salt: int = 0):
    """Processor inputs for image-only prompts followed by a caption, and the caption mask."""
    scenes = [scene("train", seed, i) for i in indices]
    images = [render_scene(s, RENDER) for s, _ in scenes]
    captions = [world_caption(s, random.Random(f"{seed}/{i}/{epoch_salt}")) for (s, _), i in zip(scenes, indices)]
    enc = processor(text=[prompt + c + "<|im_end|>" for c in captions], images=images,
                    return_tensors="pt", padding=True)
    head = len(processor(text=[prompt], images=images[:1], return_tensors="pt")["input_ids"][0])
    target = enc["attention_mask"].bool().clone()
    target[:, :head] = False
    return enc, target


def caption_loss(model, enc, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each caption token given everything before it (LM head only there)."""
    hidden = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         pixel_values=enc["pixel_values"]).last_hidden_state
    predict = target[:, 1:]  # position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][predict])
    return F.cross_entropy(logits, enc["input_ids"][:, 1:][predict])


@torch.no_grad()
def generate_captions(model, processor, images, max_new_tokens: int = 24) -> list[str]:
    prompt = image_prompt(processor)
    enc = processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def word_accuracy(captions: list[str], scenes: list[dict]) -> dict[str, float]:
    """Share of captions whose colour, shape, count and size words match the drawn truth
    (a caption that omits a word counts as wrong for it; size only where the caption says one)."""
    said = [caption_words(c) for c in captions]
    truth = [truth_words(s) for s in scenes]
    out = {f: sum(s[f] == t[f] for s, t in zip(said, truth)) / len(captions) for f in ("colour", "shape", "count")}
    sized = [(s, t) for s, t in zip(said, truth) if s["size"]]
    out["size"] = sum(s["size"] == t["size"] for s, t in sized) / len(sized) if sized else float("nan")
    return out


def chance_accuracy(seed: int, n: int = 4000) -> dict[str, float]:
    """Accuracy of always naming the training stream's most frequent value of each word."""
    truths = [truth_words(scene("train", seed, i)[0]) for i in range(n)]
    return {f: Counter(t[f] for t in truths).most_common(1)[0][1] / n for f in FIELDS}


def heldout_eval(model, processor, seed: int, n: int) -> tuple[dict[str, float], list[dict]]:
    scenes = [scene("heldout", seed, i)[0] for i in range(n)]
    captions: list[str] = []
    model.eval()
    for start in range(0, n, 16):
        captions += generate_captions(model, processor, [render_scene(s, RENDER) for s in scenes[start:start + 16]])
    samples = [{"truth": truth_words(s), "caption": c} for s, c in zip(scenes, captions)]
    return word_accuracy(captions, scenes), samples


def contrastive_stage(model, processor, seed: int, log) -> None:
    """Stage A: CLIP-style warm start of the vision tower against the frozen LM's caption states."""
    lm = model.model.language_model
    tokenizer = processor.tokenizer
    feats, images = [], []
    with torch.no_grad():
        for start in range(0, CONTRASTIVE_POOL, 64):
            idx = range(start, start + 64)
            scenes = [scene("train", seed, i) for i in idx]
            captions = [world_caption(s, random.Random(f"{seed}/{i}/clip")) for (s, _), i in zip(scenes, idx)]
            enc = tokenizer(captions, return_tensors="pt", padding=True)
            hidden = lm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            feats.append((hidden * mask).sum(1) / mask.sum(1))
            images.append(processor.image_processor([render_scene(s, RENDER) for s, _ in scenes],
                                                    return_tensors="pt")["pixel_values"])
    text, pixels = torch.cat(feats), torch.cat(images)
    text = (text - text.mean(0)) / (text.std(0) + 1e-6)
    vision = model.model.vision_tower
    v_head = torch.nn.Linear(vision.config.hidden_size, 256)
    t_head = torch.nn.Linear(text.shape[1], 256)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(vision.parameters()) + list(v_head.parameters()) + list(t_head.parameters()) + [scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    start_time = time.time()
    vision.train()
    for step in range(1, CONTRASTIVE_STEPS + 1):
        pick = torch.randperm(len(text), generator=gen)[:CONTRASTIVE_BATCH]
        v = F.normalize(v_head(vision(pixel_values=pixels[pick]).pooler_output), dim=-1)
        t = F.normalize(t_head(text[pick]), dim=-1)
        logits = scale.exp().clamp(max=100) * v @ t.T
        labels = torch.arange(len(pick))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            log({"stage": "contrastive", "step": step, "loss": round(float(loss), 4),
                 "seconds": round(time.time() - start_time, 1)})


def train(out: Path, seed: int = 0, steps: int = STEPS, eval_every: int = 300, eval_n: int = 48) -> Path:
    from safetensors.torch import save_file

    from modalscope.models.shapes_vlm import build_untrained, trained_state

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.manual_seed(seed)
    model, processor = build_untrained(seed=seed)
    for p in model.model.language_model.parameters():
        p.requires_grad_(False)
    log_path, ckpt_path = out / "train-log.jsonl", out / "checkpoint.pt"

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    vision_params = list(model.model.vision_tower.parameters())
    projector_params = list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW([{"params": vision_params, "lr": 3e-4}, {"params": projector_params, "lr": 1e-3}],
                            weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    first = 1
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["state"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        first = ckpt["step"] + 1
        log({"resumed_at": first})
    else:
        log_path.unlink(missing_ok=True)
        log({"chance": chance_accuracy(seed), "seed": seed, "steps": steps, "batch": BATCH})
        contrastive_stage(model, processor, seed, log)
    prompt = image_prompt(processor)
    warmup, window, started = 30, [], time.time()
    for step in range(first, steps + 1):
        model.train()
        scale = min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * scale
        indices = list(range((step - 1) * BATCH, step * BATCH))
        enc, target = caption_batch(processor, prompt, seed, indices)
        loss = caption_loss(model, enc, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision_params + projector_params, 1.0)
        opt.step()
        window.append(float(loss))
        if step % 25 == 0:
            log({"stage": "caption", "step": step, "loss": round(sum(window) / len(window), 4),
                 "seconds": round(time.time() - started, 1)})
            window = []
        if step % eval_every == 0 and step < steps:
            accuracy, _ = heldout_eval(model, processor, seed, eval_n)
            log({"stage": "heldout", "step": step, "n": eval_n, "accuracy": accuracy})
        if step % 100 == 0 or step == steps:
            torch.save({"state": trained_state(model), "optimizer": opt.state_dict(), "step": step}, ckpt_path)
    save_file(trained_state(model), str(out / "shapes_vlm.safetensors"))
    accuracy, samples = heldout_eval(model, processor, seed, 200)
    log({"stage": "heldout", "step": steps, "n": 200, "accuracy": accuracy})
    (out / "heldout.json").write_text(json.dumps({"accuracy": accuracy, "chance": chance_accuracy(seed),
                                                  "n": 200, "samples": samples[:40]}, indent=1) + "\n")
    return out / "shapes_vlm.safetensors"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    train(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
