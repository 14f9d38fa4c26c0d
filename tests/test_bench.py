"""The benchmark: FLOP counts, the reference-style data pipeline, and a --quick `tinydigits bench` run."""

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from tinydigits import data
from tinydigits.analysis import summarize
from tinydigits.cli import main
from tinydigits.lab.bench import render_markdown
from tinydigits.lab.bench.measure import BATCH, ReferenceStyleDataset, count_flops
from tinydigits.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_flops_are_positive_and_a_training_step_costs_more_than_a_forward_pass(name):
    flops = count_flops(name)
    assert 0 < flops["forward"] < flops["train_step"]
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate: the MACs `tinydigits summary` reports.
    assert flops["forward"] == 2 * summarize(build_model(name)).total_macs


def test_reference_style_dataset_yields_normalized_tensors(mnist):
    images, labels = mnist.train_images[:512], mnist.train_labels[:512]
    image, label = ReferenceStyleDataset(images, labels, degrees=5.0)[7]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == int(labels[7])
    # Not rotated, it is exactly what the trainer's normalize makes of the same image.
    unrotated = ReferenceStyleDataset(images, labels, degrees=0.0)[7][0]
    torch.testing.assert_close(unrotated, data.normalize(images[7:8])[0])

    dataset = ReferenceStyleDataset(images, labels)
    batch, targets = next(iter(torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)))
    assert batch.shape == (BATCH, 1, 28, 28) and targets.shape == (BATCH,)
    assert abs(float(batch.mean())) < 0.25 and 0.75 < float(batch.std()) < 1.25  # standardized
    # Rotation fills with 0, i.e. the normalized background, never with anything darker.
    assert float(batch.min()) == pytest.approx((0 - data.MEAN) / data.STD)


def test_a_contiguous_model_keeps_one_channel_batches_in_nchw():
    # Rung (b) relies on this: train_one_epoch's channels_last conversion of a 1-channel batch changes
    # nothing, so a model kept contiguous runs NCHW throughout while a channels_last one does not.
    batch = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    for layout, channels_last in ((torch.contiguous_format, False), (torch.channels_last, True)):
        model = build_model("medium").to(memory_format=layout)
        outputs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out, seen=outputs: seen.append(out))
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        model(batch)
        for hook in hooks:
            hook.remove()
        spatial = [out for out in outputs if out.shape[-1] > 1]
        assert all(out.is_contiguous(memory_format=torch.channels_last) == channels_last for out in spatial)
        assert all(out.is_contiguous() != channels_last for out in spatial)


