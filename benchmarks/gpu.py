"""GPU benchmark: pairs per second at LLaVA-1.5-7B shapes, bf16, batch 1-64, with MFU,
memory against the peers and the time split of modalscope's extraction.

The model has the exact LLaVA-1.5-7B shapes (Llama-2-7B text model, CLIP ViT-L/14-336,
mlp2x_gelu projector) with random weights made on the device: built on the meta device,
materialised with `to_empty` on the GPU and initialised in place (`initialize_weights`), so
nothing crosses the host (no 14 GB round trip). Inputs are synthetic but shaped like a
study's: a caption-only prompt (20 tokens, 12 of them caption) and the image-only prompt
`USER: <image>\\n ASSISTANT:` (583 tokens, 576 of them image) with random pixels, built on
the device once; image decoding and tokenisation are not timed.

For each batch size the contenders run in turn (bare forward, modalscope's Recorder and
reduce_content, the HF hidden-states baseline, nnsight if installed; see contenders.py), each
on its own copy of the weights, `--repeats` rounds after `--warmup`; a pair is one text and
one image forward. Reported: pairs/s (median), modalscope's time / the bare forward's
(median of per-round ratios), MFU (model FLOPs per second over the device's dense bf16
peak), extra `torch.cuda.max_memory_allocated` over the bare forward's and its ratio to
the HF baseline's; then, at modalscope's best batch, the time split: vision tower and
projector, language model (without the reductions), reductions (in the hooks), host copy
(`collect`), store writes (`ActivationStore.append` to a temporary zarr store).

    .venv/bin/python benchmarks/gpu.py                        # needs a CUDA GPU
    .venv/bin/python benchmarks/gpu.py --batch-sizes 16 32 64 --repeats 10 --json gpu.json
    .venv/bin/python benchmarks/gpu.py --smoke                # tiny shapes on the CPU, float32

The goal is >= 45 pairs/s at the best batch (8.39 TFLOP per pair by the count below: the
dense bf16 bound of an H100/H200 is ~118 pairs/s). Written without a GPU at hand: only the
smoke mode has run so far.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import contenders
import workload

GOAL_PAIRS_PER_S = 45.0
# Dense bf16 peak (TFLOP/s) by device name; `--peak-tflops` for anything else.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
IMAGE_TOKEN = 32000
TEXT_TOKENS, CAPTION_TOKENS = 20, 12

SHAPES = {  # LLaVA-1.5-7B, and a tiny stand-in for the smoke run
    "llava-1.5-7b": dict(vocab=32064, hidden=4096, intermediate=11008, layers=32, heads=32,
                         v_hidden=1024, v_intermediate=4096, v_layers=24, v_heads=16, v_proj=768),
    "tiny": dict(vocab=32064, hidden=64, intermediate=176, layers=4, heads=4,
                 v_hidden=32, v_intermediate=64, v_layers=2, v_heads=2, v_proj=32),
}


def llava_config(shape: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    s = SHAPES[shape]
    vision = CLIPVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                              num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                              image_size=336, patch_size=14, projection_dim=s["v_proj"])
    text = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                       intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                       num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                       max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                       image_seq_length=576, vision_feature_select_strategy="default",
                       vision_feature_layer=-2, projector_hidden_act="gelu", pad_token_id=0)


def build_on_device(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A LoadedModel whose weights were created and initialised on `device`."""
    from transformers import LlavaForConditionalGeneration

    from modalscope.models import LLAVA
    from modalscope.models.loading import LoadedModel

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(shape))
    model = model.to(dtype).to_empty(device=device)
    torch.manual_seed(seed)
    model.initialize_weights()  # in place, on the device; also recomputes rotary/position buffers
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, processor=None, adapter=LLAVA, provenance={"shape": shape})


