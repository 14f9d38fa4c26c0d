"""The integer-only C export: compiled with the host compiler and run on all 10,000 test
images, compared with the float model and the int8 ONNX export; cross-compiled for
Cortex-M0+/M4 and run on QEMU's emulated Cortex-M3 (portable kernels) and Cortex-M4 (DSP
kernels) where Debian's cross tools are installed."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner

import tinydigits
from tinydigits import data
from tinydigits.cli import main
from tinydigits.deploy import ExportError
from tinydigits.deploy.c_export import (
    COMPILE_FLAGS,
    CExport,
    ConvLayer,
    _rings,
    _steps,
    export_c,
    find_compiler,
    lower,
    macs,
    quantized_multiplier,
    schedule,
    verify_c,
    write_test_idx,
)
from tinydigits.deploy.engines import onnx_session
from tinydigits.deploy.export import calibration_subset, export_onnx_int8, int8_onnx_proto
from tinydigits.errors import ConfigError
from tinydigits.lab import mcu
from tinydigits.models import get_spec
from tinydigits.weights import shipped_models

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no host C compiler (cc, gcc or clang)")
needs_cross = pytest.mark.skipif(
    bool(mcu.missing_tools()),
    reason=f"{', '.join(mcu.missing_tools())} not installed: run scripts/setup.sh "
           "(Debian packages gcc-arm-none-eabi and qemu-system-arm)")


class Exported:
    """One model exported to C and to int8 ONNX, with both run on the whole test set."""

    def __init__(self, name: str, folder: Path, mnist: data.MNIST) -> None:
        model = tinydigits.load_model(name, pretrained=True)
        calibration = calibration_subset(mnist.train_images)
        inputs = data.normalize(mnist.test_images)
        self.export: CExport = export_c(model, name, folder, calibration)
        self.host = verify_c(self.export, mnist.test_images, mnist.test_labels)
        session = onnx_session(export_onnx_int8(model, folder.parent / f"{name}-int8.onnx", calibration), 1)
        self.onnx_predictions = np.concatenate([session.run(None, {"images": inputs[i : i + 2000].numpy()})[0]
                                                .argmax(1) for i in range(0, len(inputs), 2000)])
        self.float_accuracy = tinydigits.evaluate(model, inputs, mnist.test_labels).accuracy


@pytest.fixture(scope="module")
def exported(mnist: data.MNIST, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    if find_compiler() is None:
        pytest.skip("no host C compiler")
    root = tmp_path_factory.mktemp("c")
    return {name: Exported(name, root / name, mnist) for name in shipped_models("digit")}


@needs_cc
@pytest.mark.parametrize("name", shipped_models("digit"))
def test_c_model_is_as_accurate_as_float_and_agrees_with_onnx_int8(name, exported, mnist):
    result = exported[name]
    assert result.host.count == 10_000
    gap = result.host.accuracy - result.float_accuracy
    assert abs(gap) <= 0.1, (result.host.accuracy, result.float_accuracy)
    agreement = float((result.host.predictions == result.onnx_predictions).mean())
    assert agreement >= 0.998, agreement
    assert result.host.images_per_second > 0


@needs_cc
def test_generated_c_is_integer_only_c99_with_const_tables(exported):
    export = exported["medium"].export
    source, header = export.source.read_text(), export.header.read_text()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)  # comments may say "no floating point"
    header_code = re.sub(r"/\*.*?\*/", "", header, flags=re.DOTALL)
    assert re.findall(r"#include\s+(\S+)", code) == ["<stdint.h>", '"tinydigits_medium.h"']
    assert re.findall(r"#include\s+(\S+)", header_code) == ["<stdint.h>"]
    for word in ("float", "double", "malloc", "free", "printf"):
        assert not re.search(rf"\b{word}\b", code), word
    assert "static const int8_t weight" in code and "static uint8_t arena[" in code
    # Every table is const; the only writable globals are the arena of activation rows and the
    # average pooling's sums.
    writable = re.findall(r"^static (?!const)(?!.*\()[^\n]*;", code, flags=re.MULTILINE)
    names = [line.split("[")[0] for line in writable]
    assert names == ["static uint8_t arena", "static int32_t sums"], writable
    # Stricter than the verifier's flags: pedantic C99, conversions, and no float anywhere.
    compiler = find_compiler()
    flags = [*COMPILE_FLAGS, "-pedantic", "-Wdouble-promotion", "-Wfloat-conversion"]
    strict = subprocess.run([compiler, *flags, "-fsyntax-only", f"-I{export.directory}", str(export.source)],
                            capture_output=True, text=True)
    assert strict.returncode == 0, strict.stderr
    assert "int tinydigits_medium_predict(const unsigned char pixels[784]);" in header
    assert "int tinydigits_medium_scores(const unsigned char pixels[784], int32_t scores[10]);" in header


@needs_cc
def test_scores_function_and_a_firmware_style_caller(exported, mnist, tmp_path):
    """A caller as in the README: compiled against the header, scores and digit agree."""
    export = exported["small"].export
    program = tmp_path / "caller.c"
    program.write_text("""
