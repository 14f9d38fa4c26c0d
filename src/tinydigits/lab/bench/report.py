"""The report of ``tinydigits bench``: docs/BENCHMARKS.md and the raw ``benchmarks.json``,
rendered from the figures :mod:`tinydigits.lab.bench.measure` took, and only from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ... import data
from ...io import write_text
from ...markdown import GeneratedBlock, markdown_table
from ...models import MODELS, get_spec
from ...recipes import get_recipe
from ..commands import tinydigits_line
from .measure import BATCH


def command_line(results: dict[str, Any], output: str | Path) -> str:
    """The run as one canonical ``tinydigits bench`` line, whichever entry point made it."""
    names, options = results["models"], results["options"]
    return tinydigits_line("bench", {
        "models": None if list(names) == list(MODELS) else names,
        "device": options["device"],
        "threads": results["machine"]["threads"],
        "quick": results["quick"] or None,
        "time_to_accuracy": None if options["time_to_accuracy"] else False,
        "output": str(output),
    })


def write_report(results: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write the Markdown report to ``output`` and the raw figures to ``benchmarks.json`` beside it."""
    output = Path(output)
    json_path = output.with_name("benchmarks.json")
    results = {**results, "command": command_line(results, output)}
    write_text(output, render_markdown(results))
    write_text(json_path, json.dumps(results, indent=2) + "\n")
    return output, json_path


# ------------------------------------------------------------------------ markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    return [*markdown_table(header, rows, left), ""]


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _title(name: str) -> str:
    return f"{get_spec(name).title} (`{name}`)"


