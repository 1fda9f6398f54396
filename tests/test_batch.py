"""Batched and device-resident selection: ``select_batch`` equals B single calls, the lock-step loops certify their
picks (or hand the image to the exact core), and they synchronise with the host nowhere inside the loop."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from test_fidelity import _tokens

import resprune
from resprune import list_methods, method_info, select, select_batch
from resprune.methods import divprune
from resprune.residual import greedy_residual, greedy_residual_batch

PRE_LLM = [m for m in list_methods() if not method_info(m).requires]
BATCHED = ["resprune", "residual", "cdpruner", "divprune"]


def _ragged(b: int = 5, n: int = 120, d: int = 96, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n - 7 * i, d, generator=g) * 0.2
        + torch.randn(n - 7 * i, 8, generator=g) @ torch.randn(8, d, generator=g)
        for i in range(b)
    ]


def _same(a: resprune.Selection, b: resprune.Selection) -> None:
    assert a.method == b.method and a.n_tokens == b.n_tokens
    assert torch.equal(a.order, b.order) and torch.equal(a.keep_idx, b.keep_idx)
    torch.testing.assert_close(a.gain, b.gain, rtol=1e-5, atol=1e-7)
    for x, y in ((a.energy, b.energy), (a.relevance, b.relevance)):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.residual, b.residual, rtol=1e-5, atol=1e-6)
    assert a.params == b.params and a.notes == b.notes


@pytest.fixture(params=["cpu-path", "lockstep-path", "threads"])
def lockstep_on_cpu(request, monkeypatch):
    """Every way a batch can run here: the CPU's per-image exact core one image after the other, the lock-step path
    an accelerator takes (forced onto the CPU), and the CPU's pool of threads (three, whatever the cores), which
    must all give the same Selections."""
    from resprune import batching
    from resprune.methods import _common

    monkeypatch.setattr(_common, "LOCKSTEP_ON_CPU", request.param == "lockstep-path")
    monkeypatch.setattr(batching, "default_workers", lambda: 3 if request.param == "threads" else 1)
    monkeypatch.setattr(batching, "THREAD_MIN_WORK", 0)  # the test images are small
    return request.param


@pytest.fixture
def one_worker(monkeypatch):
    """A batch on the CPU runs through the method's batched variant (no pool of threads)."""
    from resprune import batching

    monkeypatch.setattr(batching, "default_workers", lambda: 1)


@pytest.mark.parametrize("method", PRE_LLM)
def test_select_batch_equals_single_calls(method, lockstep_on_cpu):
    items = _ragged()
    q = torch.randn(3, 96, generator=torch.Generator().manual_seed(1))
    kw = {"query": q} if method_info(method).text_aware else {}
    for got, want in zip(select_batch(items, 30, method, **kw), [select(t, 30, method, **kw) for t in items]):
        _same(got, want)


def test_padded_tensor_with_lengths_and_per_image_queries_and_priors(lockstep_on_cpu):
    items = _ragged(b=4)
    n = max(t.shape[0] for t in items)
    padded = torch.zeros(4, n, 96)
    for b, t in enumerate(items):
        padded[b, : t.shape[0]] = t
    g = torch.Generator().manual_seed(2)
    queries = [torch.randn(2, 96, generator=g), None, torch.randn(5, 96, generator=g), torch.randn(1, 96, generator=g)]
    priors = [torch.rand(t.shape[0], generator=g) for t in items]
    lengths = [t.shape[0] for t in items]
    got = select_batch(padded, 25, "resprune", query=queries, lengths=lengths, seed_prior=priors, alpha=0.3)
    for b, t in enumerate(items):
        _same(got[b], select(t, 25, "resprune", query=queries[b], seed_prior=priors[b], alpha=0.3))
    assert got[1].notes and not got[0].notes  # the image without a query says so
    # a (B, Q, D) query tensor
    q3 = torch.randn(4, 3, 96, generator=g)
    for b, s in enumerate(select_batch(items, 25, "cdpruner", query=q3)):
        _same(s, select(items[b], 25, "cdpruner", query=q3[b]))


