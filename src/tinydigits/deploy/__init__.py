"""Deployment: BatchNorm folding, exported files (ONNX, int8, TorchScript) and the engines that
run them, and the web demo. Built on the library; never imports the lab tooling."""

from ..errors import TinyDigitsError


class ExportError(TinyDigitsError):
    """An export, or an exported file, that cannot be made or used; the message is one line."""
