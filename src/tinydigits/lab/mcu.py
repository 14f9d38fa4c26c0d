"""The C export on microcontrollers: its footprint for Cortex-M0+ and Cortex-M4, and the
model run on QEMU's emulated Cortex-M3 board (mps2-an385), checked against the host build.

``tinydigits mcu`` exports each model to C (:mod:`tinydigits.deploy.c_export`), runs it on
the host over the 10,000 test images, cross-compiles it with ``arm-none-eabi-gcc -Os`` and
reads flash and RAM with ``arm-none-eabi-size``, then runs it bare metal under
``qemu-system-arm`` on the first test images. The tools are Debian's ``gcc-arm-none-eabi``
and ``qemu-system-arm``, which ``scripts/setup.sh`` installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data
from ..errors import TinyDigitsError
from ..evaluate import evaluate
from ..io import write_text
from ..markdown import GeneratedBlock, markdown_table
from ..models import get_spec
from ..runtime import provenance
from ..weights import load_model, pretrained_path
from .commands import tinydigits_line

CPUS = ("cortex-m0plus", "cortex-m4")
QEMU_BOARD, QEMU_CPU = "mps2-an385", "cortex-m3"
CROSS_FLAGS = ("-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-ffreestanding",
               "-fno-tree-loop-distribute-patterns", "-ffunction-sections", "-fdata-sections")
README_BLOCK = GeneratedBlock("mcu-table", "tinydigits mcu")


class McuError(TinyDigitsError):
    """A cross-compilation or emulation step failed; the message is one line."""


def missing_tools() -> list[str]:
    """The cross tools that are not installed (empty when all are)."""
    return [tool for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
            if shutil.which(tool) is None]


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise McuError(f"{argv[0]} is not installed; run scripts/setup.sh (Debian: gcc-arm-none-eabi, "
                       f"qemu-system-arm)") from None
    except subprocess.TimeoutExpired:
        raise McuError(f"{what}: no answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        first = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[0]
        raise McuError(f"{what} failed: {first}")
    return done.stdout + done.stderr  # QEMU writes semihosting output to stderr


@dataclass(frozen=True)
class Footprint:
    """What the model alone needs on one CPU, from ``arm-none-eabi-size`` of a link that keeps
    only what ``tinydigits_<model>_predict`` reaches (with libgcc's helpers)."""

    cpu: str
    code_bytes: int  # .text: the kernels, the layer calls, libgcc's 64-bit multiply
    table_bytes: int  # .rodata: weights and every other const table
    buffer_bytes: int  # .bss: the activation buffers
    stack_bytes: int  # the sum of every function's frame (-fstack-usage): an upper bound

    @property
    def flash_bytes(self) -> int:
        return self.code_bytes + self.table_bytes

    @property
    def ram_bytes(self) -> int:
        return self.buffer_bytes + self.stack_bytes


def footprint(source: Path, prefix: str, cpu: str, work: Path) -> Footprint:
    """Cross-compile ``source`` for ``cpu`` and measure it."""
    obj, elf = work / f"{prefix}-{cpu}.o", work / f"{prefix}-{cpu}.elf"
    flags = [f"-mcpu={cpu}", "-mthumb", *CROSS_FLAGS]
    _run(["arm-none-eabi-gcc", *flags, "-fstack-usage", "-c", str(source), "-o", str(obj)],
         f"arm-none-eabi-gcc for {cpu}")
    _run(["arm-none-eabi-gcc", *flags, "-nostdlib", "-nostartfiles", "-Wl,--gc-sections",
          f"-Wl,-e,{prefix}_predict", str(obj), "-lgcc", "-o", str(elf)], f"linking for {cpu}")
    sections = dict(re.findall(r"^(\.\w+)\s+(\d+)", _run(["arm-none-eabi-size", "-A", str(elf)], "size"),
                               flags=re.MULTILINE))
    if int(sections.get(".data", 0)):
        raise McuError(f"{source}: has initialized writable data; expected const tables and zeroed buffers")
    stack = sum(int(match) for match in re.findall(r"\t(\d+)\t", obj.with_suffix(".su").read_text()))
    return Footprint(cpu, int(sections.get(".text", 0)), int(sections.get(".rodata", 0)),
                     int(sections.get(".bss", 0)), stack)


@dataclass(frozen=True)
class QemuRun:
    predictions: np.ndarray
    instructions_per_image: int


def run_on_qemu(source: Path, header: Path, prefix: str, images: torch.Tensor, work: Path) -> QemuRun:
    """Build the firmware around ``source`` for the emulated Cortex-M3, run it on ``images``
    (uint8 [N, 28, 28]) and read its predictions and instruction count."""
    harness = resources.files("tinydigits.lab").joinpath("firmware")
    images_file = work / "images.bin"
    images_file.write_bytes(images.numpy().astype(np.uint8).tobytes())
    elf = work / f"{prefix}-qemu.elf"
    with resources.as_file(harness) as harness_dir:
        defines = [f"-DPREDICT={prefix}_predict", f'-DMODEL_HEADER="{header.name}"',
                   f'-DIMAGES_FILE="{images_file}"', f"-DIMAGE_COUNT={len(images)}"]
        _run(["arm-none-eabi-gcc", f"-mcpu={QEMU_CPU}", "-mthumb", *CROSS_FLAGS, "-nostdlib", "-nostartfiles",
              f"-T{harness_dir / 'mps2_an385.ld'}", f"-I{header.parent}", *defines,
              str(harness_dir / "firmware.c"), str(source), "-lgcc", "-o", str(elf)], "building the firmware")
    output = _run(["qemu-system-arm", "-M", QEMU_BOARD, "-cpu", QEMU_CPU, "-nographic", "-monitor", "none",
                   "-serial", "none", "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
                   "-kernel", str(elf)], "qemu-system-arm")
    found = re.search(r"predictions: (\d+)\nticks: (\d+)\n"
                      r"calibration ticks for (\d+) instructions: (\d+)", output)
    if found is None or len(found[1]) != len(images):
        raise McuError(f"unexpected output from the emulated board: {output.strip()[:200]!r}")
    predictions = np.array([int(digit) for digit in found[1]])
    ticks, calibration_instructions, calibration_ticks = (int(found[i]) for i in (2, 3, 4))
    return QemuRun(predictions, round(ticks * calibration_instructions / max(calibration_ticks, 1)))


# ------------------------------------------------------------------------ the report


def measure(models: list[str], qemu_images: int = 1000, data_dir: str | Path | None = None) -> dict[str, Any]:
    """For each model: the C export's accuracy and speed on the host, its agreement with the
    int8 ONNX export, its footprint per CPU and its run on QEMU."""
    from ..deploy.c_export import export_c, verify_c
    from ..deploy.engines import open_exported
    from ..deploy.export import calibration_subset, export_onnx_int8

    missing = missing_tools()
    if missing:
        raise McuError(f"{', '.join(missing)} not installed; run scripts/setup.sh "
                       f"(Debian: gcc-arm-none-eabi, qemu-system-arm)")
    mnist = data.load_mnist(data_dir)
    test_inputs = data.normalize(mnist.test_images)
    calibration = calibration_subset(mnist.train_images)
    report: dict[str, Any] = {
        "models": {}, "qemu": {"board": QEMU_BOARD, "cpu": QEMU_CPU, "images": qemu_images},
        "options": {"models": models, "qemu_images": qemu_images}, **provenance()}
    for name in models:
        spec = get_spec(name)
        prefix = f"tinydigits_{spec.name}"
        model = load_model(name, pretrained_path(name))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export = export_c(model, name, work / "c", calibration)
            host = verify_c(export, mnist.test_images, mnist.test_labels)
            onnx_path = export_onnx_int8(model, work / "int8.onnx", calibration)
            onnx_run = open_exported(onnx_path, "onnxruntime", threads=1)
            onnx_predictions = onnx_run(test_inputs).argmax(1).numpy()
            sizes = [footprint(export.source, prefix, cpu, work) for cpu in CPUS]
            qemu = run_on_qemu(export.source, export.header, prefix, mnist.test_images[:qemu_images], work)
        float_accuracy = evaluate(model, test_inputs, mnist.test_labels).accuracy
        onnx_accuracy = 100.0 * float((onnx_predictions == mnist.test_labels.numpy()).mean())
        report["models"][name] = {
            "title": spec.title,
            "parameters": spec.parameters,
            "float_accuracy": round(float_accuracy, 2),
            "onnx_int8_accuracy": round(onnx_accuracy, 2),
            "c_accuracy": round(host.accuracy, 2),
            "c_agrees_with_onnx_int8": round(100.0 * float((host.predictions == onnx_predictions).mean()), 2),
            "host_images_per_second": round(host.images_per_second),
            "footprint": {size.cpu: {**asdict(size), "flash_bytes": size.flash_bytes,
                                     "ram_bytes": size.ram_bytes} for size in sizes},
            "qemu_agrees_with_host": int((qemu.predictions == host.predictions[:qemu_images]).sum()),
            "qemu_instructions_per_image": qemu.instructions_per_image,
        }
    return report


def _kb(count: int) -> str:
    return f"{count / 1024:.1f} KB"


def readme_table(report: dict[str, Any]) -> str:
    """The README's table of the C export, from a :func:`measure` report."""
    header = ["model", "weights (const tables)", "flash, M0+ / M4", "RAM (buffers + stack)",
              "accuracy: C / float", "C = ONNX int8", f"QEMU {QEMU_CPU}: instructions per image",
              "host, one core"]
    rows = []
    for entry in report["models"].values():
        m0, m4 = (entry["footprint"][cpu] for cpu in CPUS)
        rows.append([
            entry["title"], _kb(m0["table_bytes"]), f"{_kb(m0['flash_bytes'])} / {_kb(m4['flash_bytes'])}",
            f"{_kb(m0['ram_bytes'])} ({m0['buffer_bytes']:,} + {m0['stack_bytes']:,} B)",
            f"{entry['c_accuracy']:.2f}% / {entry['float_accuracy']:.2f}%",
            f"{entry['c_agrees_with_onnx_int8']:.2f}%",
            f"{entry['qemu_instructions_per_image']:,}",
            f"{entry['host_images_per_second']:,} images/s",
        ])
    return "\n".join(markdown_table(header, rows, left=1)) + "\n"


def render_markdown(report: dict[str, Any], output: str | Path) -> str:
    """docs/MCU.md: the table, how each figure was measured, and the per-CPU details."""
    images = report["qemu"]["images"]
    lines = ["# The C export on microcontrollers", "",
             "Generated by (every figure below comes from this one run; the raw figures are in "
             "`mcu.json` beside this file):", "", "```bash",
             tinydigits_line("mcu", {**report["options"], "output": str(output)}), "```", "",
             readme_table(report).rstrip("\n"), "",
             "- **weights**: the `const` arrays of `tinydigits_<model>.c` (int8 weights, int32 biases and "
             "multipliers, shifts, the 256-byte input table), `.rodata` of an `arm-none-eabi-gcc -Os` link "
             "that keeps only what `tinydigits_<model>_predict` reaches.",
             "- **flash**: that `.rodata` plus `.text` (the kernels, the layer calls and libgcc's 64-bit "
             "multiply), for Cortex-M0+ (`-mcpu=cortex-m0plus`) and Cortex-M4 (`-mcpu=cortex-m4`).",
             "- **RAM**: `.bss` (the two activation buffers, reused by every call) plus the stack, the sum "
             "of every function's frame from `-fstack-usage` (an upper bound on the deepest call chain).",
             "- **accuracy**: the C model compiled for this machine (`cc -std=c99 -O2`, `verify.c`) on the "
             "10,000 test images, beside the PyTorch float model; **C = ONNX int8**: the share of test "
             "images on which it predicts the same digit as `tinydigits export --int8` run by ONNX Runtime.",
             f"- **QEMU**: the firmware runs bare metal on `qemu-system-arm -M {QEMU_BOARD}` over the first "
             f"{images:,} test images; instructions per image come from SysTick under `-icount shift=0`, "
             "calibrated on a loop of known length. It predicted the same digit as the host build on "
             + ", ".join(f"{e['qemu_agrees_with_host']:,} of {images:,} ({e['title']})"
                         for e in report["models"].values()) + " images.",
             "- **host**: images per second of the same C on one core of the machine that ran this.",
             "", "## Per CPU", ""]
    header = ["model", "CPU", "code (.text)", "tables (.rodata)", "buffers (.bss)", "stack (bound)", "flash",
              "RAM"]
    keys = ("code_bytes", "table_bytes", "buffer_bytes", "stack_bytes", "flash_bytes", "ram_bytes")
    rows = [[entry["title"], cpu, *(f"{size[key]:,} B" for key in keys)]
            for entry in report["models"].values() for cpu, size in entry["footprint"].items()]
    lines += markdown_table(header, rows, left=2)
    lines += ["", f"tinydigits {report['package_version']}, commit {report['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | Path) -> Path:
    """Write the Markdown report and ``mcu.json`` beside it."""
    output = Path(output)
    write_text(output.with_name("mcu.json"), json.dumps(report, indent=2) + "\n")
    return write_text(output, render_markdown(report, output))
