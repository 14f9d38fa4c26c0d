import pytest

from tinydigits import data


@pytest.fixture(scope="session")
def mnist() -> data.MNIST:
    """The real MNIST set from the data directory, fetched on first use."""
    return data.load_mnist()
