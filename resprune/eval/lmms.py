"""``--model resprune``: every registered pruning method on every supported family, as an lmms-eval model.

``--model_args pretrained=<preset|hub id|folder>,method=<name>,keep=<K>|keep_ratio=<r>,query=auto|full|none,
newlines=drop|keep|prune,dtype=…,device=…,batch_size=…,records=<folder>,<the method's hyperparameters>``.

Each request is answered by ``resprune.prune`` then the unmodified ``model.generate`` (no extra unpruned prefill).
The benchmark's prompt reaches the LLM whole; the relevance query leaves out its answer-format suffix
(``query="auto"``). Per-sample efficiency records (visual tokens, sequence length, KV-cache bytes, prefill FLOPs,
selection / prefill / generation time) go to ``records_rank<R>.jsonl`` per rank (``records=``, else beside
lmms-eval's ``--output_path``, else the working folder). Under ``accelerate launch`` each process holds its own
copy of the model (data parallel) on its own device.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ._args import BridgeArgs, Budget, clean_context, method_hparams, parse_model_args, relevance_query
from ._compat import chat_prompt, kv_cache_bytes, load_image, prefill_flops


class _FirstStep:
    """A logits processor that only notes when it is first called: the end of the prefill."""

    def __init__(self) -> None:
        self.t: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.t is None:
            self.t = time.perf_counter()
        return scores


class ResPruneLMM(lmms):
    """lmms-eval model: prune with a resprune method, then generate.

    Args:
        pretrained: preset name, hub id or local folder (``resprune.load_model``).
        method / keep / keep_ratio / newlines / query / dtype / device / batch_size / records / **hparams:
            see the module docstring; checked before the model is loaded.
        loaded: an already loaded ``(model, processor)`` (Python use; ``pretrained`` then only names it).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = "scenes",
        method: str | None = None,
        keep: Any = None,
        keep_ratio: Any = None,
        newlines: str | None = None,
        query: str = "auto",
        dtype: str = "auto",
        device: str = "auto",
        batch_size: Any = 1,
        records: str | None = None,
        max_batch_size: Any = None,  # lmms-eval passes its own; one batch size is all the bridge uses
        loaded: tuple[Any, Any] | None = None,
        **hparams: Any,
    ) -> None:
        super().__init__()
        args = parse_model_args(
            pretrained, method, keep, keep_ratio, newlines, query, dtype, device, batch_size, records, **hparams
        )
        self.accelerator = _accelerator(args.device)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self._device = _device(args.device, self.accelerator.local_process_index)
        if loaded is None:
            from resprune import load_model

            loaded = load_model(args.pretrained, dtype=_dtype(args.dtype), device=str(self._device))
        model, processor = loaded
        model = model.to(self._device)
        if args.dtype != "auto":
            model = model.to(_dtype(args.dtype))
        self._model, self.processor = model.eval(), processor
        self.args = args
        self._records_file: Any = None
        self._records_fresh = True  # the first write of a configuration starts the file anew
        self._warned: set[str] = set()
        self.n_probe = _probe_visual_tokens(model, processor)
        if _fixed_grid(model) and args.budget.keep is not None:
            args.budget.resolve(self.n_probe)  # LLaVA: every image has the same N; a too-large keep fails now

    # ---- what lmms-eval needs -------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.args.batch_size

    def clean(self) -> None:
        """Keep the model: lmms-eval deletes every ``nn.Module`` attribute here, but a sweep reuses it."""
        self._close_records()

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "resprune's bridge answers generate_until tasks (every usual pruning benchmark is one); "
            "loglikelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("resprune's bridge does not support multi-round generation")

    # ---- the sweep runner reuses one loaded model -----------------------------------------------------------
    def configure(
        self, method: str, budget: Budget, hparams: dict[str, Any] | None = None, records: str | None = None
    ) -> None:
        """Switch to another (method, budget) cell without reloading the model."""
        hp = method_hparams(method, dict(hparams or {}), strict=True)
        if _fixed_grid(self._model) and budget.keep is not None:
            budget.resolve(self.n_probe)
        self._close_records()
        self._records_fresh = True
        a = self.args
        self.args = BridgeArgs(
            a.pretrained, method, budget, a.newlines, a.query, a.dtype, a.device, a.batch_size, records, hp
        )

    # ---- answering ----------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            if (req.metadata or {}).get("__padding_only__"):  # lmms-eval pads ranks to equal counts; discarded
                out[i] = ""
            else:
                todo.append(i)
        bs = self._batch_size_for_method()
        groups: dict[str, list[int]] = {}
        for i in todo:  # one batch shares its generation settings
            groups.setdefault(json.dumps(requests[i].args[1], sort_keys=True, default=str), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), bs):
                chunk = idx[s : s + bs]
                for i, text in zip(chunk, self._answer([requests[i] for i in chunk])):
                    out[i] = text
        self._flush_records()
        return [o if o is not None else "" for o in out]

    def _batch_size_for_method(self) -> int:
        import resprune

        info = resprune.method_info(self.args.method)
        bs = self.args.batch_size
        if bs > 1 and info.stage == "llm":
            self._note(
                f"{self.args.method} prunes inside the LLM with per-sample positions: it cannot batch, "
                f"so its samples run one by one (batch_size={bs} ignored)"
            )
            return 1
        if bs > 1 and info.text_aware and self.args.query != "none":
            self._note(
                f"{self.args.method} uses each sample's own question as its query: its samples run one by "
                f"one (batch_size={bs} ignored)"
            )
            return 1
        return bs

    def _note(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            if self._rank == 0:
                print(f"resprune.eval: {msg}", file=sys.stderr)

    def _docs(self, reqs: list[Instance]) -> list[tuple[str, dict, list]]:
        rows = []
        for req in reqs:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            visuals = [v for v in (visuals or []) if v is not None]
            if len(visuals) > 1:
                raise ValueError(
                    f"task {task!r} doc {doc_id}: {len(visuals)} images; resprune's bridge prunes one image per sample"
                )
            rows.append((context, dict(gen_kwargs), visuals))
        return rows

    @torch.no_grad()
    def _answer(self, reqs: list[Instance]) -> list[str]:
        import resprune

        a = self.args
        model, proc, tok = self._model, self.processor, self.processor.tokenizer
        rows = self._docs(reqs)
        gen_kwargs = rows[0][1]
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new = int(gen_kwargs.get("max_new_tokens", 32))
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        texts = [clean_context(c) for c, _, _ in rows]
        queries = [relevance_query(c, a.query) for c, _, _ in rows]
        has_image = [bool(v) for _, _, v in rows]
        if any(has_image) and not all(has_image):
            return [t for r in reqs for t in self._answer([r])]  # image and text-only samples apart
        gen = dict(
            max_new_tokens=max_new, do_sample=sample, return_dict_in_generate=True, pad_token_id=tok.pad_token_id
        )
        if sample:
            gen.update(temperature=temperature, top_p=gen_kwargs.get("top_p"))
        first = _FirstStep()
        stats: dict[str, Any]
        if all(has_image):
            images = [load_image(v[0]).image for _, _, v in rows]
            chat = [chat_prompt(proc, t) for t in texts]
            inputs = self._process(images, chat)
            ks = [a.budget.resolve(int(n)) for n in (inputs["input_ids"] == model.config.image_token_id).sum(1)]
            if len(set(ks)) > 1:  # keep_ratio on images of different sizes: one K per call
                return [t for r in reqs for t in self._answer([r])]
            result = resprune.prune(
                model,
                inputs,
                a.method,
                ks[0],
                processor=proc,
                prompt=queries[0],
                image_sizes=[im.size for im in images],
                newlines=a.newlines,
                **a.hparams,
            )
            kw, stats = result.generate_kwargs, dict(result.stats)
            t0 = time.perf_counter()
            with result.generation_context():
                res = model.generate(**kw, **gen, logits_processor=[first])
            selections, words = result.selections, result.query_words
        else:  # a text-only sample: nothing to prune
            chat = [
                proc.apply_chat_template(
                    [{"role": "user", "content": [{"type": "text", "text": t}]}], add_generation_prompt=True
                )
                for t in texts
            ]
            kw = {k: v.to(self._device) for k, v in self._tokenize(chat).items()}
            n = int(kw["attention_mask"].sum(1).max())
            stats = dict(
                visual_tokens_before=0, visual_tokens_after=0, seq_len_before=n, seq_len_after=n, selection_seconds=0.0
            )
            t0 = time.perf_counter()
            res = model.generate(**kw, **gen, logits_processor=[first])
            selections, words = (), ()
        t_gen = time.perf_counter() - t0
        n_prompt = kw["input_ids"].shape[1] if "input_ids" in kw else 0
        new = res.sequences[:, n_prompt:]
        answers = [_cut(tok.decode(s, skip_special_tokens=True), until) for s in new]
        t_prefill = (first.t or time.perf_counter()) - t0
        self._record(reqs, kw, res, new, stats, selections, words, t_gen, t_prefill)
        return answers

    def _process(self, images: list[Any], chat: list[str]) -> dict[str, Any]:
        proc = self.processor
        tok = proc.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues the last position of every row
        try:
            if len(images) == 1:
                inputs = proc(images=images[0], text=chat[0], return_tensors="pt")
            else:
                inputs = proc(images=images, text=chat, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        return {k: v.to(self._device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def _tokenize(self, chat: list[str]) -> dict[str, Any]:
        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            return dict(tok(chat, return_tensors="pt", padding=True, add_special_tokens=False))
        finally:
            tok.padding_side = side

    # ---- efficiency records ----------------------------------------------------------------------------------
    def records_path(self) -> Path:
        """This rank's JSONL of per-sample efficiency records."""
        folder = self.args.records or _cli_output_path() or "."
        return Path(folder) / f"records_rank{self._rank}.jsonl"

    def _record(
        self,
        reqs: list[Instance],
        kw: dict[str, Any],
        res: Any,
        new: torch.Tensor,
        stats: dict[str, Any],
        selections: tuple,
        words: tuple,
        t_gen: float,
        t_prefill: float,
    ) -> None:
        am = kw["attention_mask"]
        b, lmax = am.shape
        seq = am.sum(1).tolist()
        cache = getattr(res, "cache", None) or getattr(res, "past_key_values", None)
        kv_total = kv_cache_bytes(cache)[0] if cache is not None else 0
        in_cache = max(new.shape[1] - 1, 0)  # the last generated token is never fed back
        seq_before = stats.get("seq_len_before", lmax)
        for i, req in enumerate(reqs):
            sel = selections[i] if i < len(selections) else None
            # the sequence the LLM's pruned layers see (FastV: generate gets the full prompt, its hooks prune)
            after = int(stats["seq_len_after"]) if b == 1 else int(seq[i])
            rec = dict(
                task=req.task_name,
                doc_id=req.doc_id,
                method=self.args.method,
                budget=self.args.budget.label(),
                visual_tokens_before=sel.n_tokens if sel is not None else 0,
                visual_tokens_after=sel.keep if sel is not None else 0,
                seq_len_before=int(seq_before) if b == 1 else None,
                seq_len_after=after,
                kv_cache_bytes=_prompt_kv_bytes(cache, kv_total, b, lmax, int(seq[i]), in_cache),
                prefill_flops_before=prefill_flops(self._model, int(seq_before)) if b == 1 else None,
                prefill_flops_after=prefill_flops(
                    self._model, after, full_len=int(seq_before), full_layers=stats.get("llm_layer", 0)
                ),
                selection_seconds=float(stats.get("selection_seconds", 0.0)) / b,
                prefill_seconds=t_prefill / b,
                generate_seconds=t_gen / b,
                new_tokens=int(new.shape[1]),
                batch=b,
                query_words=list(words[i]) if i < len(words) else [],
            )
            if "visual_tokens_equivalent" in stats:
                rec["visual_tokens_equivalent"] = float(stats["visual_tokens_equivalent"])
            self._write(rec)

    def _write(self, rec: dict[str, Any]) -> None:
        if self._records_file is None:
            path = self.records_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._records_file = open(path, "w" if self._records_fresh else "a")  # noqa: SIM115 - closed in clean()
            self._records_fresh = False
        self._records_file.write(json.dumps(rec) + "\n")

    def _flush_records(self) -> None:
        if self._records_file is not None:
            self._records_file.flush()

    def _close_records(self) -> None:
        if self._records_file is not None:
            self._records_file.close()
            self._records_file = None


def _cut(text: str, until: list[str]) -> str:
    """The answer up to the first stop sequence (leading whitespace does not count as one)."""
    text = text.strip()
    for u in until:
        if u and u in text:
            text = text[: text.index(u)]
    return text.strip()


def _prompt_kv_bytes(cache: Any, total: int, b: int, lmax: int, seq: int, in_cache: int) -> int:
    """Bytes of one sample's prompt in the cache: per layer, (its own prompt positions) x (bytes per position)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return total // max(b, 1)
    out = 0
    for layer in layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(t) and t.dim() == 4:  # (B, H, L, hd)
                per_pos = t.shape[1] * t.shape[3] * t.element_size()
                length = t.shape[2] - in_cache  # this layer's prompt length (FastV: shorter from its layer on)
                out += per_pos * max(length - (lmax - seq), 0)
    return out


def _accelerator(device: str) -> Any:
    """The process's ``Accelerator``: under ``accelerate launch`` on a machine without CUDA (or with
    ``device=cpu``) the processes join one gloo group (data parallel on CPU), no environment variable needed."""
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())


def _device(device: str, local_index: int) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_index}" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return torch.device(f"cuda:{local_index}")
    return torch.device(device)


def _dtype(dtype: str) -> Any:
    return None if dtype == "auto" else getattr(torch, dtype)


def _fixed_grid(model: Any) -> bool:
    """LLaVA-1.5 makes the same N of every image (one resized square grid)."""
    return type(model).__name__ == "LlavaForConditionalGeneration"


def _probe_visual_tokens(model: Any, processor: Any) -> int:
    from PIL import Image

    from resprune import count_visual_tokens

    return count_visual_tokens(model, processor, Image.new("RGB", (336, 336), (128, 128, 128)), "probe")


def _cli_output_path() -> str | None:
    """lmms-eval's ``--output_path`` when it runs as its own CLI (the model is not told it)."""
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--output_path" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--output_path="):
            return a.split("=", 1)[1]
    return None
