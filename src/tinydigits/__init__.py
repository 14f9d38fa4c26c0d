"""tinydigits: very small, very accurate CNNs for handwritten digit recognition (MNIST).

    >>> import tinydigits
    >>> model = tinydigits.build_model("medium")          # 7,632 parameters
    >>> model = tinydigits.load_model("medium", pretrained=True)  # the shipped weights
    >>> tinydigits.get_weights("medium").test_accuracy            # and what they measured
"""

from .checkpoint import load_model, save_weights
from .data import MNIST, load_mnist, normalize
from .evaluate import evaluate
from .models import MODELS, build_model, count_parameters
from .pretrained import Weights, get_weights
from .recipes import Recipe, get_recipe
from .train import train

__all__ = [
    "MNIST", "MODELS", "Recipe", "Weights", "build_model", "count_parameters", "evaluate", "get_recipe",
    "get_weights", "load_mnist", "load_model", "normalize", "save_weights", "train",
]
__version__ = "0.1.0"