def _machine_section(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    cores = f"{m['logical_cpus']} logical CPUs" + (f", {m['usable_cpus']} usable by this process"
                                                   if m["usable_cpus"] else "")
    rows = [["CPU", m["cpu"]], ["cores", cores], ["device", m["gpu"] or m["device"]],
            ["threads (torch, ONNX Runtime and OpenVINO)", str(m["threads"])],
            ["torch", m["torch"]], ["ONNX Runtime", m["onnxruntime"] or "not installed"],
            ["OpenVINO", m.get("openvino") or "not installed"],
            ["Python", m["python"]], ["OS", m["platform"]],
            *([["TF32 allowed (matmul, cuDNN)", f"{m['tf32']['matmul']}, {m['tf32']['cudnn']}"]]
              if m.get("tf32") else []),
            ["load average at the start (1, 5, 15 min)",
             ", ".join(f"{x:.2f}" for x in m["load_average"]) if m["load_average"] else "unknown"],
            ["date", m["date"]]]
    return ["## Machine", "", *_table(["", ""], rows, left=2)]


def _training_section(results: dict[str, Any]) -> list[str]:
    s, training = results["settings"], results["training"]
    first = next(iter(training.values()))
    recipe = get_recipe("medium")
    lines = [
        "## Training throughput", "",
        f"Training images per second, batch {BATCH}: the median of {s['windows']} timed windows of "
        f"{s['window_batches']} batches ({first['images_per_window']:,} training images, the same for every "
        f"rung) after {s['warmup_windows']} warm-up window(s). Every rung trains the same model with the "
        f"default recipe's dropout ({recipe.dropout:g}) on {results['machine']['device']}, "
        f"{results['machine']['threads']} thread(s).", "",
        f"- **(a) reference-style**: a torch `Dataset` that rotates each PIL image by U(±"
        f"{first['rotation_reference']:g}°) (nearest neighbour, fill 0) and converts it to a tensor "
        f"normalized with ({data.MEAN}, {data.STD}), a shuffling `DataLoader` (batch {BATCH}, "
        f"num_workers=0), SGD with momentum 0.9 (the reference recipe), `.item()` per step as the "
        "notebooks do.",
        f"- **(b) tensors, NCHW**: `tinydigits.train.train_one_epoch` with the model in NCHW (contiguous) "
        f"layout: the images as one normalized tensor in memory, batched `random_affine` (rotation ±"
        f"{recipe.rotation:g}°, shift ±{recipe.translate:.0%}, zoom ±{recipe.scale:.0%}), one-cycle SGD.",
        "- **(c) trainer**: the same with the model in channels_last: what `tinydigits train` runs.", "",
    ]
    rows = [[_title(name), _rate(t["reference"]["images_per_s"]), _rate(t["tensors_nchw"]["images_per_s"]),
             _rate(t["trainer"]["images_per_s"]),
             _ratio(t["tensors_nchw"]["images_per_s"], t["reference"]["images_per_s"]),
             _ratio(t["trainer"]["images_per_s"], t["tensors_nchw"]["images_per_s"]),
             _ratio(t["trainer"]["images_per_s"], t["reference"]["images_per_s"])]
            for name, t in training.items()]
    lines += _table(["model", "(a) reference-style", "(b) tensors, NCHW", "(c) trainer",
                     "(b) / (a)", "(c) / (b)", "(c) / (a)"], rows)
    lines += ["Each input pipeline alone, on the same images: the reference-style `DataLoader` iterated "
              "without training, and the trainer's `random_affine` on each batch; the share is the part of "
              "that rung's training step it takes.", ""]
    rows = [[_title(name), _rate(t["reference_pipeline_only"]["images_per_s"]),
             f"{t['reference']['images_per_s'] / t['reference_pipeline_only']['images_per_s']:.0%} of (a)",
             _rate(t["augmentation_only"]["images_per_s"]),
             f"{t['trainer']['images_per_s'] / t['augmentation_only']['images_per_s']:.0%} of (c)"]
            for name, t in training.items()]
    lines += _table(["model", "PIL + DataLoader alone (images/s)", "share",
                     "`random_affine` alone (images/s)", "share"], rows)
    distilled = {name: t for name, t in training.items() if "distill" in t}
    if distilled:
        lines += ["Distillation's cost: a recipe that distils its teachers on each augmented batch runs "
                  "their ensemble's forward pass at every step. The trainer (c) without the teachers, with "
                  "them in NCHW, and with them in channels_last as `tinydigits train` loads them; the epoch "
                  "is the default recipe's training images (the shipped files train on all 60,000) at that "
                  "rate.", ""]
        rows = [[f"{_title(name)}, {t['teachers']} teachers", _rate(t["trainer"]["images_per_s"]),
                 _rate(t["distill_nchw"]["images_per_s"]), _rate(t["distill"]["images_per_s"]),
                 f"{t['epoch_images'] / t['distill_nchw']['images_per_s']:.0f} s → "
                 f"{t['epoch_images'] / t['distill']['images_per_s']:.0f} s",
                 _ratio(t["distill"]["images_per_s"], t["distill_nchw"]["images_per_s"])]
                for name, t in distilled.items()]
        lines += _table(["model", "(c) no teachers", "teachers NCHW", "teachers channels_last (trainer)",
                         "epoch", "speed-up"], rows)
    threads = results.get("threads")
    if threads:
        counts = list(threads["by_threads"])
        rates = [threads["by_threads"][n]["images_per_s"] for n in counts]
        lines += [f"The trainer (c) on {_title(threads['model'])} at different torch thread counts:", ""]
        lines += _table(["threads", *counts, f"{counts[-1]} vs 1"],
                        [["images/s", *map(_rate, rates), _ratio(rates[-1], rates[0])]])
    return lines


def _tta_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Time to accuracy", ""]
    tta = results.get("time_to_accuracy")
    if not tta:
        return [*lines, "Not measured in this run (`--no-time-to-accuracy`).", ""]
    lines += [f"MNIST-Medium trained to the end by `tinydigits.train.train(...)` in this process, once per "
              f"recipe, seed 0; the target is a final test accuracy of at least "
              f"{tta['target_accuracy']:.2f}%. Wall time is the whole call (data preparation, the epochs "
              "with their validation and checkpoints, the final test evaluation); training time is the "
              "epochs alone.", ""]
    if results["quick"]:
        lines += ["**Quick mode: one epoch on a slice of the training set. These are smoke-test figures, "
                  "not the real ones.**", ""]
    rows = [[kind, str(r["epochs"]), f"{r['wall_s']:.1f} s", f"{r['train_s']:.1f} s",
             f"{r['test_accuracy']:.2f}%", "yes" if r["reached"] else "no"]
            for kind, r in ((k, tta[k]) for k in ("default", "reference"))]
    lines += _table(["recipe", "epochs", "wall time", "training time", "final test accuracy",
                     f">= {tta['target_accuracy']:.2f}%"], rows)
    return [*lines, f"Reference recipe / default recipe wall time: {tta['reference_over_default']:.2f}x.", ""]


def _inference_section(results: dict[str, Any]) -> list[str]:
    s, m = results["settings"], results["machine"]
    sizes = ", ".join(f"{b:,}" for b in s["infer_batch_sizes"])
    count = next(iter(results["inference"].values()))["images"]
    lines = ["## Inference", "",
             f"The shipped pretrained weights, on {count:,} test images already in memory"
             f"{' on the GPU' if m['gpu'] else ''}. Throughput: the median of {s['infer_repeats']} passes "
             f"over them, at each batch size tried ({sizes}); the best is shown with its batch size, and the "
             f"accuracy is that of the outputs at that batch size. Batch-1 latency: {s['latency_calls']:,} "
             f"calls on one preallocated image after {s['latency_warmup']} warm-up calls (ONNX Runtime "
             f"through IOBinding). TorchScript is the traced export, frozen and passed through "
             f"`torch.jit.optimize_for_inference`; ONNX Runtime runs the `tinydigits export` files with "
             f"intra_op_num_threads={m['threads']}, inter_op_num_threads=1; OpenVINO compiles the fp32 "
             f"file for the CPU with the LATENCY hint, f32 precision and {m['threads']} inference threads "
             f"(as `--backend openvino`).", ""]
    rows, skipped = [], []
    for name, result in results["inference"].items():
        for r in result["backends"]:
            differs = r.get("differs_from_pytorch")
            rows.append([_title(name), r["backend"], f"{r['accuracy']:.2f}%",
                         "(reference)" if differs is None else f"{differs:,}", _rate(r["images_per_s"]),
                         f"{r['best_batch']:,}", f"{r['latency_us_median']:.0f} µs",
                         f"{r['latency_us_p99']:.0f} µs"])
        skipped += [f"- {name}: {s['backend']} skipped: {s['why']}" for s in result["skipped"]]
    lines += _table(["model", "backend", "test accuracy", "predictions unlike PyTorch eager's",
                     "throughput (images/s)", "at batch", "batch 1, median", "batch 1, p99"], rows, left=2)
    return [*lines, *skipped, *([""] if skipped else [])]


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _memory_section(results: dict[str, Any]) -> list[str]:
    gpu = results["machine"]["gpu"]
    lines = ["## Peak memory", "",
             "Peak resident set size (VmHWM from /proc/self/status) of a fresh "
             "`python -m tinydigits.lab.bench.child train|infer` process per figure. Training: one epoch of "
             "`tinydigits.train.train` with the default recipe (the training set in memory, validation, "
             "checkpoint, final test evaluation). Inference: the pretrained model in PyTorch eager over the "
             "test set at batch 1000. The last column is the training process just after importing torch and "
             "tinydigits, before any data.", ""]
    header = ["model", "training", "inference", "after imports"]
    header += ["GPU peak allocated, training / inference"] if gpu else []
    rows = []
    for name, r in results["memory"].items():
        row = [_title(name), _mib(r["train"]["peak_kib"]), _mib(r["infer"]["peak_kib"]),
               _mib(r["train"]["after_imports_kib"])]
        if gpu:
            row.append(" / ".join(f"{r[k].get('cuda_peak_allocated_bytes', 0) / 2**20:,.1f} MiB"
                                  for k in ("train", "infer")))
        rows.append(row)
    if results["quick"]:
        lines += [f"**Quick mode: training on a slice of the training set, inference on "
                  f"{results['settings']['infer_images']:,} images.**", ""]
    return [*lines, *_table(header, rows)]


def _peak_fractions(results: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(model, figure, images/s, FLOPs per image) for every throughput figure of the run."""
    out = []
    for name, t in results["training"].items():
        step = results["flops"][name]["train_step"]
        out += [(name, f"training {label}", t[key]["images_per_s"], step)
                for key, label in (("reference", "(a) reference-style"),
                                   ("tensors_nchw", "(b) tensors, NCHW"), ("trainer", "(c) trainer"))]
    for name, result in results["inference"].items():
        out += [(name, f"inference, {r['backend']} (batch {r['best_batch']:,})", r["images_per_s"],
                 results["flops"][name]["forward"]) for r in result["backends"]]
    return out


def _limit_section(results: dict[str, Any]) -> list[str]:
    peak, threads = results["peak"], results["machine"]["threads"]
    where = results["machine"]["gpu"] or f"{threads} CPU thread(s)"
    lines = ["## The limit", "",
             "FLOPs per image counted with `torch.utils.flop_counter.FlopCounterMode` (convolutions; "
             "elementwise operations, pooling and the optimizer update are not counted):", ""]
    rows = [[_title(n), f"{f['forward']:,.0f}", f"{f['train_step']:,.0f}",
             _ratio(f["train_step"], f["forward"])] for n, f in results["flops"].items()]
    lines += _table(["model", "forward", "training step (forward + backward)", "step / forward"], rows)
    lines += [f"Peak: **{peak['gflop_per_s']:,.1f} GFLOP/s**, measured (not theoretical) as the best of "
              f"{peak['repeats']} {peak['size']}x{peak['size']} float32 matmuls on {where} (median "
              f"{peak['median_gflop_per_s']:,.1f} GFLOP/s). Each throughput figure as a fraction of it "
              "(images/s x FLOPs per image / peak; int8 operations are counted as FLOPs against the float32 "
              "peak):", ""]
    rows = [[_title(n), figure, _rate(rate), f"{rate * flops / 1e9:,.2f}",
             f"{rate * flops / 1e9 / peak['gflop_per_s']:.2%}"]
            for n, figure, rate, flops in _peak_fractions(results)]
    return [*lines, *_table(["model", "figure", "images/s", "GFLOP/s", "of peak"], rows, left=2)]


def _limits_paragraph(results: dict[str, Any]) -> list[str]:
    """'What limits it', built from this run's figures only."""
    name = "medium" if "medium" in results["training"] else next(iter(results["training"]))
    t, flops, peak = results["training"][name], results["flops"][name], results["peak"]["gflop_per_s"]
    trainer, reference = t["trainer"]["images_per_s"], t["reference"]["images_per_s"]
    fraction = trainer * flops["train_step"] / 1e9 / peak
    pipeline = t["reference_pipeline_only"]["images_per_s"]
    augmentation = t["augmentation_only"]["images_per_s"]
    # Judgements are only printed where the figures bear them out.
    sentences = [
        f"On {_title(name)} the trainer (c) runs {trainer / reference:.2f}x as fast as the reference-style "
        "loop (a).",
        f"In (a) the per-image PIL pipeline alone runs at {_rate(pipeline)} images/s, "
        f"{reference / pipeline:.0%} of (a)'s step time; in the trainer batched augmentation takes "
        f"{trainer / augmentation:.0%} of the step.",
        f"Moving from (b) to (c), channels_last alone changes throughput by "
        f"{t['trainer']['images_per_s'] / t['tensors_nchw']['images_per_s']:.2f}x.",
        f"A training step costs {flops['train_step'] / 1e6:.1f} MFLOP per image, so the trainer's "
        f"{_rate(trainer)} images/s is {fraction:.2%} of the measured matmul peak"
        + (": arithmetic is not the limit; convolutions of at most 16 channels are too small to keep "
           "the matmul units busy." if fraction < 0.25 else "."),
    ]
    threads = results.get("threads")
    if threads and len(threads["by_threads"]) > 1:
        rates = threads["by_threads"]
        counts = list(rates)
        sentences.append(f"{counts[-1]} threads instead of 1 give "
                         f"{rates[counts[-1]]['images_per_s'] / rates[counts[0]]['images_per_s']:.2f}x.")
    rows = results["inference"].get(name, {}).get("backends", [])
    if rows:
        fastest = max(rows, key=lambda r: r["images_per_s"])
        quickest = min(rows, key=lambda r: r["latency_us_median"])
        # Batch-1 latency against the per-image time of the same backend at its best batch size.
        per_image_us = 1e6 / quickest["images_per_s"]
        slower = quickest["latency_us_median"] / per_image_us
        sentences.append(
            f"For inference the fastest is {fastest['backend']} at {_rate(fastest['images_per_s'])} images/s "
            f"(batch {fastest['best_batch']:,}); at batch 1 the lowest median latency is "
            f"{quickest['backend']}'s {quickest['latency_us_median']:.0f} µs, {slower:.1f}x its per-image "
            f"time at batch {quickest['best_batch']:,} ({per_image_us:.0f} µs)"
            + (": at batch 1 the fixed cost of a call, not the arithmetic, sets the latency." if slower > 3
               else "."))
    return ["## What limits it", "", " ".join(sentences), ""]


def render_markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmarks", "",
             "Generated on this machine by (all numbers below come from this one run; the raw figures are in "
             "`benchmarks.json` beside this file):", "", "```bash", results["command"], "```", ""]
    if results["quick"]:
        lines += ["**Quick mode (`--quick`): few, short windows on small subsets. A smoke test; do not quote "
                  "these figures.**", ""]
    for section in (_machine_section, _training_section, _tta_section, _inference_section, _memory_section,
                    _limit_section, _limits_paragraph):
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


README_BLOCK = GeneratedBlock("speed-table", "tinydigits bench")
README_BACKENDS = ("PyTorch eager", "ONNX Runtime fp32", "OpenVINO fp32", "OpenVINO bf16")


def readme_table(results: dict[str, Any]) -> str:
    """The README's summary of the inference section: images/s over the test set (best batch)
    per engine, how many predictions bf16 changes, and the best batch-1 latency."""
    rows = []
    for name, result in results["inference"].items():
        backends = {row["backend"]: row for row in result["backends"]}
        cells = [_title(name)]
        for backend in README_BACKENDS:
            row = backends.get(backend)
            differs = row.get("differs_from_pytorch") if row else None
            cells.append("not run" if row is None else _rate(row["images_per_s"])
                         + (f" ({differs} differ)" if differs else ""))
        single = backends.get("ONNX Runtime fp32", backends["PyTorch eager"])  # what `auto` runs one on
        cells.append(f"{single['latency_us_median']:.0f} µs ({single['backend']})")
        rows.append(cells)
    header = ["model", *(f"{b}, images/s" for b in README_BACKENDS), "one picture, median"]
    return "\n".join(markdown_table(header, rows, left=1)) + "\n"