def synthetic_batches(batch: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """(text, image) ModelBatch with LLaVA-1.5's prompt layout and random content."""
    from modalscope.record.inputs import ModelBatch

    g = torch.Generator().manual_seed(seed)
    text_ids = torch.randint(3, IMAGE_TOKEN, (batch, TEXT_TOKENS), generator=g)
    text_ids[:, 0] = 1  # BOS
    text_mask = torch.zeros(batch, TEXT_TOKENS, dtype=torch.bool)
    text_mask[:, 4 : 4 + CAPTION_TOKENS] = True  # "USER:" before, "ASSISTANT:" after
    template = [1, 3148, 1001, 29901] + [IMAGE_TOKEN] * 576 + [13, 319, 1799]
    image_ids = torch.tensor(template).repeat(batch, 1)
    pixels = torch.randn(batch, 3, 336, 336, generator=g).to(dtype)
    text = ModelBatch({"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}, text_mask)
    image = ModelBatch({"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids),
                        "pixel_values": pixels}, image_ids == IMAGE_TOKEN)
    return text.to(device), image.to(device)


def flops_per_pair(shape: str) -> float:
    """Forward FLOPs of one text + one image input: 2 x matmul parameters per token plus
    4 x layers x width x sequence for attention (PaLM's convention, no causal discount);
    lm_head excluded (modalscope runs the decoder stack only)."""
    s = SHAPES[shape]
    h, i, v, vi = s["hidden"], s["intermediate"], s["v_hidden"], s["v_intermediate"]
    lm_params = s["layers"] * (4 * h * h + 3 * h * i)
    vision_params = s["v_layers"] * (4 * v * v + 2 * v * vi) + 3 * 14 * 14 * v
    projector_params = v * h + h * h
    image_seq = 4 + 576 + 3

    def lm(seq: int) -> float:
        return seq * (2 * lm_params + 4 * s["layers"] * h * seq)

    vision = 577 * (2 * vision_params + 4 * s["v_layers"] * v * 577) + 576 * 2 * projector_params
    return lm(TEXT_TOKENS) + lm(image_seq) + vision


class Clock:
    """Wall time of a block, with a device sync on both sides on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def run_pair(runner, text, image):
    return runner.run(text), runner.run(image)


def measure(runners: dict, batch: int, dtype, device, repeats: int, warmup: int) -> dict:
    """Per contender: seconds per round, and extra peak device memory of one pair. A peer
    that runs out of device memory is left out at this batch size (listed in "oom")."""
    text, image = synthetic_batches(batch, dtype, device)
    results, oom = {}, []
    for name, runner in list(runners.items()):
        try:
            for _ in range(max(warmup, 1)):
                results[name] = dict(zip(("text", "image"), run_pair(runner, text, image)))
        except torch.cuda.OutOfMemoryError:
            if name in ("bare", "modalscope"):
                raise
            results.pop(name, None)
            oom.append(name)
            gc.collect()
            torch.cuda.empty_cache()
    runners = {n: r for n, r in runners.items() if n not in oom}
    for condition in ("text", "image"):
        reference = "hf" if "hf" in results else "modalscope"
        contenders.check_equal({n: r[condition] for n, r in results.items()}, dtype, reference)
    memory = {}
    if device.type == "cuda":
        for name, runner in runners.items():
            gc.collect()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run_pair(runner, text, image)
            torch.cuda.synchronize()
            memory[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
    seconds = {name: [] for name in runners}
    names = list(runners)
    clock = Clock(device)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            with clock:
                run_pair(runners[name], text, image)
            seconds[name].append(clock.seconds)
    return {"seconds": seconds, "memory_mib": memory, "oom": oom}


def time_split(runner, batch: int, dtype, device, repeats: int) -> dict:
    """Seconds per pair of each part of modalscope's extraction, at one batch size."""
    from modalscope.store import ActivationStore

    text, image = synthetic_batches(batch, dtype, device)
    model, recorder = runner.model, runner.recorder
    cuda = device.type == "cuda"
    spans: dict[str, list] = {"vision": [], "language": [], "reductions": []}

    def mark():
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed(start, stop) -> float:
        return start.elapsed_time(stop) / 1e3 if cuda else stop - start

    def around(module, key):
        opened = []
        handles = [module.register_forward_pre_hook(lambda m, a: opened.append(mark())),
                   module.register_forward_hook(lambda m, a, o: spans[key].append((opened.pop(), mark())))]
        return handles

    vision, projector = model.model.vision_tower, model.model.multi_modal_projector
    opened_vision: list = []
    handles = [vision.register_forward_pre_hook(lambda m, a: opened_vision.append(mark())),
               projector.register_forward_hook(
                   lambda m, a, o: spans["vision"].append((opened_vision.pop(), mark())))]
    handles += around(model.model.language_model, "language")
    record = recorder._reduce

    def timed_record(site, index, activations):
        start = mark()
        record(site, index, activations)
        spans["reductions"].append((start, mark()))

    collect, host = recorder.collect, []

    def timed_collect():
        with Clock(device) as clock:
            out = collect()
        host.append(clock.seconds)
        return out

    recorder._reduce, recorder.collect = timed_record, timed_collect
    root = Path(tempfile.mkdtemp(prefix="modalscope-gpu-bench-"))
    writes = []
    try:
        layers = len(runner.layers)
        widths = {site: runner.loaded.adapter.width(model, site) for site in contenders.SITES}
        store = ActivationStore.create(root / "store.zarr", layers, widths, batch, {},
                                       stats=contenders.STATS)
        total = Clock(device)
        with total:
            for _ in range(repeats):
                records = {"text": runner.run(text), "image": runner.run(image)}
                clock = time.perf_counter()
                store.append({c: {s: {k: v.numpy() for k, v in st.items()} for s, st in r.items()}
                              for c, r in records.items()},
                              {"text": [CAPTION_TOKENS] * batch, "image": [576] * batch})
                writes.append(time.perf_counter() - clock)
        if cuda:
            torch.cuda.synchronize()
    finally:
        recorder._reduce, recorder.collect = record, collect
        for handle in handles:
            handle.remove()
        shutil.rmtree(root, ignore_errors=True)
    pairs = repeats * batch
    sums = {key: sum(elapsed(a, b) for a, b in values) for key, values in spans.items()}
    split = {
        "vision tower + projector": sums["vision"],
        "language model (no reductions)": sums["language"] - sums["reductions"],
        "reductions (hooks)": sums["reductions"],
        "host copy (collect)": sum(host),
        "store writes": sum(writes),
    }
    split["other (Python, launches, syncs)"] = total.seconds - sum(split.values())
    return {"total_s_per_pair": total.seconds / pairs, "s_per_pair": {k: v / pairs for k, v in split.items()}}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--contenders", nargs="+", default=["bare", "modalscope", "hf", "nnsight"],
                        choices=["bare", "modalscope", "hf", "nnsight"])
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak, for MFU (known: " + ", ".join(PEAK_TFLOPS) + ")")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU in float32, batches 1 and 2, one round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        shape, dtype, device = "tiny", torch.float32, torch.device("cpu")
        args.batch_sizes, args.repeats, args.warmup = [1, 2], 1, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu: no CUDA device here; run with --smoke to check the script on the CPU")
        shape, dtype, device = "llava-1.5-7b", torch.bfloat16, torch.device("cuda")
    wanted = tuple(dict.fromkeys(["bare", "modalscope", *args.contenders]))
    names, skipped = contenders.available(wanted)

    clock = time.perf_counter()
    classes = {"bare": contenders.Bare, "hf": contenders.HFBaseline,
               "nnsight": contenders.NNsightTrace, "modalscope": contenders.Modalscope}
    runners = {name: classes[name](build_on_device(shape, dtype, device)) for name in names}
    print(f"{len(runners)} x {shape} built on {device} in {time.perf_counter() - clock:.1f} s", flush=True)
    flops, peak = flops_per_pair(shape), peak_tflops(device, args.peak_tflops)

    med = workload.median
    rows = []
    for batch in args.batch_sizes:
        try:
            got = measure(runners, batch, dtype, device, args.repeats, args.warmup)
        except torch.cuda.OutOfMemoryError:
            print(f"batch {batch}: modalscope or the bare forward ran out of device memory; stopping")
            break
        sec, mem = got["seconds"], got["memory_mib"]
        row = {"batch": batch, "oom": got["oom"]}
        for name in names:
            row[f"{name}_pairs_per_s"] = batch / med(sec[name]) if name in sec else float("nan")
        row["modalscope_vs_bare"] = med([m / b for m, b in zip(sec["modalscope"], sec["bare"])])
        row["mfu"] = (flops * row["modalscope_pairs_per_s"] / (peak * 1e12)) if peak else None
        if mem:
            extra = {n: mem[n] - mem["bare"] for n in mem}
            row["extra_mib"] = extra
            row["memory_vs_hf"] = extra["modalscope"] / extra["hf"] if extra.get("hf") else None
        rows.append(row)
        print(f"batch {batch}: " + ", ".join(f"{n} {row[f'{n}_pairs_per_s']:.2f} pairs/s" for n in names)
              + (f" (out of memory: {', '.join(got['oom'])})" if got["oom"] else ""), flush=True)
    best = max(rows, key=lambda r: r["modalscope_pairs_per_s"])
    split = time_split(runners["modalscope"], best["batch"], dtype, device, args.repeats)

    print()
    print(f"{shape}, {str(dtype).replace('torch.', '')} on {device}; {flops / 1e12:.2f} TFLOP per pair; "
          f"peak {peak or 'unknown'} TFLOP/s")
    header = f"{'batch':>5} " + " ".join(f"{n + ' p/s':>15}" for n in names) + \
        f" {'ms/bare':>8} {'MFU':>6} {'extra MiB ms/hf':>16}"
    print(header)
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        memory = (f"{row['extra_mib']['modalscope']:.0f}/{row['extra_mib'].get('hf', float('nan')):.0f}"
                  if "extra_mib" in row else "n/a")
        print(f"{row['batch']:>5} " + " ".join(f"{row[f'{n}_pairs_per_s']:>15.2f}" for n in names)
              + f" {row['modalscope_vs_bare']:>8.3f} {mfu:>6} {memory:>16}")
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    print(f"\ntime split at batch {best['batch']} (ms per pair; total {split['total_s_per_pair'] * 1e3:.2f})")
    for part, seconds in split["s_per_pair"].items():
        print(f"  {part:<34} {seconds * 1e3:>9.2f}")
    print(f"  end to end, store writes included: {1 / split['total_s_per_pair']:.2f} pairs/s "
          "(extract() writes each batch before computing the next)")
    value = best["modalscope_pairs_per_s"]
    print(f"\n{'goal':<52} {'value':>8} {'target':>8}  met")
    print(f"{'GPU pairs/s, best batch (' + str(best['batch']) + ')':<52} {value:>8.2f} "
          f"{'>= ' + str(GOAL_PAIRS_PER_S):>8}  {'yes' if value >= GOAL_PAIRS_PER_S else 'NO'}"
          + ("  (smoke: not a measurement)" if args.smoke else ""))
    mem_ratio = best.get("memory_vs_hf")
    if mem_ratio is not None:
        print(f"{'modalscope extra GPU memory / HF baseline extra':<52} {mem_ratio:>8.3f} {'<= 0.5':>8}  "
              f"{'yes' if mem_ratio <= 0.5 else 'NO'}")
    extra = best.get("extra_mib", {})
    if "nnsight" in extra:
        gap = extra["modalscope"] - extra["nnsight"]
        print(f"{'modalscope extra GPU memory - nnsight extra (MiB)':<52} {gap:>8.1f} {'<= 0':>8}  "
              f"{'yes' if gap <= 0 else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "device": str(device), "rows": rows,
                                         "split": split, "flops_per_pair": flops, "peak_tflops": peak,
                                         "skipped": skipped}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
