"""Dispatch ``python -m resprune.bench NAME [options]`` to ``resprune.bench.NAME.main``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "select": "selection methods: time vs one linear layer over the visual tokens",
    "prefill": "pruned vs unpruned prefill on a LLaVA-1.5-7B-shaped language model",
    "scenes": "accuracy and relevant-token recall on the scene world, for every method and budget",
    "app": "the launched app under load on loopback: throughput, p50/p95 latency, RSS, files left",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        lines = "\n".join(f"  {k:8s} {v}" for k, v in BENCHMARKS.items())
        print(f"usage: python -m resprune.bench NAME [options]\n\nbenchmarks:\n{lines}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"resprune.bench.{argv[0]}")
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
