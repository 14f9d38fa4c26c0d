"""Weights files: safetensors round trip, reference .pth files saved on a GPU, bad files."""

import zipfile

import pytest
import torch
from torch import nn

from tinydigits.io import WeightsError, atomic_write, load_state_dict, read_metadata, save_weights
from tinydigits.models import build_model
from tinydigits.weights import load_model


def reference_medium(dropout: float = 0.1) -> nn.Module:
    """MNIST-Medium written out the way the reference implementation writes it,
    independently of tinydigits.models, to prove the two compute the same function."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = dropout
            self.conv1 = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(8), nn.Dropout(d),
                nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(8),
                nn.MaxPool2d(2, 2), nn.Dropout(d), nn.Conv2d(8, 8, 1))
            self.conv2 = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(8), nn.Dropout(d),
                nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16),
                nn.MaxPool2d(2, 2), nn.Dropout(d), nn.Conv2d(16, 16, 1))
            self.conv3 = nn.Sequential(
                nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(d),
                nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16),
                nn.MaxPool2d(2, 2), nn.Dropout(d))
            self.gap_linear = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 10, 1, bias=False))

        def forward(self, x):
            x = self.gap_linear(self.conv3(self.conv2(self.conv1(x))))
            return torch.log_softmax(x.view(-1, 10), dim=-1)

    return Net()


def randomize_batchnorm(model: nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics, as a trained model has."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(1234)


def save_as_if_on_cuda(state: dict, path) -> None:
    """torch.save a state_dict whose storages are recorded as living on cuda:0, exactly
    as a file saved on a GPU machine is, without needing a GPU to make it."""
    plain = path.with_suffix(".cpu.pth")
    torch.save(state, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                # the pickled location string 'cpu' (length-prefixed) becomes 'cuda:0'
                payload = payload.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, payload)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
def test_reference_weights_saved_on_cuda_load_on_cpu_with_identical_outputs(tmp_path):
    reference = reference_medium()
    randomize_batchnorm(reference)
    path = tmp_path / "mnist_medium.pth"
    save_as_if_on_cuda(reference.state_dict(), path)
    # The simulation is faithful: plain torch.load refuses it on a CPU-only machine.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)

    model = load_model("medium", path)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": Payload()}, path)
    with pytest.raises(WeightsError, match="cannot load as a PyTorch state_dict"):
        load_state_dict(path)


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = build_model("small")
    randomize_batchnorm(model)
    path = save_weights(model, tmp_path / "w.safetensors", {"model": "small", "epoch": 3,
                                                             "metrics": {"val_accuracy": 99.1}})
    assert read_metadata(path) == {"model": "small", "epoch": 3, "metrics": {"val_accuracy": 99.1}}
    loaded = load_model("small", path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not loaded.training


def test_weights_for_another_model_are_a_clear_error(tmp_path):
    path = save_weights(build_model("small"), tmp_path / "small.safetensors", {})
    with pytest.raises(WeightsError, match="not medium weights"):
        load_model("medium", path)


@pytest.mark.parametrize("content", [b"", b"not a weights file at all", b"PK\x03\x04garbage"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_files_are_clear_errors(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=str(path.name)) as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_safetensors_metadata_of_other_tools_is_no_error(tmp_path):
    """Files from other tools carry metadata that is not tinydigits' JSON (torch's {"format": "pt"})."""
    from safetensors.torch import save_file

    model = build_model("small")
    path = tmp_path / "other.safetensors"
    save_file(model.state_dict(), str(path), metadata={"format": "pt"})
    loaded = load_model("small", path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
