"""Train the offline default model on the scene world: ``python -m resprune.scenes.train``.

    python -m resprune.scenes.train --device cuda --steps 6000 --out assets/scenes-model

Pre-generates the training scenes once (in parallel), then trains a ``LlavaForConditionalGeneration`` end to end
(vision tower, projector and language model) with the loss on the answer tokens only: AdamW, linear warm-up then
cosine decay, bf16 autocast on a GPU. Writes the checkpoint (float16 weights), ``train_log.csv`` (step, loss,
lr, validation accuracy per question type) and ``learning_curve.png``. Fixed seed: the same command on the same
kind of device reproduces the checkpoint (GPU kernels may differ in the last bits).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .world import QUESTION_TYPES, sample, split_seeds

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)  # CLIP normalisation
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _scene_batch(seeds: list[int]) -> list[tuple[np.ndarray, list[tuple[str, str, str]]]]:
    out = []
    for s in seeds:
        sc = sample(s)
        out.append((np.asarray(sc.image, dtype=np.uint8), [(q.text, q.answer, q.type) for q in sc.questions]))
    return out


def make_dataset(split: str, n_scenes: int, workers: int) -> tuple[np.ndarray, list[tuple[int, str, str, str]]]:
    """Images `(S, H, W, 3)` uint8 and (scene index, question, answer, type) tuples."""
    seeds = list(split_seeds(split, n_scenes))
    chunks = [seeds[i : i + 500] for i in range(0, len(seeds), 500)]
    images, qa = [], []
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_scene_batch, chunks))
    else:
        parts = [_scene_batch(c) for c in chunks]
    for part in parts:
        for img, qs in part:
            for q in qs:
                qa.append((len(images), *q))
            images.append(img)
    return np.stack(images), qa


class Encoder:
    """Turns (question, answer) into input ids / labels exactly as the processor + chat template do."""

    def __init__(self, processor) -> None:  # noqa: ANN001
        self.processor = processor
        self.tok = processor.tokenizer
        self.cache: dict[str, list[int]] = {}
        self.eos = self.tok.eos_token_id

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self.cache:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
            n = self.processor.image_seq_length if hasattr(self.processor, "image_seq_length") else None
            expanded = text.replace("<image>", "<image>" * (n or 144))
            self.cache[question] = self.tok(expanded, add_special_tokens=True)["input_ids"]
        return self.cache[question]

    def answer_ids(self, answer: str) -> list[int]:
        key = "\0" + answer
        if key not in self.cache:
            self.cache[key] = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return self.cache[key]


def encode_all(enc: Encoder, items: list, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (question, answer) as right-padded ids, attention mask and labels `(M, L)`, built once."""
    seqs, labels = [], []
    for _, q, a, _ in items:
        p, t = enc.prompt_ids(q), enc.answer_ids(a)
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    L = max(map(len, seqs))
    ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    lab = np.full((len(seqs), L), -100, dtype=np.int64)
    am = np.zeros((len(seqs), L), dtype=np.int64)
    for i, (sq, lb) in enumerate(zip(seqs, labels)):
        ids[i, : len(sq)], lab[i, : len(lb)], am[i, : len(sq)] = sq, lb, 1
    return ids, am, lab


def pixel_values(images: np.ndarray) -> np.ndarray:
    """CLIP normalisation of `(B, H, W, 3)` uint8 images (192 px: the processor's resize/crop are identities)."""
    x = images.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2)


def collate(enc: Encoder, images: np.ndarray, items: list, pad_id: int) -> tuple:
    """Input ids, attention mask, labels and pixel values of a batch of (scene index, q, a, type) items."""
    import torch

    ids, am, lab = (torch.from_numpy(x) for x in encode_all(enc, items, pad_id))
    pv = torch.from_numpy(pixel_values(images[[it[0] for it in items]]))
    return ids, am, lab, pv


def first_token_accuracy(
    model: Any, enc: Encoder, images: np.ndarray, items: list, device: str, pad_id: int, bs: int = 256
) -> dict[str, float]:
    """Teacher-forced check of the whole answer (all answer tokens argmax-correct), per question type."""
    import torch

    correct = {t: [0, 0] for t in QUESTION_TYPES}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), bs):
            chunk = items[i : i + bs]
            ids, am, lab, pv = (x.to(device) for x in collate(enc, images, chunk, pad_id))
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = model(input_ids=ids, attention_mask=am, pixel_values=pv).logits
            pred = logits[:, :-1].argmax(-1)
            tgt = lab[:, 1:]
            ok = ((pred == tgt) | (tgt == -100)).all(1)
            for it, o in zip(chunk, ok.tolist()):
                correct[it[3]][0] += int(o)
                correct[it[3]][1] += 1
    model.train()
    acc = {t: c / max(n, 1) for t, (c, n) in correct.items()}
    acc["all"] = sum(c for c, _ in correct.values()) / max(1, sum(n for _, n in correct.values()))
    return acc


