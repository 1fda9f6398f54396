"""The lmms-eval bridge end to end, offline: the scene world exported as a local lmms-eval task, answered through
lmms-eval by ``--model resprune`` (found by its entry point), scores equal to the scene benchmark's; the sweep
runner (resumable, tidy table, plot, bad input); a tiny model of every family; ``accelerate launch`` with two
CPU processes giving the identical table.

lmms-eval is installed by the README's test command (requirements-eval.txt plus, in CI, ``pip install --no-deps
-r requirements-lmms-eval.txt``): under CI a missing lmms-eval fails these tests instead of skipping them.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageFile

import resprune
import resprune.testing
from resprune import scenes
from resprune.bench.scenes import normalise
from resprune.eval import export, import_lmms_eval, sweep

_TRUNCATED = ImageFile.LOAD_TRUNCATED_IMAGES
try:
    import_lmms_eval()
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "lmms-eval is not installed: pip install -r requirements-eval.txt && "
        "pip install --no-deps -r requirements-lmms-eval.txt",
        allow_module_level=True,
    )

N_QUESTIONS = 12
METHODS = ("resprune", "divprune", "fastv")  # text-aware, text-free, in-LLM (cannot batch)
KEEPS = (16, 48)
DETERMINISTIC = ("task", "metric", "method", "keep", "score", "n", "ci_low", "ci_high", "visual_tokens")
REPO = Path(__file__).resolve().parents[1]


def reference_answers(model, processor, method: str, keep: int | None, n: int, keep_ratio: float | None = None):
    """What ``python -m resprune.bench scenes`` computes for these questions: its item order, its call, its
    normalised exact match (independent of the exporter)."""
    items = []
    for scene in scenes.test_scenes():
        items += [(scene.image, q) for q in scene.questions]
        if len(items) >= n:
            break
    out = []
    with torch.no_grad():
        for image, q in items[:n]:
            k = keep
            if keep_ratio is not None:
                k = resprune.keep_count(resprune.count_visual_tokens(model, processor, image, q.text), keep_ratio)
            ans = resprune.answer(
                model, processor, image, q.text, method=method, keep=k, max_new_tokens=4, compare=False
            )
            out.append((ans.pruned, normalise(ans.pruned) == normalise(q.answer)))
    return out


def _resp(sample: dict) -> str:
    r = sample["filtered_resps"]
    return r[0] if isinstance(r, list) else r


@pytest.fixture(scope="module")
def scene_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    export.export_scene_task(folder, N_QUESTIONS)
    return folder


@pytest.fixture(scope="module")
def scenes_model():
    return resprune.load_model("scenes")


@pytest.fixture(scope="module")
def references(scenes_model):
    return {(m, k): reference_answers(*scenes_model, m, k, N_QUESTIONS) for m in METHODS for k in KEEPS}


def test_importing_lmms_eval_leaves_pil_alone():
    """lmms-eval sets ImageFile.LOAD_TRUNCATED_IMAGES for the process; resprune's image checks need it as it was."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES == _TRUNCATED


def test_export_writes_a_local_datasets_folder(scene_task):
    import datasets

    ds = datasets.load_from_disk(str(scene_task / "data"))["test"]
    assert len(ds) == N_QUESTIONS
    first = next(iter(scenes.test_scenes()))
    assert ds[0]["question"] == first.questions[0].text and ds[0]["answer"] == first.questions[0].answer
    assert ds[0]["image"].size == first.image.size
    assert (np.asarray(first.image.convert("RGB")) == np.asarray(ds[0]["image"].convert("RGB"))).all()  # lossless
    yaml = (scene_task / f"{export.TASK}.yaml").read_text()
    assert "load_from_disk: true" in yaml and f"dataset_path: {scene_task / 'data'}" in yaml


