"""The C export on microcontrollers: its footprint for Cortex-M0+ and Cortex-M4, and the
model run on QEMU's emulated Cortex-M3 (mps2-an385) and Cortex-M4 (mps2-an386) boards,
checked against the host build.

``tinydigits mcu`` exports each model to C (:mod:`tinydigits.deploy.c_export`), runs it on
the host over the 10,000 test images, cross-compiles it with ``arm-none-eabi-gcc -Os`` and
reads flash and RAM with ``arm-none-eabi-size`` and a stack bound from GCC's call graph,
then runs it bare metal under ``qemu-system-arm`` on the first test images: instructions
per image (and per multiply-accumulate) and the stack's measured high-water mark. The
Cortex-M4 build takes the kernels' DSP path (SMLAD), the others the portable C. The tools
are Debian's ``gcc-arm-none-eabi`` and ``qemu-system-arm``, which ``scripts/setup.sh``
installs.
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
from ..weights import get_weights, load_model, pretrained_path
from .commands import tinydigits_line

CPUS = ("cortex-m0plus", "cortex-m4")
QEMU_BOARDS = {"cortex-m3": "mps2-an385", "cortex-m4": "mps2-an386"}  # CPU -> QEMU's board with it
QEMU_CPU = "cortex-m3"  # the board of the README's table
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
    code_bytes: int  # .text: the kernels, the layer calls, libgcc's helpers
    table_bytes: int  # .rodata: weights and every other const table
    buffer_bytes: int  # .bss: the rings of activation rows and the average's sums
    stack_bytes: int  # a bound: the deepest call chain of GCC's call graph, plus every libgcc frame

    @property
    def flash_bytes(self) -> int:
        return self.code_bytes + self.table_bytes

    @property
    def ram_bytes(self) -> int:
        return self.buffer_bytes + self.stack_bytes


_CI_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "[^"\\]*\\n[^"\\]*\\n(\d+) bytes \((\w+)\)" \}')
_CI_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')


def _libgcc_frames(elf: Path, own: set[str]) -> int:
    """The stack of every libgcc routine in the link, summed (a bound on any chain of them):
    from the disassembly, each routine's pushes and ``sub sp`` immediates."""
    listing = _run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", str(elf)], "objdump")
    total, name = 0, ""
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(\w+)>:", line)
        if header:
            name = header[1]
            continue
        if not name or name in own:
            continue
        push = re.search(r"\t(?:push|stmdb\s+sp!,)\s*\{([^}]*)\}", line)
        if push:
            total += 4 * len(_registers(push[1]))
        sub = re.search(r"\tsub(?:\.w)?\s+sp, (?:sp, )?#(\d+)", line)
        if sub:
            total += int(sub[1])
    return total