def main(argv: list[str] | None = None) -> int:
    import torch
    from tqdm import tqdm
    from transformers import LlavaForConditionalGeneration

    from .model import DEFAULT_DIR, build_config, build_processor

    p = argparse.ArgumentParser(prog="python -m resprune.scenes.train", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scenes", type=int, default=40_000, help="training scenes to pre-generate")
    p.add_argument("--val-scenes", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--vision-width", type=int, default=192)
    p.add_argument("--vision-layers", type=int, default=6)
    p.add_argument("--text-width", type=int, default=256)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds of training: after 50 steps the step count is set to fit (0: use --steps)",
    )
    p.add_argument("--processor", default=None, help="load the processor from this folder instead of building it")
    p.add_argument("--init", default=None, help="continue from the model weights in this folder")
    p.add_argument("--no-save-processor", action="store_true", help="write only the model files")
    a = p.parse_args(argv)

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.processor:
        from transformers import LlavaProcessor

        processor = LlavaProcessor.from_pretrained(a.processor, local_files_only=True)
    else:
        processor = build_processor()
    enc = Encoder(processor)
    pad_id = processor.tokenizer.pad_token_id
    train_imgs, train_qa = make_dataset("train", a.scenes, a.workers)
    val_imgs, val_qa = make_dataset("val", a.val_scenes, a.workers)
    print(
        f"data: {len(train_qa)} train questions on {len(train_imgs)} scenes, {len(val_qa)} val; "
        f"{time.time() - t0:.0f} s",
        flush=True,
    )

    cfg = build_config(
        processor.tokenizer,
        vision_width=a.vision_width,
        vision_layers=a.vision_layers,
        text_width=a.text_width,
        text_layers=a.text_layers,
    )
    if a.init:
        model = LlavaForConditionalGeneration.from_pretrained(a.init, dtype=torch.float32).to(a.device)
    else:
        model = LlavaForConditionalGeneration(cfg).to(a.device)
    model.train()
    n_params = sum(x.numel() for x in model.parameters())
    decay = [x for n, x in model.named_parameters() if x.dim() >= 2 and "embed" not in n]
    no_decay = [x for n, x in model.named_parameters() if not (x.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98)
    )
    warm = max(1, a.steps // 20)
    total_ref: list[int] = []  # filled below; the schedule reads the (possibly re-estimated) total

    def lr_at(s: int) -> float:
        n = total_ref[0][0] if total_ref else a.steps
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / n)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(a.seed)
    log_rows = []
    ema = None
    ids_all, am_all, lab_all = (torch.from_numpy(x).to(a.device) for x in encode_all(enc, train_qa, pad_id))
    scene_of = torch.tensor([q[0] for q in train_qa], device=a.device)
    imgs = torch.from_numpy(train_imgs).to(a.device).permute(0, 3, 1, 2)  # (S, 3, H, W) uint8, kept on device
    mean = torch.tensor(MEAN, device=a.device)[None, :, None, None]
    std = torch.tensor(STD, device=a.device)[None, :, None, None]
    total = [a.steps]
    total_ref.append(total)
    t_train = time.time()
    bar = tqdm(range(10**9), desc="train", mininterval=10)
    for step in bar:
        if step >= total[0]:
            break
        if a.time_budget and step == 50:
            t50 = time.time()
        if a.time_budget and step == 150:  # fix the schedule's length from the speed measured after warm-up
            per_step = (time.time() - t50) / 100
            total[0] = max(200, 150 + int((a.time_budget - (time.time() - t_train)) / per_step))
            print(f"{per_step * 1000:.1f} ms/step: training for {total[0]} steps", flush=True)
        idx = torch.from_numpy(rng.integers(0, len(train_qa), a.batch)).to(a.device)
        ids, am, lab = ids_all[idx], am_all[idx], lab_all[idx]
        width = int(am.sum(1).max())
        ids, am, lab = ids[:, :width], am[:, :width], lab[:, :width]
        pv = (imgs[scene_of[idx]].float() / 255.0 - mean) / std
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=a.device.startswith("cuda")):
            loss = model(input_ids=ids, attention_mask=am, pixel_values=pv, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0:
            ema = float(loss.detach()) if ema is None else 0.9 * ema + 0.1 * float(loss.detach())
            bar.set_postfix(loss=f"{ema:.4f}")
        if (step + 1) % a.eval_every == 0 or step + 1 == total[0]:
            acc = first_token_accuracy(model, enc, val_imgs, val_qa, a.device, pad_id)
            row = {
                "step": step + 1,
                "loss": round(ema, 5),
                "lr": sched.get_last_lr()[0],
                **{f"val_{k}": round(v, 4) for k, v in acc.items()},
                "seconds": round(time.time() - t0, 1),
            }
            log_rows.append(row)
            print(json.dumps(row), flush=True)
    a.steps = total[0]

    model = model.to("cpu").to(torch.float16)
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    model.save_pretrained(out)
    if not a.no_save_processor:
        processor.save_pretrained(out)
    with open(out / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log_rows[0]))
        w.writeheader()
        w.writerows(log_rows)
    meta = {
        "device": a.device,
        "device_name": torch.cuda.get_device_name()
        if a.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "steps": a.steps,
        "batch": a.batch,
        "lr": a.lr,
        "seed": a.seed,
        "train_scenes": a.scenes,
        "train_questions": len(train_qa),
        "parameters": n_params,
        "wall_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "command": "python -m resprune.scenes.train " + " ".join(argv or []),
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    _plot(log_rows, out / "learning_curve.png")
    print(json.dumps(meta), flush=True)
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    a1.plot(steps, [r["loss"] for r in rows], color="#0072B2")
    a1.set_yscale("log")
    a1.set(xlabel="step", title="training loss (EMA)")
    for t, c in zip(("all", *QUESTION_TYPES), ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#D55E00")):
        a2.plot(steps, [100 * r[f"val_{t}"] for r in rows], label=t, color=c, lw=2 if t == "all" else 1)
    a2.set(xlabel="step", ylabel="%", title="validation answer accuracy (teacher-forced)")
    a2.legend(fontsize=8)
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