def test_lmms_eval_finds_the_model_by_its_entry_point(scene_task, references):
    from importlib.metadata import entry_points

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from resprune.eval.lmms import ResPruneLMM

    assert [ep.value for ep in entry_points().select(group="lmms_eval.models")] == ["resprune.eval:lmms_eval_models"]
    assert get_model("resprune") is ResPruneLMM
    tm = TaskManager("WARNING", include_path=str(scene_task), include_defaults=False)
    res = simple_evaluate(
        model="resprune",
        model_args="pretrained=scenes,method=resprune,keep=16,records=" + str(scene_task / "records"),
        tasks=[export.TASK],
        task_manager=tm,
        log_samples=True,
        bootstrap_iters=0,
        verbosity="WARNING",
    )
    ref = references[("resprune", 16)]
    samples = sorted(res["samples"][export.TASK], key=lambda s: s["doc_id"])
    assert [_resp(s) for s in samples] == [a for a, _ in ref]  # the same answers, word for word
    assert res["results"][export.TASK]["accuracy,none"] == pytest.approx(sum(c for _, c in ref) / N_QUESTIONS)
    recs = [json.loads(x) for x in (scene_task / "records" / "records_rank0.jsonl").read_text().splitlines()]
    assert sorted(r["doc_id"] for r in recs) == list(range(N_QUESTIONS))  # one record per sample
    for r in recs:
        assert (r["visual_tokens_before"], r["visual_tokens_after"]) == (144, 16)
        assert r["seq_len_before"] - r["seq_len_after"] == 144 - 16  # the pruned prompt is shorter by N - K
        assert r["prefill_flops_after"] < r["prefill_flops_before"] and r["kv_cache_bytes"] > 0
        assert r["prefill_seconds"] > 0 and r["generate_seconds"] >= r["prefill_seconds"]


@pytest.fixture(scope="module")
def sweep_run(scene_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = _sweep_argv(scene_task, out)
    assert sweep.main(argv) == 0
    return out, argv


def _sweep_argv(scene_task: Path, out: Path, methods=METHODS, keeps=KEEPS) -> list[str]:
    return [
        "--methods", ",".join(methods), "--keep", ",".join(map(str, keeps)), "--tasks", export.TASK,
        "--include-path", str(scene_task), "--output", str(out),
    ]  # fmt: skip


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_scores_equal_the_scene_benchmark(sweep_run, references):
    out, _ = sweep_run
    rows = _table(out)
    assert list(rows[0]) == list(sweep.COLUMNS)
    assert {(r["method"], int(r["keep"])) for r in rows} == set(references)
    for r in rows:
        ref = references[(r["method"], int(r["keep"]))]
        assert float(r["score"]) == pytest.approx(sum(c for _, c in ref) / N_QUESTIONS)
        assert int(r["n"]) == N_QUESTIONS
        assert float(r["ci_low"]) <= float(r["score"]) <= float(r["ci_high"])  # Wilson: accuracy is 0/1 per sample
        assert float(r["visual_tokens"]) == int(r["keep"]) and float(r["visual_tokens_before"]) == 144
        assert float(r["prefill_flops"]) <= float(r["prefill_flops_before"])
        assert float(r["prefill_seconds"]) > 0
    fastv = {int(r["keep"]): float(r["prefill_flops"]) for r in rows if r["method"] == "fastv"}
    other = {int(r["keep"]): float(r["prefill_flops"]) for r in rows if r["method"] == "divprune"}
    assert all(other[k] < fastv[k] < float(rows[0]["prefill_flops_before"]) for k in KEEPS)  # 2 layers see all N
    assert json.loads((out / "results.json").read_text())[0]["task"] == export.TASK
    assert (out / "score_vs_keep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_cells(sweep_run, capsys):
    out, argv = sweep_run
    cells = sorted(out.glob("cells/*/*/cell.json"))
    assert len(cells) == len(METHODS) * len(KEEPS)
    stamps = [c.stat().st_mtime_ns for c in cells]
    before = _table(out)
    t0 = time.perf_counter()
    assert sweep.main(argv) == 0
    assert "6 finished cell(s) skipped" in capsys.readouterr().err
    assert [c.stat().st_mtime_ns for c in cells] == stamps
    assert _table(out) == before
    assert time.perf_counter() - t0 < 60  # no model was loaded, nothing answered (a loose bound, not a benchmark)


def test_a_killed_sweep_resumes(scene_task, sweep_run, tmp_path, capsys):
    """Kill a real run after its first cell, rerun: only the unfinished cells run, and the table is the same."""
    out = tmp_path / "killed"
    argv = _sweep_argv(scene_task, out, methods=("resprune", "divprune"), keeps=(16,))
    proc = subprocess.Popen([sys.executable, "-m", "resprune.eval", *argv], cwd=REPO, stderr=subprocess.DEVNULL)
    first = out / "cells" / "resprune" / "keep16" / "cell.json"
    try:
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert first.exists()
    assert not (out / "cells" / "divprune" / "keep16" / "cell.json").exists()  # killed before the second cell
    stamp = first.stat().st_mtime_ns
    assert sweep.main(argv) == 0
    assert "1 finished cell(s) skipped" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == stamp  # the finished cell was not rerun
    full = {(r["method"], r["keep"]): r["score"] for r in _table(sweep_run[0])}
    assert {(r["method"], r["keep"]): r["score"] for r in _table(out)} == {
        k: v for k, v in full.items() if k in {("resprune", "16"), ("divprune", "16")}
    }


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--tasks", "no_such_task_xyz"], "error: --tasks: unknown task 'no_such_task_xyz'"),
        (["--keep", "64,200"], "error: --keep: 200 is larger than the 144 visual tokens of 'scenes'"),
        (["--model", "/no/such/model/folder"], "error: --model: "),
    ],
)
def test_sweep_bad_input(extra, msg, scene_task, tmp_path, capsys):
    argv = ["--methods", "resprune", "--tasks", export.TASK, "--include-path", str(scene_task)]
    argv += ["--output", str(tmp_path / "out"), *extra]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(msg), err
    assert not any("Traceback" in line for line in err)
    assert not list((tmp_path / "out").glob("cells/*/*/cell.json"))


