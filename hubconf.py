"""torch.hub entry points: ``torch.hub.load("<this repo or checkout>", "mnist_medium", pretrained=True)``.

The weights ship inside the package (src/tinydigits/pretrained), so loading works offline
from a local checkout: ``torch.hub.load("path/to/tinydigits", "mnist_medium", source="local")``.
"""

import sys
from collections.abc import Callable
from pathlib import Path

# torch.hub puts the repository root on sys.path; the package lives under src/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from tinydigits.models import MODELS, TinyDigitNet
from tinydigits.weights import load_model

dependencies = ["torch", "safetensors", "numpy", "PIL", "tqdm"]  # import names


def _entry_point(name: str) -> Callable[..., TinyDigitNet]:
    def entry_point(pretrained: bool = True) -> TinyDigitNet:
        return load_model(name, pretrained=pretrained)

    spec = MODELS[name]
    entry_point.__name__ = f"mnist_{name}"
    entry_point.__doc__ = (f"{spec.title}, {spec.parameters:,} parameters; "
                           "the shipped weights when ``pretrained``.")
    return entry_point


mnist_medium = _entry_point("medium")
mnist_small = _entry_point("small")
mnist_ultrasmall = _entry_point("ultrasmall")
