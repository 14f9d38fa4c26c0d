import os
import signal

import pytest

from tinydigits import data

# A suite started in the background by a non-interactive shell (`pytest ... &`) inherits SIGINT
# ignored, and an ignored signal survives exec: every server and training run it starts would
# ignore the Ctrl-C that tests stop them with. Python's own handler here makes them start
# with the default, as from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Cached exports (``~/.cache/tinydigits/onnx``) go to a temporary folder, for this process
    and the servers and commands it starts; the MNIST files stay where they are."""
    saved = {name: os.environ.get(name) for name in ("XDG_CACHE_HOME", "TINYDIGITS_DATA")}
    os.environ["TINYDIGITS_DATA"] = str(data.default_data_dir())
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def mnist() -> data.MNIST:
    """The real MNIST set from the data directory, fetched on first use."""
    return data.load_mnist()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (the browser tests' modules skip
    themselves where either is missing)."""
    from playwright.sync_api import sync_playwright
    from web_helpers import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


# Whole modules that take minutes: a real browser, a compiler and an emulator, real servers
# under load, benchmarks, several short training runs, Optuna workers on PostgreSQL. `pytest -m "not
# slow"` leaves them (and the tests marked slow in other modules) out for a quick run; CI runs all.
SLOW_MODULES = {"test_static_site", "test_web", "test_c_export", "test_loadtest",
                "test_tune", "test_bench", "test_reproduce"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path is not None and item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
