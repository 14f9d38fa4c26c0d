"""torch.hub entry points: ``torch.hub.load("<this repo or checkout>", "mnist_medium", pretrained=True)``,
one ``mnist_<name>`` per registered model (``mnist_reader`` is the number reader).

The weights ship inside the package (src/tinydigits/pretrained), so loading works offline
from a local checkout: ``torch.hub.load("path/to/tinydigits", "mnist_medium", source="local")``.
"""

import sys
from collections.abc import Callable
from pathlib import Path

# torch.hub puts the repository root on sys.path; the package lives under src/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from torch import nn

from tinydigits.models import REGISTRY
from tinydigits.weights import load_model

dependencies = ["torch", "safetensors", "numpy", "PIL", "tqdm"]  # import names


def _entry_point(name: str) -> Callable[..., nn.Module]:
    def entry_point(pretrained: bool = True) -> nn.Module:
        return load_model(name, pretrained=pretrained)

    spec = REGISTRY[name]
    entry_point.__name__ = f"mnist_{name.replace('-', '_')}"
    entry_point.__doc__ = (f"{spec.title}, {spec.parameters:,} parameters; "
                           "the shipped weights when ``pretrained``.")
    return entry_point


# Every registered model, so a new one needs no line here.
for _name in REGISTRY:
    globals()[f"mnist_{_name.replace('-', '_')}"] = _entry_point(_name)