def test_quick_bench_writes_the_report_and_the_raw_figures(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDIGITS_THREADS", "1")
    threads_before = torch.get_num_threads()
    output = tmp_path / "docs" / "BENCHMARKS.md"
    result = CliRunner().invoke(main, ["bench", "--quick", "--models", "ultrasmall", "--no-time-to-accuracy",
                                       "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads_before  # the process is left as it was
    text = output.read_text()
    for heading in ["Machine", "Training throughput", "Time to accuracy", "Inference", "Peak memory",
                    "The limit", "What limits it"]:
        assert f"\n## {heading}\n" in text
    assert "tinydigits bench --models ultrasmall --threads 1 --quick --no-time-to-accuracy" in text
    assert "Quick mode" in text and "Not measured in this run" in text

    raw = json.loads((tmp_path / "docs" / "benchmarks.json").read_text())
    assert raw["machine"]["threads"] == 1 and raw["time_to_accuracy"] is None
    training = raw["training"]["ultrasmall"]
    for rung in ("reference", "tensors_nchw", "trainer", "reference_pipeline_only", "augmentation_only"):
        assert training[rung]["images_per_s"] > 0 and len(training[rung]["windows"]) == 2
    assert "distill" not in training and "Distillation's cost" not in text  # no teachers in its recipe
    assert set(raw["threads"]["by_threads"]) == {"1", "2"}
    backends = {row["backend"]: row for row in raw["inference"]["ultrasmall"]["backends"]}
    expected = {"PyTorch eager", "PyTorch eager, BatchNorm folded", "TorchScript, frozen"}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        expected |= {"ONNX Runtime fp32", "ONNX Runtime int8"}
        if importlib.util.find_spec("openvino"):
            import openvino

            expected |= {"OpenVINO fp32"}
            if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                expected |= {"OpenVINO bf16"}
    assert set(backends) == expected
    assert backends["PyTorch eager"]["differs_from_pytorch"] is None  # the reference
    for exact in {"ONNX Runtime fp32", "OpenVINO fp32", "TorchScript, frozen"} & expected:
        assert backends[exact]["differs_from_pytorch"] == 0, exact
    for row in backends.values():
        assert row["accuracy"] > 97 and 0 < row["latency_us_median"] <= row["latency_us_p99"]
        assert f"| {row['backend']} | {row['accuracy']:.2f}% | " in text
    memory = raw["memory"]["ultrasmall"]
    for kind in ("train", "infer"):
        assert memory[kind]["peak_kib"] >= memory[kind]["after_imports_kib"] > 0
    assert 0 < raw["flops"]["ultrasmall"]["forward"] < raw["flops"]["ultrasmall"]["train_step"]
    assert raw["peak"]["gflop_per_s"] > 0

    # The same figures as a GPU run would give them: the card named, no thread table, ORT skipped.
    skipped = [{"backend": "ONNX Runtime fp32 and int8", "why": "CPU-only"}]
    gpu = {**raw, "threads": None, "time_to_accuracy": None,
           "machine": {**raw["machine"], "device": "cuda", "gpu": "NVIDIA Test Card",
                       "tf32": {"matmul": False, "cudnn": True}},
           "inference": {"ultrasmall": {**raw["inference"]["ultrasmall"],
                                        "backends": [backends["PyTorch eager"]], "skipped": skipped}},
           "memory": {"ultrasmall": {kind: {**row, "cuda_peak_allocated_bytes": 2**20}
                                     for kind, row in memory.items()}}}
    text = render_markdown(gpu)
    assert "| device | NVIDIA Test Card |" in text and "ONNX Runtime fp32 and int8 skipped: CPU-only" in text
    assert "thread counts" not in text and "1.0 MiB / 1.0 MiB" in text


def test_readme_speed_table_is_the_committed_benchmark():
    from pathlib import Path

    from tinydigits.lab.bench.report import README_BLOCK, readme_table

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "docs" / "benchmarks.json").read_text())
    assert README_BLOCK.read((root / "README.md").read_text()) == readme_table(results), (
        "README's speed table is stale: run `tinydigits bench --update-readme README.md`")



@pytest.fixture
def one_thread():
    """As the bench sets them: torch's default threads oversubscribe a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_digit_model_climbs_the_training_ladder(name, mnist, one_thread):
    """A model designed here (no reference notebook) runs the reference-style rung too; a recipe
    that runs its teachers at every step (Small's three Mediums) is timed with them in NCHW and
    in channels_last (as train loads them), and the report says the epoch's cost."""
    from dataclasses import asdict

    from tinydigits.lab.bench.measure import QUICK, training_throughput
    from tinydigits.lab.bench.report import _training_section

    rungs = training_throughput(name, mnist, torch.device("cpu"), QUICK, log=lambda line: None)
    assert all(rungs[rung]["images_per_s"] > 0 for rung in ("reference", "tensors_nchw", "trainer"))
    if name != "small":
        return
    assert rungs["teachers"] == 3 and rungs["epoch_images"] == 55_000
    for rung in ("trainer", "distill_nchw", "distill"):
        assert rungs[rung]["images_per_s"] > 0
    text = "\n".join(_training_section({"settings": asdict(QUICK), "training": {"small": rungs},
                                        "machine": {"device": "cpu", "threads": 1}}))
    assert "Distillation's cost" in text and "| MNIST-Small (`small`), 3 teachers |" in text