@pytest.mark.parametrize("kind", ["random", "outliers"])
def test_lockstep_core_certifies_and_equals_the_exact_core(kind):
    """LLaVA-size tokens: every image certified, same picks as the exact core, energies and curves equal."""
    vs = torch.stack([_tokens(kind, 576, 1024, seed=s) for s in range(3)])
    w = torch.rand(3, 576, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 0.75
    order, energy, gain, curve, ok = greedy_residual_batch(vs, 96, w)
    assert ok.all()
    for b in range(3):
        o, e, g, c = greedy_residual(vs[b], 96, w[b], None, solver="gram")
        assert torch.equal(order[b], o)
        torch.testing.assert_close(energy[b], e, rtol=1e-9, atol=0.0)
        torch.testing.assert_close(gain[b], g, rtol=1e-9, atol=0.0)
        torch.testing.assert_close(curve[b], c, rtol=1e-6, atol=1e-7)


def test_uncertified_images_go_to_the_exact_core(lockstep_on_cpu):
    """Exact copies (ties) and a rank-deficient image (energies reach float64's noise): the lock-step loop cannot
    certify those picks, so they are recomputed exactly; the batch still equals the single calls."""
    dup = _tokens("duplicates", 200, 64)
    low = _tokens("low_rank", 200, 64)
    fine = _tokens("random", 200, 64)
    _, _, _, _, ok = greedy_residual_batch(torch.stack([dup, low, fine]), 60, None, None)
    assert ok.tolist() == [False, False, True]
    *_, ok = divprune._lockstep([dup, fine], 60, torch.device("cpu"), 64)
    assert ok.tolist() == [False, True]
    for method in BATCHED:
        for got, t in zip(select_batch([dup, low, fine], 60, method), (dup, low, fine)):
            _same(got, select(t, 60, method))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype, lockstep_on_cpu):
    items = [t.to(dtype) for t in _ragged(b=3)]
    for method in BATCHED:
        got = select_batch(items, 20, method)
        for s, t in zip(got, items):
            _same(s, select(t, 20, method))
            assert s.order.dtype == torch.int64


def test_no_host_synchronisation_inside_the_loops():
    """The lock-step loops run on ``meta`` tensors (shapes only, no data): any ``.item()``, ``.tolist()``,
    ``.cpu()``/NumPy, data-dependent branch or boolean-mask indexing inside them would raise."""
    v = torch.empty(4, 100, 32, device="meta")
    w = torch.empty(4, 100, dtype=torch.float64, device="meta")
    valid = torch.ones(4, 100, dtype=torch.bool, device="meta")
    for seed in (None, torch.zeros(4, dtype=torch.int64, device="meta")):
        order, energy, gain, curve, ok = greedy_residual_batch(v, 20, w, seed, valid)
        assert order.device.type == "meta" and order.shape == (4, 20) and ok.shape == (4,)
    order, gain, ok = divprune._lockstep([torch.empty(100, 32, device="meta")] * 4, 20, torch.device("meta"), 32)
    assert order.device.type == "meta" and order.shape == (4, 20)
    # and the guard works: a loop that synchronises fails on meta
    with pytest.raises((RuntimeError, NotImplementedError)):
        int(torch.empty(3, device="meta").argmax())


def test_select_batch_bad_input():
    items = _ragged(b=2)
    with pytest.raises(ValueError, match=r"tokens must be \(B, N, D\)"):
        select_batch(torch.randn(10, 4), 3)
    with pytest.raises(TypeError, match="non-empty list"):
        select_batch([], 3)
    with pytest.raises(ValueError, match=r"lengths must be 2 counts in \[1, 5\]"):
        select_batch(torch.randn(2, 5, 4), 3, lengths=[5, 6])
    with pytest.raises(ValueError, match="lengths is only for a padded"):
        select_batch(items, 3, lengths=[3, 3])
    with pytest.raises(ValueError, match=r"query must be None, \(Q, D\), \(B=2, Q, D\) or a list of 2"):
        select_batch(items, 3, "resprune", query=[None])
    with pytest.raises(ValueError, match="seed_prior must be a list of 2 values"):
        select_batch(items, 3, "resprune", seed_prior=torch.rand(120))
    with pytest.raises(TypeError, match="bogus: not a keyword argument of method 'divprune'"):
        select_batch(items, 3, "divprune", bogus=1)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        select_batch(items, 3, "resprune", alpha=-1)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        select_batch(items, 3, "nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run scripts/gpu_check.sh on a GPU machine)")
