"""Mutation check: each deliberate defect in the selection code must make at least one test fail.

``python scripts/mutations.py`` copies the tree to a temporary folder, applies one mutation at a time, runs the
tests that should catch it (``-x``, stop at the first failure) and prints a table: mutation, tests run, caught or
NOT caught. Exit status 1 if any mutation survives. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, file, exact text, replacement, tests that must catch it)
MUTATIONS = [
    (
        "r**alpha -> r",
        "resprune/methods/resprune.py",
        "rel.double().pow(alpha)",
        "rel.double()",
        ["tests/test_fidelity.py::test_equals_the_float64_reference_at_llava_size"],
    ),
    (
        "no re-orthogonalisation",
        "resprune/residual.py",
        "            for _ in range(2):\n                r -= (r @ q64[lo:hi].T) @ q64[lo:hi]",
        "            for _ in range(1):\n                r -= (r @ q64[lo:hi].T) @ q64[lo:hi]",
        ["tests/test_fidelity.py::test_core_energies_match_the_reference_to_float64_accuracy"],
    ),
    (
        "no re-orthogonalisation in the exact replay (residual_curve, residual_energies)",
        "resprune/residual.py",
        "for _ in range(2 if m else 0):",
        "for _ in range(1 if m else 0):",
        ["tests/test_fidelity.py::test_replay_basis_stays_orthonormal_for_nearly_dependent_picks"],
    ),
    (
        "residual energies not updated",
        "resprune/residual.py",
        "np.subtract(est, col * col, out=est, where=live)",
        "pass",
        ["tests/test_fidelity.py::test_equals_the_float64_reference_at_llava_size"],
    ),
    (
        "certified gram loop: energies not updated",
        "resprune/residual.py",
        "        score -= upd\n",
        "        pass\n",
        ["tests/test_fidelity.py::test_certified_gram_loop_is_the_exact_loop"],
    ),
    (
        "certified gram loop: no certification",
        "resprune/residual.py",
        "if not (lower[first:] > 0).all() or not (lower[first:] >= upper[first:].max(axis=1)).all():",
        "if False:",
        ["tests/test_fidelity.py::test_certified_gram_declines_a_near_tie"],
    ),
    (
        "FastV: max over heads",
        "resprune/methods/fastv.py",
        "scores.softmax(-1).mean(1)[0, 0]",
        "scores.softmax(-1).amax(1)[0, 0]",
        ["tests/test_fastv.py"],
    ),
    (
        "seed prior ignored",
        "resprune/methods/resprune.py",
        'elif seed == "prior" or (seed == "auto" and seed_prior is not None):',
        "elif False:",
        ["tests/test_fidelity.py::test_seed_prior_reaches_resprune_and_residual_through_prune"],
    ),
    (
        "CDPruner: relevance ignored",
        "resprune/methods/cdpruner.py",
        "r2 = torch.ones_like(norm2) if rel is None else rel.pow(2)",
        "r2 = torch.ones_like(norm2)",
        ["tests/test_fidelity_peers.py::test_cdpruner_relevance_changes_the_picks"],
    ),
    (
        "DivPrune: sum instead of min distance",
        "resprune/methods/divprune.py",
        "np.minimum(mind, dist[s], out=mind)",
        "np.add(mind, dist[s], out=mind)",
        ["tests/test_fidelity_peers.py::test_divprune_equals_the_float64_reference_at_llava_size"],
    ),
]


def main() -> int:
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "tree"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache"))
        if (ROOT.parent / "shared").is_dir():
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        print("| mutation | tests | result | seconds |\n|---|---|---|---:|")
        for name, rel, old, new, tests in MUTATIONS:
            path = work / rel
            original = path.read_text()
            if original.count(old) != 1:
                print(f"| {name} | - | mutation site not found exactly once in {rel} | - |")
                survived += 1
                continue
            path.write_text(original.replace(old, new))
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                cwd=work,
                capture_output=True,
                text=True,
            )
            path.write_text(original)
            caught = proc.returncode == 1  # tests ran and failed (not 5: nothing collected, not 2: error)
            survived += not caught
            result = "caught" if caught else f"NOT caught (pytest exit {proc.returncode})"
            print(
                f"| {name} | {' '.join(t.split('/')[-1] for t in tests)} | {result} | {time.perf_counter() - t0:.0f} |"
            )
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