def _registers(text: str) -> list[str]:
    """r4-r7, lr -> [r4, r5, r6, r7, lr]."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        span = re.fullmatch(r"r(\d+)-r(\d+)", part)
        names += [f"r{i}" for i in range(int(span[1]), int(span[2]) + 1)] if span else [part]
    return names


def stack_bound(callgraph: Path, elf: Path, entry: str) -> int:
    """A bound on the stack that ``entry`` needs: the deepest chain of frames in GCC's call
    graph (``-fcallgraph-info=su``; the export has no recursion and no calls through pointers,
    which the graph would not show), plus the frames of every libgcc routine linked."""
    text = callgraph.read_text()
    frames = {title.rsplit(":", 1)[-1]: int(size) for title, size, kind in _CI_NODE.findall(text)}
    if any(kind != "static" for _, _, kind in _CI_NODE.findall(text)):
        raise McuError(f"{callgraph}: a frame of dynamic size; expected static frames only")
    calls: dict[str, set[str]] = {}
    for source, target in _CI_EDGE.findall(text):
        calls.setdefault(source.rsplit(":", 1)[-1], set()).add(target.rsplit(":", 1)[-1])

    def deepest(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise McuError(f"{callgraph}: {name} is recursive")
        below = [deepest(callee, (*path, name)) for callee in calls.get(name, ()) if callee in frames]
        return frames.get(name, 0) + max(below, default=0)

    if entry not in frames:
        raise McuError(f"{callgraph}: no {entry}")
    return deepest(entry, ()) + _libgcc_frames(elf, set(frames))


def footprint(source: Path, prefix: str, cpu: str, work: Path) -> Footprint:
    """Cross-compile ``source`` for ``cpu`` and measure it."""
    obj, elf = work / f"{prefix}-{cpu}.o", work / f"{prefix}-{cpu}.elf"
    flags = [f"-mcpu={cpu}", "-mthumb", *CROSS_FLAGS]
    _run(["arm-none-eabi-gcc", *flags, "-fstack-usage", "-fcallgraph-info=su", "-c", str(source), "-o",
          str(obj)], f"arm-none-eabi-gcc for {cpu}")
    _run(["arm-none-eabi-gcc", *flags, "-nostdlib", "-nostartfiles", "-Wl,--gc-sections",
          f"-Wl,-e,{prefix}_predict", str(obj), "-lgcc", "-o", str(elf)], f"linking for {cpu}")
    sections = dict(re.findall(r"^(\.\w+)\s+(\d+)", _run(["arm-none-eabi-size", "-A", str(elf)], "size"),
                               flags=re.MULTILINE))
    if int(sections.get(".data", 0)):
        raise McuError(f"{source}: has initialized writable data; expected const tables and zeroed buffers")
    stack = stack_bound(obj.with_suffix(".ci"), elf, f"{prefix}_predict")
    return Footprint(cpu, int(sections.get(".text", 0)), int(sections.get(".rodata", 0)),
                     int(sections.get(".bss", 0)), stack)


@dataclass(frozen=True)
class QemuRun:
    cpu: str
    predictions: np.ndarray
    instructions_per_image: int
    stack_bytes: int  # the measured high-water mark of the model's calls


def run_on_qemu(source: Path, header: Path, prefix: str, images: torch.Tensor, work: Path,
                cpu: str = QEMU_CPU) -> QemuRun:
    """Build the firmware around ``source`` for the emulated ``cpu`` (a key of QEMU_BOARDS),
    run it on ``images`` (uint8 [N, 28, 28]) and read its predictions, instruction count and
    stack high-water mark."""
    harness = resources.files("tinydigits.lab").joinpath("firmware")
    images_file = work / "images.bin"
    images_file.write_bytes(images.numpy().astype(np.uint8).tobytes())
    elf = work / f"{prefix}-qemu-{cpu}.elf"
    with resources.as_file(harness) as harness_dir:
        defines = [f"-DPREDICT={prefix}_predict", f'-DMODEL_HEADER="{header.name}"',
                   f'-DIMAGES_FILE="{images_file}"', f"-DIMAGE_COUNT={len(images)}"]
        _run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", *CROSS_FLAGS, "-nostdlib", "-nostartfiles",
              f"-T{harness_dir / 'mps2_an385.ld'}", f"-I{header.parent}", *defines,
              str(harness_dir / "firmware.c"), str(source), "-lgcc", "-o", str(elf)], "building the firmware")
    output = _run(["qemu-system-arm", "-M", QEMU_BOARDS[cpu], "-cpu", cpu, "-nographic", "-monitor", "none",
                   "-serial", "none", "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
                   "-kernel", str(elf)], "qemu-system-arm")
    found = re.search(r"predictions: (\d+)\nticks: (\d+)\n"
                      r"calibration ticks for (\d+) instructions: (\d+)\nstack bytes: (\d+)", output)
    if found is None or len(found[1]) != len(images):
        raise McuError(f"unexpected output from the emulated board: {output.strip()[:200]!r}")
    predictions = np.array([int(digit) for digit in found[1]])
    ticks, calibration_instructions, calibration_ticks = (int(found[i]) for i in (2, 3, 4))
    return QemuRun(cpu, predictions, round(ticks * calibration_instructions / max(calibration_ticks, 1)),
                   int(found[5]))


# ------------------------------------------------------------------------ the report


def measure(models: list[str], qemu_images: int = 1000, data_dir: str | Path | None = None) -> dict[str, Any]:
    """For each model: the C export's accuracy and speed on the host, its agreement with the
    int8 ONNX export, its footprint per CPU and its runs on QEMU's Cortex-M3 and M4."""
    from ..deploy.c_export import export_c, lower, macs, verify_c
    from ..deploy.engines import open_exported
    from ..deploy.export import calibration_subset, export_onnx_int8, int8_onnx_proto

    missing = missing_tools()
    if missing:
        raise McuError(f"{', '.join(missing)} not installed; run scripts/setup.sh "
                       f"(Debian: gcc-arm-none-eabi, qemu-system-arm)")
    mnist = data.load_mnist(data_dir)
    test_inputs = data.normalize(mnist.test_images)
    calibration = calibration_subset(mnist.train_images)
    report: dict[str, Any] = {
        "models": {}, "qemu": {"boards": QEMU_BOARDS, "images": qemu_images},
        "options": {"models": models, "qemu_images": qemu_images}, **provenance()}
    for name in models:
        spec = get_spec(name)
        prefix = f"tinydigits_{spec.name}"
        model = load_model(name, pretrained_path(name))
        per_image = macs(lower(int8_onnx_proto(model, calibration)))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export = export_c(model, name, work / "c", calibration)
            host = verify_c(export, mnist.test_images, mnist.test_labels)
            onnx_path = export_onnx_int8(model, work / "int8.onnx", calibration)
            onnx_run = open_exported(onnx_path, "onnxruntime", threads=1)
            onnx_predictions = onnx_run(test_inputs).argmax(1).numpy()
            sizes = [footprint(export.source, prefix, cpu, work) for cpu in CPUS]
            first = mnist.test_images[:qemu_images]
            runs = [run_on_qemu(export.source, export.header, prefix, first, work, c) for c in QEMU_BOARDS]
        float_accuracy = evaluate(model, test_inputs, mnist.test_labels).accuracy
        onnx_accuracy = 100.0 * float((onnx_predictions == mnist.test_labels.numpy()).mean())
        report["models"][name] = {
            "title": spec.title,
            "weights_sha256": get_weights(name).sha256,
            "parameters": spec.parameters,
            "macs_per_image": per_image,
            "float_accuracy": round(float_accuracy, 2),
            "onnx_int8_accuracy": round(onnx_accuracy, 2),
            "c_accuracy": round(host.accuracy, 2),
            "c_agrees_with_onnx_int8": round(100.0 * float((host.predictions == onnx_predictions).mean()), 2),
            "host_images_per_second": round(host.images_per_second),
            "footprint": {size.cpu: {**asdict(size), "flash_bytes": size.flash_bytes,
                                     "ram_bytes": size.ram_bytes} for size in sizes},
            "qemu": {run.cpu: {
                "board": QEMU_BOARDS[run.cpu],
                "agrees_with_host": int((run.predictions == host.predictions[:qemu_images]).sum()),
                "instructions_per_image": run.instructions_per_image,
                "instructions_per_mac": round(run.instructions_per_image / per_image, 2),
                "stack_bytes_measured": run.stack_bytes,
            } for run in runs},
        }
    return report


