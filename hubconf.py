"""torch.hub entry points: ``torch.hub.load("<this repo or checkout>", "mnist_medium", pretrained=True)``.

The weights ship inside the package (src/tinydigits/weights), so loading works offline
from a local checkout: ``torch.hub.load("path/to/tinydigits", "mnist_medium", source="local")``.
"""

import sys
from pathlib import Path

# torch.hub puts the repository root on sys.path; the package lives under src/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from tinydigits.checkpoint import load_model
from tinydigits.models import TinyDigitNet

dependencies = ["torch", "safetensors", "numpy", "PIL", "tqdm"]  # import names


def mnist_medium(pretrained: bool = True) -> TinyDigitNet:
    """MNIST-Medium, 7,632 parameters; the shipped weights when ``pretrained``."""
    return load_model("medium", pretrained=pretrained)


def mnist_small(pretrained: bool = True) -> TinyDigitNet:
    """MNIST-Small, 5,616 parameters; the shipped weights when ``pretrained``."""
    return load_model("small", pretrained=pretrained)


def mnist_ultrasmall(pretrained: bool = True) -> TinyDigitNet:
    """MNIST-UltraSmall, 4,464 parameters; the shipped weights when ``pretrained``."""
    return load_model("ultrasmall", pretrained=pretrained)
