"""The bridge's settings and the sweep runner's bad-input errors: checked before lmms-eval or a model is loaded."""

from __future__ import annotations

import sys

import pytest

import resprune
from resprune.eval import _args, sweep
from resprune.eval._args import budget, parse_model_args, relevance_query


@pytest.mark.parametrize(
    "context, query",
    [
        ("What colour is the bus?\nAnswer the question using a single word or phrase.", "What colour is the bus?"),
        ("Is there a dog in the image? Please answer yes or no.", "Is there a dog in the image?"),
        ("Is there a cat?\nAnswer the question with Yes or No.", "Is there a cat?"),
        (
            "Which animal is this?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.",
            "Which animal is this?\nA. cat\nB. dog",
        ),
        (
            "<image>\nWhat is written on the sign?\nWhen the provided information is insufficient, respond with "
            "'Unanswerable'.\nAnswer the question using a single word or phrase.",
            "What is written on the sign?",
        ),
        ("What is the man holding? Answer:", "What is the man holding?"),
        ("Describe the scene.", "Describe the scene."),
    ],
)
def test_answer_format_stays_out_of_the_query(context, query):
    assert relevance_query(context) == query


def test_query_modes():
    ctx = "<image>\nIs the cup red? Please answer yes or no."
    assert relevance_query(ctx, "full") == "Is the cup red? Please answer yes or no."
    assert relevance_query(ctx, "none") is None
    assert _args.clean_context(ctx) == "Is the cup red? Please answer yes or no."  # the LLM still sees the suffix
    with pytest.raises(ValueError, match="query must be one of"):
        relevance_query(ctx, "question")


def test_budget():
    assert budget(keep=64).resolve(576) == 64
    assert budget(keep="128").keep == 128
    assert budget(keep_ratio=0.25).resolve(144) == resprune.keep_count(144, 0.25)
    with pytest.raises(ValueError, match="keep=200 is larger than the 144 visual tokens"):
        budget(keep=200).resolve(144)
    for kw, msg in [
        (dict(keep=0), "keep must be a positive"),
        (dict(keep="many"), "keep must be an int, got 'many'"),
        (dict(keep_ratio=1.5), r"keep_ratio must be in \(0, 1\], got 1.5"),
        (dict(keep_ratio="x"), "keep_ratio must be a number"),
        (dict(keep=8, keep_ratio=0.5), "give exactly one"),
        (dict(), "give exactly one"),
    ]:
        with pytest.raises(ValueError, match=msg):
            budget(**kw)


def test_model_args():
    a = parse_model_args(pretrained="scenes", method="resprune", keep=32, alpha=2.0, batch_size=4)
    assert (a.method, a.budget.keep, a.hparams, a.batch_size) == ("resprune", 32, {"alpha": 2.0}, 4)
    assert parse_model_args().budget.keep == 64  # the default budget
    for kw, msg in [
        (dict(method="nope"), "method: unknown method 'nope'; available: cdpruner"),
        (dict(method="divprune", alpha=2), "alpha: not a hyperparameter of method 'divprune'"),
        (dict(newlines="some"), "newlines must be one of"),
        (dict(dtype="int8"), "dtype must be one of"),
        (dict(device="gpu0"), "device must be"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(pretrained=""), "pretrained must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_model_args(**kw)


def _fail_load(*a, **k):
    raise AssertionError("a model was loaded before the arguments were checked")


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--methods", "resprune,nope"], "error: --methods: unknown method 'nope'; available: "),
        (["--keep", "64,0"], "error: --keep: keep must be a positive number"),
        (["--keep", "64,lots"], "error: --keep: keep must be an int, got 'lots'"),
        (["--keep-ratio", "0.5,2"], "error: --keep-ratio: keep_ratio must be in (0, 1]"),
        (["--methods", "divprune", "--hparam", "alpha=2"], "error: --hparam: 'alpha' is a hyperparameter of none"),
        (["--hparam", "alpha"], "error: --hparam: expected NAME=VALUE"),
        (["--tasks", " , "], "error: --tasks: give at least one value"),
        (["--limit", "0"], "error: --limit must be a positive int"),
    ],
)
def test_sweep_bad_input_is_one_line_before_any_model(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("resprune.loading.load_model", _fail_load)
    imported = "lmms_eval" in sys.modules
    assert sweep.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(msg), err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    if not imported:  # these checks need neither lmms-eval nor a model
        assert "lmms_eval" not in sys.modules