def _kb(count: int) -> str:
    return f"{count / 1024:.1f} KB"


def readme_table(report: dict[str, Any]) -> str:
    """The README's table of the C export, from a :func:`measure` report."""
    header = ["model", "weights (const tables)", "flash, M0+ / M4", "RAM, M0+ (buffers + stack)",
              "accuracy: C / float", "C = ONNX int8", "QEMU M3 / M4: instructions per MAC",
              "QEMU M3: instructions per image", "host, one core"]
    rows = []
    for entry in report["models"].values():
        m0, m4 = (entry["footprint"][cpu] for cpu in CPUS)
        m3_run, m4_run = (entry["qemu"][cpu] for cpu in QEMU_BOARDS)
        rows.append([
            entry["title"], _kb(m0["table_bytes"]), f"{_kb(m0['flash_bytes'])} / {_kb(m4['flash_bytes'])}",
            f"{_kb(m0['ram_bytes'])} ({m0['buffer_bytes']:,} + {m0['stack_bytes']:,} B)",
            f"{entry['c_accuracy']:.2f}% / {entry['float_accuracy']:.2f}%",
            f"{entry['c_agrees_with_onnx_int8']:.2f}%",
            f"{m3_run['instructions_per_mac']:.2f} / {m4_run['instructions_per_mac']:.2f}",
            f"{m3_run['instructions_per_image']:,}",
            f"{entry['host_images_per_second']:,} images/s",
        ])
    return "\n".join(markdown_table(header, rows, left=1)) + "\n"


