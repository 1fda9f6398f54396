"""The benchmarks run end to end on small settings and print their tables (numbers are not asserted)."""

from __future__ import annotations

import math

import pytest
import torch

from resprune.bench import __main__ as dispatch
from resprune.bench import scenes as bench_scenes
from resprune.bench import select as bench_select


def test_select_bench_small(capsys):
    rows = bench_select.run(ns=(40,), ks=(4,), dim=32, repeats=1)
    names = {r["method"] for r in rows}
    assert {"resprune", "divprune", "cdpruner", "resprune[gs]", "resprune[gram]"} <= names
    assert all(r["ratio"] > 0 and math.isfinite(r["ratio"]) for r in rows)
    table = bench_select.format_table(rows)
    assert table.startswith("| method | N=40 K=4 |") and "reference at N=40" in table
    # ResPrune's arithmetic floors are timed in the same run, and its ratio to the float32 floor is printed
    assert {bench_select.FLOOR_F64, *bench_select.FLOOR_F32} <= names
    assert "| **resprune / float32 floor** |" in table
    # batched vs looped, and the device / dtype flags (the CPU here; cuda where there is one)
    brows = bench_select.run_batch(n=40, k=4, batch=3, dim=16, repeats=1, dtype=torch.bfloat16)
    assert [r["method"] for r in brows] == list(bench_select.BATCHED) and all(r["speedup"] > 0 for r in brows)
    assert "| resprune |" in bench_select.format_batch_table(brows)
    argv = ["select", "--n", "30", "--k", "3", "--dim", "16", "--repeats", "1", "--methods", "resprune"]
    assert dispatch.main([*argv, "--batch", "2", "--device", "auto", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "float16 on cpu" in out and "one select_batch" in out
    with pytest.raises(SystemExit):
        dispatch.main([*argv, "--device", "nope"])
    assert "--device: device must be" in capsys.readouterr().err
    assert (
        dispatch.main(["select", "--n", "30", "--k", "3", "--dim", "16", "--repeats", "1", "--methods", "random"]) == 0
    )
    assert "| random |" in capsys.readouterr().out


def test_dispatcher_usage(capsys):
    assert dispatch.main([]) == 2 and "benchmarks:" in capsys.readouterr().err


def test_scenes_bench_small(tmp_path):
    summary = bench_scenes.run(n_questions=3, methods=["resprune", "random"], fractions=(1.0, 0.25))
    rows = {(r["method"], r["frac"]) for r in summary["rows"]}
    assert rows == {("resprune", 1.0), ("random", 1.0), ("resprune", 0.25), ("random", 0.25)}
    full = next(r for r in summary["rows"] if r["frac"] == 1.0)
    assert full["recall"][0] == 1.0 or math.isnan(full["recall"][0])  # keeping everything recalls everything
    table = bench_scenes.format_table(summary)
    assert "| resprune | 25 % (36/144) |" in table
    bench_scenes.plot(summary, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_scenes_bench_takes_a_checkpoint_and_a_world(monkeypatch):
    """``--model DIR`` answers with that scenes checkpoint, ``--world`` picks the scenes (default: the model's)."""
    from resprune import scenes
    from resprune.scenes.model import DEFAULT_DIR

    worlds = []
    real = scenes.test_scenes
    monkeypatch.setattr(scenes, "test_scenes", lambda n=None, world=1: worlds.append(world) or real(n, world))
    summary = bench_scenes.run(n_questions=2, methods=["random"], fractions=(0.25,), model_path=str(DEFAULT_DIR))
    assert summary["world"] == 1 and summary["model_path"] == str(DEFAULT_DIR)
    two = bench_scenes.run(n_questions=2, methods=["random"], fractions=(0.25,), world=2)
    assert two["world"] == 2 and two["model_path"] is None and worlds == [1, 2]


def test_confidence_intervals():
    p, lo, hi = bench_scenes.wilson(0, 10)
    assert p == 0 and lo == 0 and 0 < hi < 0.35
    m, lo, hi = bench_scenes.mean_ci([1.0, 1.0, float("nan")])
    assert (m, lo, hi) == (1.0, 1.0, 1.0)


def test_prefill_bench_small(capsys):
    from resprune.bench import prefill

    model = prefill.build(layers=1, hidden=64, heads=4, ffn=128, vocab=500)
    summary = prefill.run(keeps=(576, 64), repeats=1, model=model)
    rows = {r["keep"]: r for r in summary["rows"]}
    assert set(rows) == {576, 64} and summary["setup"]["visual_tokens"] == 576
    assert rows[576]["seq_len"] - rows[64]["seq_len"] == 512 and rows[576]["speedup"] == 1.0
    assert rows[64]["flops_bound"] > 1 and rows[64]["kv_bytes"] < rows[576]["kv_bytes"]
    assert rows[64]["kv_bytes"] * rows[576]["seq_len"] == rows[576]["kv_bytes"] * rows[64]["seq_len"]
    assert rows[64]["selection_s"] > 0 and rows[576]["selection_s"] == 0
    assert rows[576]["gemm_ceiling"] == 1.0 and rows[64]["gemm_ceiling"] > 0
    assert rows[64]["vs_ceiling"] == pytest.approx(rows[64]["speedup"] / rows[64]["gemm_ceiling"])
    table = prefill.format_table(summary)
    assert "| 64 | " in table and "1 of 32 layers" in table
    assert (
        dispatch.main(
            [
                "prefill",
                "--layers",
                "1",
                "--hidden",
                "64",
                "--heads",
                "4",
                "--ffn",
                "128",
                "--keep",
                "32",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    assert "| 32 |" in capsys.readouterr().out
    # --device / --dtype / --image-size: a bfloat16 model of LLaVA-NeXT's token count (756 px: 54 x 54 = 2916)
    small = ["prefill", "--layers", "1", "--hidden", "64", "--heads", "4", "--ffn", "128", "--repeats", "1"]
    assert (
        dispatch.main([*small, "--keep", "320", "--device", "auto", "--dtype", "bfloat16", "--image-size", "756"]) == 0
    )
    out = capsys.readouterr().out
    assert "2916 visual" in out and "| 320 |" in out and "bfloat16 on" in out
    for bad, msg in ((["--device", "nope"], "--device: device must be"), (["--image-size", "300"], "multiple of 14")):
        with pytest.raises(SystemExit):
            dispatch.main([*small, *bad])
        assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_script_runs_its_steps_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh with CHECK_DEVICE=cpu CHECK_QUICK=1: every step runs, every output file is written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, CHECK_DEVICE="cpu", CHECK_QUICK="1", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(root / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for name in ("device.txt", "tests.txt", "select.txt", "select.json", "prefill-llava.json", "prefill-next.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert "2916 visual" in (tmp_path / "out" / "prefill-next.txt").read_text()
    assert "exit status: 0" in (tmp_path / "out" / "tests.txt").read_text()


def test_paired_comparison_on_a_constructed_case():
    """Method a is right on 40 questions where b is wrong and wrong on 5 where b is right (55 both right): McNemar
    finds it (exact p = 2 * P(X <= 5), X ~ Bin(45, 1/2)); c equals b: no difference; the table says who beats whom."""
    from collections import defaultdict

    by = defaultdict(list)
    for q in range(100):
        b_right = q >= 40
        a_right = q < 95
        for m, right in (("a", a_right), ("b", b_right), ("c", b_right)):
            by[(m, 0.22)].append(dict(question=q, correct=right))
    pairs = {(p["a"], p["b"]): p for p in bench_scenes.paired(by, (1.0, 0.22))}
    ab = pairs[("a", "b")]
    assert (ab["a_only"], ab["b_only"], ab["n"]) == (40, 5, 100) and ab["diff"] == pytest.approx(0.35)
    expected = 2 * sum(math.comb(45, i) for i in range(6)) / 2**45
    assert ab["p"] == pytest.approx(expected) and ab["p"] < 1e-6
    assert ab["p_holm"] == pytest.approx(min(1.0, 3 * expected)) and ab["significant"]
    bc = pairs[("b", "c")]
    assert (bc["a_only"], bc["b_only"], bc["p"], bc["significant"]) == (0, 0, 1.0, False)
    summary = {"paired": list(pairs.values())}
    assert bench_scenes.beats(summary, "a", 0.22) == ["b", "c"] and bench_scenes.beats(summary, "b", 0.22) == []
    # the defaults: >= 1,000 questions per (method, budget) cell
    import inspect

    assert inspect.signature(bench_scenes.run).parameters["n_questions"].default >= 1000