@pytest.mark.parametrize("family", resprune.testing.FAMILIES)
def test_tiny_model_of_each_family(family, scene_task, tmp_path):
    """Every family through the bridge, 3 methods x 2 budgets: lmms-eval's answers are the scene benchmark's call
    on the same model."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from resprune.eval._args import budget
    from resprune.eval.lmms import ResPruneLMM

    loaded = resprune.testing.tiny_model(family)
    n = 3
    lm = ResPruneLMM(pretrained=f"tiny-{family}", method="resprune", keep_ratio=0.25, loaded=loaded)
    tm = TaskManager("WARNING", include_path=str(scene_task), include_defaults=False)
    for method in ("resprune", "divprune", "fastv"):
        for ratio in (0.25, 0.5):
            records = tmp_path / f"{method}-{ratio}"
            lm.configure(method, budget(keep_ratio=ratio), records=str(records))
            res = simple_evaluate(
                model=lm, tasks=[export.TASK], task_manager=tm, limit=n, log_samples=True, bootstrap_iters=0,
                verbosity="WARNING",
            )  # fmt: skip
            ref = reference_answers(*loaded, method, None, n, keep_ratio=ratio)
            samples = sorted(res["samples"][export.TASK], key=lambda s: s["doc_id"])
            # lmms-eval cuts at its default stop sequence; the tiny model's text is noise, so compare the same cut
            assert [_resp(s) for s in samples] == [a.split("\n\n")[0].strip() for a, _ in ref], (method, ratio)
            assert res["results"][export.TASK]["accuracy,none"] == pytest.approx(sum(c for _, c in ref) / n)
            recs = [json.loads(x) for x in (records / "records_rank0.jsonl").read_text().splitlines()]
            assert len(recs) == n
            for r in recs:
                assert r["visual_tokens_after"] == resprune.keep_count(r["visual_tokens_before"], ratio)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_two_cpu_processes_give_the_identical_table(scene_task, sweep_run, tmp_path):
    out = tmp_path / "dp"
    argv = _sweep_argv(scene_task, out, methods=("resprune", "fastv"), keeps=(16,))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # no ACCELERATE_USE_CPU needed: the bridge asks for CPU itself
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), "-m", "resprune.eval", *argv,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    for m in ("resprune", "fastv"):
        cell = out / "cells" / m / "keep16"
        per_rank = [[json.loads(x)["doc_id"] for x in (cell / f"records_rank{r}.jsonl").read_text().splitlines()]
                    for r in (0, 1)]  # fmt: skip
        assert [len(ids) for ids in per_rank] == [N_QUESTIONS // 2] * 2  # the samples split evenly
        assert sorted(per_rank[0] + per_rank[1]) == list(range(N_QUESTIONS))  # each answered once
    single = {(r["method"], r["keep"]): [r[c] for c in DETERMINISTIC] for r in _table(sweep_run[0])}
    for r in _table(out):
        assert [r[c] for c in DETERMINISTIC] == single[(r["method"], r["keep"])]
    assert len(_table(out)) == 2


def _variant_task(scene_task: Path, folder: Path, name: str, visual: str) -> Path:
    """The exported scene data under another task whose ``doc_to_visual`` is ``visual`` (a Python expression
    of ``doc``)."""
    folder.mkdir(parents=True, exist_ok=True)
    yaml = (scene_task / f"{export.TASK}.yaml").read_text().replace(f"task: {export.TASK}", f"task: {name}")
    (folder / f"{name}.yaml").write_text(yaml)
    (folder / "utils.py").write_text(
        "from resprune.eval.export import doc_to_text, process_results  # noqa: F401\n\n\n"
        f"def doc_to_visual(doc):\n    return {visual}\n"
    )
    return folder


def _evaluate(lm, folder: Path, name: str, limit: int):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    tm = TaskManager("WARNING", include_path=str(folder), include_defaults=False)
    res = simple_evaluate(
        model=lm, tasks=[name], task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=0, verbosity="WARNING"
    )
    return [_resp(s) for s in sorted(res["samples"][name], key=lambda s: s["doc_id"])]


def test_batches_equal_one_by_one_and_odd_samples(scene_task, scenes_model, tmp_path):
    """batch_size > 1 (a text-free method batches; FastV says it cannot) gives the one-by-one answers; a
    text-only sample is answered unpruned; a sample with two images is a clear error."""
    from resprune.eval._args import budget
    from resprune.eval.lmms import ResPruneLMM

    model, processor = scenes_model
    one = ResPruneLMM(method="divprune", keep=32, loaded=scenes_model, records=str(tmp_path / "one"))
    many = ResPruneLMM(method="divprune", keep=32, batch_size=4, loaded=scenes_model, records=str(tmp_path / "b"))
    assert _evaluate(many, scene_task, export.TASK, 8) == _evaluate(one, scene_task, export.TASK, 8)
    recs = [json.loads(x) for x in (tmp_path / "b" / "records_rank0.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in recs] == [4] * 8 and all(r["visual_tokens_after"] == 32 for r in recs)
    many.configure("fastv", budget(keep=32), records=str(tmp_path / "fastv"))
    _evaluate(many, scene_task, export.TASK, 2)
    recs = [json.loads(x) for x in (tmp_path / "fastv" / "records_rank0.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in recs] == [1, 1]  # in-LLM pruning runs one by one

    text_only = _variant_task(scene_task, tmp_path / "text", "scenes_text_only", "[]")
    answers = _evaluate(one, text_only, "scenes_text_only", 2)
    ds = __import__("datasets").load_from_disk(str(scene_task / "data"))["test"]
    tok = processor.tokenizer
    for q, got in zip(ds["question"][:2], answers):
        msgs = [{"role": "user", "content": [{"type": "text", "text": q}]}]
        ids = tok(processor.apply_chat_template(msgs, add_generation_prompt=True), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        want = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert got == want.split("\n\n")[0].strip()

    two = _variant_task(scene_task, tmp_path / "two", "scenes_two_images", '[doc["image"], doc["image"]]')
    with pytest.raises(ValueError, match="doc 0: 2 images; resprune's bridge prunes one image per sample"):
        _evaluate(one, two, "scenes_two_images", 1)


def test_lmms_eval_cli_writes_records_beside_its_output(scene_task, references, tmp_path):
    """The real ``python -m lmms_eval`` CLI in a fresh process finds ``--model resprune`` by its entry point."""
    out = tmp_path / "cli"
    cmd = [
        sys.executable, "-m", "lmms_eval", "--model", "resprune",
        "--model_args", "pretrained=scenes,method=divprune,keep=48", "--tasks", export.TASK,
        "--include_path", str(scene_task), "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out.glob("*/*_results.json")
    score = json.loads(results.read_text())["results"][export.TASK]["accuracy,none"]
    ref = references[("divprune", 48)]
    assert score == pytest.approx(sum(c for _, c in ref) / N_QUESTIONS)
    recs = (out / "records_rank0.jsonl").read_text().splitlines()
    assert len(recs) == N_QUESTIONS and json.loads(recs[0])["method"] == "divprune"


def test_sweep_budget_above_an_images_tokens_is_one_line(scene_task, tmp_path, capsys, monkeypatch):
    """Where N varies per image (checked per sample), a too-large keep still ends as one line naming --keep."""
    from resprune.eval import lmms

    monkeypatch.setattr(lmms, "_fixed_grid", lambda model: False)  # as for LLaVA-NeXT / Qwen2.5-VL
    argv = ["--methods", "divprune", "--keep", "200", "--tasks", export.TASK, "--include-path", str(scene_task)]
    assert sweep.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --keep: keep=200 is larger than the 144 visual tokens of this model's images", err