def render_markdown(report: dict[str, Any], output: str | Path) -> str:
    """docs/MCU.md: the table, how each figure was measured, and the per-CPU details."""
    images = report["qemu"]["images"]
    boards = report["qemu"]["boards"]
    agreement = ", ".join(f"{e['qemu'][cpu]['agrees_with_host']:,} ({e['title']}, {cpu})"
                          for e in report["models"].values() for cpu in boards)
    lines = ["# The C export on microcontrollers", "",
             "Generated by (every figure below comes from this one run; the raw figures are in "
             "`mcu.json` beside this file):", "", "```bash",
             tinydigits_line("mcu", {**report["options"], "output": str(output)}), "```", "",
             readme_table(report).rstrip("\n"), "",
             "- **weights**: the `const` arrays of `tinydigits_<model>.c` (int8 weights reordered for the "
             "kernels, int32 biases and multipliers, shifts, the 256-byte input table, the row schedule), "
             "`.rodata` of an `arm-none-eabi-gcc -Os` link that keeps only what `tinydigits_<model>_predict` "
             "reaches.",
             "- **flash**: that `.rodata` plus `.text` (the kernels, the layer calls and libgcc's helpers), "
             "for Cortex-M0+ (`-mcpu=cortex-m0plus`) and Cortex-M4 (`-mcpu=cortex-m4`).",
             "- **RAM**: `.bss` (the rings of activation rows: the network runs row by row, each layer "
             "keeping only the rows its kernel spans, and the average pooling's sums) plus a bound on the "
             "stack: the deepest call chain in GCC's call graph (`-fcallgraph-info=su`; the code has no "
             "recursion and no calls through pointers) plus the frames of every libgcc routine linked. "
             "The stack measured on QEMU is below, beside it.",
             "- **accuracy**: the C model compiled for this machine (`cc -std=c99 -O2`, `verify.c`) on the "
             "10,000 test images, beside the PyTorch float model; **C = ONNX int8**: the share of test "
             "images on which it predicts the same digit as `tinydigits export --int8` run by ONNX Runtime.",
             "- **QEMU**: the firmware runs bare metal on "
             + " and ".join(f"`qemu-system-arm -M {board}` ({cpu})" for cpu, board in boards.items())
             + f" over the first {images:,} test images; instructions per image come from SysTick under "
             "`-icount shift=0`, calibrated on a loop of known length, and **instructions per MAC** divide "
             "them by the model's multiply-accumulates per image (every convolution output before its "
             "pooling, times its kernel). The Cortex-M4 build takes the kernels' DSP path (`SMLAD`, "
             "behind `__ARM_FEATURE_DSP`), the Cortex-M3 build the portable C. Images on which each "
             f"predicted the same digit as the host build: {agreement}.",
             "- **host**: images per second of the same C on one core of the machine that ran this.",
             "", "## Per CPU", ""]
    header = ["model", "CPU", "code (.text)", "tables (.rodata)", "buffers (.bss)", "stack (bound)", "flash",
              "RAM"]
    keys = ("code_bytes", "table_bytes", "buffer_bytes", "stack_bytes", "flash_bytes", "ram_bytes")
    rows = [[entry["title"], cpu, *(f"{size[key]:,} B" for key in keys)]
            for entry in report["models"].values() for cpu, size in entry["footprint"].items()]
    lines += markdown_table(header, rows, left=2)
    lines += ["", "## On QEMU", ""]
    header = ["model", "CPU (board)", "kernels", "MACs per image", "instructions per image", "per MAC",
              "stack, measured", "same digit as the host"]
    rows = [[entry["title"], f"{cpu} ({run['board']})", "DSP (SMLAD)" if cpu == "cortex-m4" else "portable C",
             f"{entry['macs_per_image']:,}", f"{run['instructions_per_image']:,}",
             f"{run['instructions_per_mac']:.2f}", f"{run['stack_bytes_measured']:,} B",
             f"{run['agrees_with_host']:,} of {images:,}"]
            for entry in report["models"].values() for cpu, run in entry["qemu"].items()]
    lines += markdown_table(header, rows, left=3)
    lines += ["", "The stack is measured by painting 16 KB below the firmware's `main` with a pattern before "
              "the first image and finding, after the last, the lowest word the model's calls overwrote.",
              "", f"tinydigits {report['package_version']}, commit {report['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | Path) -> Path:
    """Write the Markdown report and ``mcu.json`` beside it."""
    output = Path(output)
    write_text(output.with_name("mcu.json"), json.dumps(report, indent=2) + "\n")
    return write_text(output, render_markdown(report, output))