def test_on_the_gpu_equals_the_cpu():
    items = _ragged(b=4, n=576, d=1024)
    q = torch.randn(3, 1024)
    for method in BATCHED + ["random", "uniform", "relevance"]:
        kw = {"query": q} if method_info(method).text_aware else {}
        cpu = [select(t, 64, method, **kw) for t in items]
        gpu_kw = {"query": q.cuda()} if kw else {}
        one = [select(t.cuda(), 64, method, **gpu_kw) for t in items]
        many = select_batch([t.cuda().half() for t in items], 64, method, **gpu_kw)
        for t, a, b, c in zip(items, cpu, one, many):
            assert b.order.device.type == c.order.device.type == "cuda"
            assert np.array_equal(a.order.numpy(), b.order.cpu().numpy())
            half = select(t.half(), 64, method, **kw)
            assert np.array_equal(half.order.numpy(), c.order.cpu().numpy())


@pytest.mark.parametrize("path", ["batched-variant", "threads"])
def test_prune_runs_a_batch_through_the_batched_variant(tiny_llava, monkeypatch, path):
    """Two images in one ``prune`` call: one call of the method's batched variant (or, on the CPU's pool of
    threads, none: each image's single call), selections equal to prune on each image alone
    (``test_adapters.test_batch_equals_per_sample`` checks the logits on every family)."""
    from helpers import make_image

    from resprune import batching, registry

    monkeypatch.setattr(batching, "default_workers", lambda: 1 if path == "batched-variant" else 2)
    monkeypatch.setattr(batching, "THREAD_MIN_WORK", 0)
    from resprune.generate import chat_prompt
    from resprune.pipeline import prune

    model, proc = tiny_llava
    calls = []
    real = registry._BATCH["resprune"]
    monkeypatch.setitem(registry._BATCH, "resprune", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    info, threads = registry.method_info("resprune"), []
    spy = dataclasses.replace(
        info, fn=lambda *a, **k: threads.append(threading.current_thread().name) or info.fn(*a, **k)
    )
    monkeypatch.setitem(registry._METHODS, "resprune", spy)
    proc.tokenizer.padding_side = "left"
    imgs = [make_image(640, 480, 1), make_image(300, 420, 2)]
    texts = [chat_prompt(proc, "red circle"), chat_prompt(proc, "blue square")]
    res = prune(
        model,
        proc(images=imgs, text=texts, return_tensors="pt", padding=True),
        "resprune",
        12,
        processor=proc,
        prompt="red circle",
    )
    assert calls == ([2] if path == "batched-variant" else [])
    assert [t.startswith("resprune-select") for t in threads] == ([] if path == "batched-variant" else [True, True])
    monkeypatch.setitem(registry._METHODS, "resprune", info)
    for i in range(2):
        one = prune(
            model,
            proc(images=imgs[i], text=texts[i], return_tensors="pt"),
            "resprune",
            12,
            processor=proc,
            prompt="red circle",
        )
        _same(res.selections[i], one.selections[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run scripts/gpu_check.sh on a GPU machine)")
def test_prune_on_the_gpu_equals_the_cpu(tiny_llava):
    """The model on CUDA: processor outputs follow it, the selection runs on the device, same picks as on the CPU."""
    import copy

    from helpers import make_image, make_inputs

    from resprune.pipeline import prune

    model, proc = tiny_llava
    inputs = make_inputs(proc, make_image())
    gpu = copy.deepcopy(model).cuda()
    for method in BATCHED:
        cpu_sel = prune(model, inputs, method, 16, processor=proc, prompt="red circle").selections[0]
        gpu_res = prune(gpu, inputs, method, 16, processor=proc, prompt="red circle")
        assert gpu_res.stats["selection_seconds"] > 0
        assert torch.equal(cpu_sel.order, gpu_res.selections[0].order.cpu())


def test_the_lockstep_path_certifies_realistic_batches(monkeypatch, one_worker):
    """Forced onto the CPU, the accelerator's path decides every image of a realistic batch itself: the exact core
    (the fallback) is never called, and the result equals the single calls."""
    from resprune.methods import _common

    monkeypatch.setattr(_common, "LOCKSTEP_ON_CPU", True)
    calls = []
    real = _common.greedy_residual
    monkeypatch.setattr(_common, "greedy_residual", lambda *a, **k: calls.append(1) or real(*a, **k))
    items = _ragged()
    q = torch.randn(3, 96, generator=torch.Generator().manual_seed(5))
    got = select_batch(items, 30, "resprune", query=q)
    assert calls == []
    monkeypatch.setattr(_common, "LOCKSTEP_ON_CPU", False)
    for g, t in zip(got, items):
        _same(g, select(t, 30, "resprune", query=q))
    assert len(calls) == len(items)  # the single calls ran the exact core


def test_threads_share_out_the_images_and_equal_single_calls(monkeypatch):
    """On the CPU ``workers`` threads take the images (each the single call, with one BLAS thread); ``workers=1``
    runs them one after the other. Same Selections either way, in the images' order."""
    import threading

    from resprune import registry

    info = registry.method_info("resprune")
    threads = []

    def spy(*a, **k):
        threads.append(threading.current_thread().name)
        return info.fn(*a, **k)

    monkeypatch.setitem(registry._METHODS, "resprune", dataclasses.replace(info, fn=spy))
    items = _ragged(b=6)
    q = torch.randn(3, 96, generator=torch.Generator().manual_seed(7))
    got = select_batch(items, 30, "resprune", query=q, workers=3)
    assert len(threads) == 6 and all(t.startswith("resprune-select") for t in threads)
    assert len(set(threads)) > 1  # more than one thread took images (3 threads, 6 images, each a few ms)
    threads.clear()
    seq = select_batch(items, 30, "resprune", query=q, workers=1)
    assert threads == []  # one worker: the batched variant, no per-image calls through the pool
    for g, s, t in zip(got, seq, items):
        want = select(t, 30, "resprune", query=q)
        _same(g, want)
        _same(s, want)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="workers"):
        select_batch(_ragged(b=2), 10, "divprune", workers=bad)


def test_auto_workers_only_for_images_large_enough(monkeypatch):
    """``workers=None``: the pool takes images whose Gram product is at least ``THREAD_MIN_WORK`` (LLaVA's
    576 x 4096 tokens are 40x that); smaller ones run one after the other, where threads would cost more."""
    import threading

    from resprune import batching, registry

    monkeypatch.setattr(batching, "default_workers", lambda: 2)
    info = registry.method_info("uniform")
    names = []
    monkeypatch.setitem(
        registry._METHODS,
        "uniform",
        dataclasses.replace(info, fn=lambda *a, **k: names.append(threading.current_thread().name) or info.fn(*a, **k)),
    )
    g = torch.Generator().manual_seed(3)
    small = [torch.randn(64, 8191, generator=g) for _ in range(2)]  # N^2 D just below the threshold
    large = [torch.randn(64, 8192, generator=g) for _ in range(2)]  # exactly the threshold
    assert 64**2 * 8192 == batching.THREAD_MIN_WORK
    select_batch(small, 8, "uniform")
    assert names == [threading.current_thread().name] * 2
    names.clear()
    select_batch(large, 8, "uniform")
    assert len(names) == 2 and all(n.startswith("resprune-select") for n in names)