#include <stdio.h>
#include "tinydigits_small.h"
int main(void) {
    static unsigned char pixels[784];
    int32_t scores[10];
    size_t i;
    if (fread(pixels, 1, 784, stdin) != 784) return 2;
    int digit = tinydigits_small_scores(pixels, scores);
    printf("%d", digit);
    for (i = 0; i < 10; i++) printf(" %ld", (long)scores[i]);
    printf(" %d\\n", tinydigits_small_predict(pixels));
    return 0;
}
""")
    binary = tmp_path / "caller"
    subprocess.run([find_compiler(), *COMPILE_FLAGS, f"-I{export.directory}", "-o", str(binary), str(program),
                    str(export.source)], check=True)
    for index in range(5):
        image = mnist.test_images[index].numpy().tobytes()
        words = subprocess.run([str(binary)], input=image, capture_output=True, check=True).stdout.split()
        digit, scores, again = int(words[0]), [int(w) for w in words[1:11]], int(words[11])
        assert digit == again == exported["small"].host.predictions[index]
        assert scores.index(max(scores)) == digit


@needs_cc
def test_verifier_rejects_bad_files_with_one_line(exported, tmp_path):
    export = exported["ultrasmall"].export
    binary = tmp_path / "verify"
    subprocess.run([find_compiler(), *COMPILE_FLAGS, f"-I{export.directory}", "-o", str(binary),
                    str(export.verifier), str(export.source)], check=True)
    labels = tmp_path / "labels"
    write_test_idx(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8), tmp_path)
    (tmp_path / "labels-idx1-ubyte").rename(labels)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not an idx file at all")
    for images, message in [(garbage, "not an MNIST IDX image file"), (tmp_path / "missing", "cannot open")]:
        run = subprocess.run([str(binary), str(images), str(labels)], capture_output=True, text=True)
        assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr
    fine = subprocess.run([str(binary), str(tmp_path / "images-idx3-ubyte"), str(labels)],
                          capture_output=True, text=True)
    assert fine.returncode == 0 and "of 3)" in fine.stdout, fine.stdout


def test_quantized_multiplier_is_a_31_bit_fixed_point_number():
    for real in [1e-6, 0.0123, 0.5, 0.999999999, 1.0, 3.7, 1000.0]:
        multiplier, shift = quantized_multiplier(real)
        assert 2**30 <= multiplier < 2**31
        assert math.isclose(multiplier / 2**shift, real, rel_tol=2**-30)
    with pytest.raises(ExportError, match="must be positive"):
        quantized_multiplier(0.0)


# ---------------------------------------------------------------------- the command


@needs_cc
def test_export_command_writes_and_verifies_then_exports_again_into_its_own_folder(tmp_path):
    folder = tmp_path / "firmware"
    args = ["export", "--model", "ultrasmall", "--format", "c", "-o", str(folder)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in folder.iterdir()) == ["tinydigits_ultrasmall.c", "tinydigits_ultrasmall.h",
                                                         "verify.c"]
    assert re.search(r"test accuracy 99\.\d\d% \(C, integer-only\) vs 99\.\d\d% \(PyTorch fp32\)",
                     first.output), first.output
    # A second export of another model into the same folder: its files are a C export's own.
    second = CliRunner().invoke(main, ["export", "--model", "small", "--format", "c", "--no-verify", "-o",
                                       str(folder)])
    assert second.exit_code == 0, second.output
    assert (folder / "tinydigits_small.c").exists() and (folder / "tinydigits_ultrasmall.c").exists()


def test_export_refuses_folders_it_did_not_write_and_loses_nothing(tmp_path):
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "main.c").write_text("int main(void) { return 0; }\n")
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "tinydigits_medium.c").write_text("/* my own edits */\n")
    (tmp_path / "file.txt").write_text("a file")
    cases = [(foreign, "holds main.c, which a C export did not write"),
             (impostor, "holds tinydigits_medium.c, which a C export did not write"),
             (tmp_path / "file.txt", "is not a directory"),
             (tmp_path / "file.txt" / "sub", "cannot create the directory"),
             (Path("/proc/tinydigits-c"), "cannot create the directory")]
    for folder, message in cases:
        result = CliRunner().invoke(main, ["export", "--model", "medium", "--format", "c", "--no-verify",
                                           "-o", str(folder)])
        assert message in one_line_error(result)
    assert (foreign / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["main.c"]
    assert (impostor / "tinydigits_medium.c").read_text() == "/* my own edits */\n"
    assert (tmp_path / "file.txt").read_text() == "a file"


def test_unknown_model_is_aone_line_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "--model", "tiny", "--format", "c", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value for '--model'" in result.output
    with pytest.raises(ConfigError, match="unknown model 'tiny'"):
        export_c(torch.nn.Identity(), "tiny", tmp_path, torch.zeros(1, 1, 28, 28))


# --------------------------------------------------------------- on a microcontroller


@needs_cc
@needs_cross
@pytest.mark.parametrize("name", shipped_models("digit"))
def test_cortex_m_footprint_and_qemu_runs_match_the_host(name, exported, mnist, tmp_path):
    """Flash, RAM under 4 KB with a stack bound, and the model on QEMU's Cortex-M3 (portable
    kernels) and Cortex-M4 (DSP kernels): the host's digit on each of the first 300 test images
    (`tinydigits mcu` runs 1,000), under 3 instructions per multiply-accumulate (2.6 with the DSP
    kernels) where a convolution takes the kernels' unrolled paths (a first 1-channel layer, or
    windows 8, 16 or 32 bytes apart), 1.6 times that on the generic path (Nano's 4- and 6-channel
    inputs), the stack used within its bound."""
    export = exported[name].export
    prefix = f"tinydigits_{name}"
    sizes = {cpu: mcu.footprint(export.source, prefix, cpu, tmp_path) for cpu in (*mcu.CPUS, "cortex-m3")}
    for size in sizes.values():
        assert size.code_bytes > 0 and size.table_bytes > get_spec(name).parameters  # int8 weights and more
        assert size.buffer_bytes == export.buffer_bytes and 0 < size.stack_bytes <= 640
        assert size.ram_bytes <= 4096, size  # the rings of rows and the stack's bound
    if name == "medium":
        assert sizes["cortex-m0plus"].table_bytes <= 10 * 1024
        assert all(size.ram_bytes <= 3 * 1024 for size in sizes.values())
    lowered = lower(int8_onnx_proto(tinydigits.load_model(name, pretrained=True),
                                    calibration_subset(mnist.train_images)))
    fast, generic = 0, 0  # multiply-accumulates per image on each path of td_conv_row
    for layer in lowered.layers:
        if isinstance(layer, ConvLayer):
            layer_macs = macs(dataclasses.replace(lowered, layers=[layer]))
            channels = layer.in_shape[0]
            if channels == 1 or layer.stride * channels in (8, 16, 32):
                fast += layer_macs
            else:
                generic += layer_macs
    dsp = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / f"{prefix}-cortex-m4.elf")],
                         capture_output=True, text=True, check=True).stdout
    assert "smlad" in dsp and "uxtb16" in dsp  # the M4 build takes the DSP path
    assert fast + generic == macs(lowered)
    for cpu, limit in (("cortex-m3", 3.0), ("cortex-m4", 2.6)):
        run = mcu.run_on_qemu(export.source, export.header, prefix, mnist.test_images[:300], tmp_path, cpu)
        assert run.predictions.tolist() == exported[name].host.predictions[:300].tolist(), cpu
        budget = limit * (fast + 1.6 * generic)
        assert 100_000 < run.instructions_per_image <= budget, (cpu, run.instructions_per_image, budget)
        assert 64 <= run.stack_bytes <= sizes[cpu].stack_bytes, (cpu, run.stack_bytes, sizes[cpu].stack_bytes)


@needs_cross
def test_stack_bound_is_the_deepest_call_chain(tmp_path):
    """The bound follows GCC's call graph: the deepest chain of frames, not their sum."""
    source = tmp_path / "chain.c"
    source.write_text("""
#define KEEP __attribute__((noinline)) static int
KEEP leaf(volatile int *x) { volatile int big[40]; big[0] = *x; return big[0]; }
KEEP small(volatile int *x) { volatile int two[2]; two[0] = *x; return two[0]; }
KEEP middle(volatile int *x) { volatile int some[10]; some[0] = leaf(x); return some[0]; }
int entry(int y) { volatile int v = y; return middle(&v) + small(&v); }
""")
    obj = tmp_path / "chain.o"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m3", "-mthumb", *mcu.CROSS_FLAGS, "-fstack-usage",
                    "-fcallgraph-info=su", "-c", str(source), "-o", str(obj)], check=True)
    elf = tmp_path / "chain.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m3", "-mthumb", "-nostdlib", "-Wl,-e,entry", str(obj),
                    "-o", str(elf)], check=True)
    frames = {line.split("\t")[0].rsplit(":", 1)[-1]: int(line.split("\t")[1])
              for line in obj.with_suffix(".su").read_text().splitlines()}
    bound = mcu.stack_bound(obj.with_suffix(".ci"), elf, "entry")
    assert bound == frames["entry"] + frames["middle"] + frames["leaf"] < sum(frames.values())


