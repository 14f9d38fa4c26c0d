"""``python -m tinydigits.lab.bench.child train|infer``: one peak-memory measurement in a
fresh process (so that no figure inherits another's peak), printed as one JSON line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ...models import MODELS
from ...runtime import resolve_threads
from .measure import child_peak_memory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinydigits.lab.bench.child")
    parser.add_argument("kind", choices=["train", "infer"])
    parser.add_argument("--model", default="medium", choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    result = child_peak_memory(args.kind, args.model, args.device, resolve_threads(args.threads), args.quick,
                               args.data_dir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
