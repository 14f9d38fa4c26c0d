"""tinydigits: very small, very accurate CNNs for handwritten digit recognition (MNIST).

    >>> import tinydigits
    >>> model = tinydigits.build_model("medium")                  # fresh weights
    >>> tinydigits.MODELS["medium"].parameters                     # counted, not typed
    >>> model = tinydigits.load_model("medium", pretrained=True)  # the shipped weights
    >>> tinydigits.get_weights("medium").test_accuracy            # and what they measured
    >>> tinydigits.read_number("meter.jpg").number                 # a whole number, e.g. '07431'

The package has three layers that depend one way: this library (data, models, recipes,
training, evaluation, pictures), ``tinydigits.deploy`` (export, engines, the web demo) on
top of it, and ``tinydigits.lab`` (benchmarks, reproduction, tuning, publishing, plots) on
top of both.
"""

from .data import MNIST, load_mnist, normalize
from .errors import TinyDigitsError
from .evaluate import evaluate
from .io import save_weights
from .models import MODELS, build_model, count_parameters
from .read import Reading, read_number
from .recipes import Recipe, get_recipe
from .runtime import package_version
from .train import train
from .weights import Weights, WeightsMeta, get_weights, load_model

__all__ = [
    "MNIST", "MODELS", "Reading", "Recipe", "TinyDigitsError", "Weights", "WeightsMeta", "build_model",
    "count_parameters", "evaluate", "get_recipe", "get_weights", "load_mnist", "load_model", "normalize",
    "read_number", "save_weights", "train",
]
__version__ = package_version()