@needs_cc
def test_row_schedule_keeps_a_few_rows_per_layer(exported, mnist):
    """Each layer keeps as many input rows as its kernel is tall; the schedule computes every
    row once, never overwrites a row that is still needed (it checks as it goes), and the
    activation memory is a few rows rather than whole maps."""
    model = tinydigits.load_model("small", pretrained=True)
    lowered = lower(int8_onnx_proto(model, calibration_subset(mnist.train_images)))
    steps = _steps(lowered)
    rings = _rings(steps, lowered.logits_zero)
    order = schedule(steps, rings)
    assert order[0] == 0 and order[-1] == len(steps) - 1  # an input row first, the logits last
    assert order.count(0) == 28
    assert all(ring.rows <= 3 for ring in rings)
    assert macs(lowered) == 1_423_904
    assert sum(ring.size for ring in rings) < 28 * 28 * 8 * 0.6  # the whole-map C held two 28x28x8 maps
    assert exported["small"].export.buffer_bytes <= 3.5 * 1024


@needs_cross
def test_float_free_on_a_cortex_m0plus(exported, tmp_path):
    """Linked for a CPU without an FPU, the model pulls in no soft-float routine."""
    export = exported["medium"].export
    mcu.footprint(export.source, "tinydigits_medium", "cortex-m0plus", tmp_path)
    symbols = subprocess.run(["arm-none-eabi-nm", str(tmp_path / "tinydigits_medium-cortex-m0plus.elf")],
                             capture_output=True, text=True, check=True).stdout
    helpers = re.findall(r"__aeabi_\w+", symbols)
    assert not [h for h in helpers if re.match(r"__aeabi_(f|d|i2f|i2d|ui2f|l2f|f2|d2)", h)], helpers


def test_readme_and_docs_show_the_committed_mcu_report():
    report = json.loads((ROOT / "docs" / "mcu.json").read_text())
    assert set(report["models"]) == set(shipped_models("digit"))
    readme = (ROOT / "README.md").read_text()
    assert mcu.README_BLOCK.read(readme) == mcu.readme_table(report), (
        "README's microcontroller table is stale: run `tinydigits mcu --update-readme README.md`")
    assert (ROOT / "docs" / "MCU.md").read_text() == mcu.render_markdown(report, "docs/MCU.md")
