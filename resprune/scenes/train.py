"""Train the offline default model on the scene world: ``python -m resprune.scenes.train``.

    python -m resprune.scenes.train --device cpu --steps 2400 --out assets/scenes-model

Recipe (what made a few-million-parameter LLaVA learn the world on two CPU cores):

- Data is generated once (in parallel) into tensors: images `(S, H, W, 3)` uint8, several question sets per scene
  (the scene's own plus re-drawn ones), and per-patch targets from the exact masks.
- All questions of a scene are packed into one multi-turn sequence (``USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER:
  {q2} ASSISTANT: ...``), so the vision tower and the 144 image tokens are paid for once per ~4.5 answers; the
  first turn is exactly the single-turn prompt used at test time. The loss is on answer tokens only.
- An auxiliary dense loss (a linear head, dropped after training) asks every projected visual token - exactly what
  the language model reads - for the colour and shape of the object under its patch and for the shape of an
  object whose centre lies in it. The visual tokens covering an object thus carry its identity, which is what
  pruning demonstrations need, and counting reduces to counting "centre" tokens.
- The same head also regresses every visual token's own (column, row) in [-1, 1]. Llama reads the 144 image tokens
  in raster order with 1-D RoPE, which makes "above/below" cheap (rows are 12 positions apart) but leaves
  "left/right" (the index modulo 12) at chance; a token that carries its column linearly fixes that, and averaging
  over an object's tokens (what the supervised attention heads do) gives the object's centre.
- Where, not only what: a second training-only head reads, from the output of the layer whose two heads are
  supervised to look at the question's objects, the centre of each head's objects. With the token positions above
  this makes "left or right of" a comparison of two numbers the later layers can learn; without both, the model
  answered left/right at chance (54 %) while above/below reached 95 %. Both position losses switch on part-way
  (``--position-from``, a share of the schedule): from step 0 the object-centre loss asks for centres before the
  supervised heads look at the objects, and slowed every question type down.
- What, read off: ``--what-weight`` (off by default; v1 was trained without it) adds a third training-only head on
  the same output, asking for the colour and the shape of the objects each supervised head looks at (soft targets:
  their patches' labels). World 2 needs it: without it the answers found an object by its shape and read its
  colour, but read the shape of an object found by its colour at 65-82 %, although its tokens carried the shape.
- How many, read off: ``--count-weight`` (off by default) asks the first supervised head, at count questions, for
  equal shares of its attention on ``<s>`` and on the one centre token of each counted object (``count_loss``),
  instead of all its mass on the objects' tokens. A head averages what it looks at, so the latter passes on what
  the objects are but not how many; the share it gives ``<s>``, ``1 / (n + 1)``, is the count. Made for world 2,
  whose objects have continuous sizes and may overlap (v2 without it: counts 89 %; three 75 %, four 70 %); measured
  (docs/scenes.md): it speeds counting up early but ends level, so v2 is trained without it.
- ``--vision-steps N`` (off by default; v1 was trained without it): a first phase in which only the vision tower,
  the projector and the dense head learn the per-patch targets, the language model waiting, as LLaVA starts from
  a vision tower already trained on images. It counts towards ``--time-budget``.
- AdamW, linear warm-up then cosine decay.
- ``--init DIR`` continues from a checkpoint (a second stage with new losses or data); the log, the curve and
  ``training.json`` then include the earlier stages and each stage's command, to be run in order. The shipped
  checkpoint is one run: its command is in ``assets/scenes-model/training.json`` and the model card.

Writes the checkpoint (``save_pretrained``, float32), ``train_log.csv`` (step, loss, lr, validation accuracy per
question type), ``learning_curve.png`` and ``training.json``. Fixed seed: the same command on the same kind of
device reproduces the checkpoint. ``--time-budget`` depends on the machine's speed, so it prints the step count it
chose; ``--budget-steps N`` replays that run exactly (same schedule, including its first 60 steps).
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

from .world import COLOURS, IMAGE_SIZE, QUESTION_TYPES, SHAPES, WORLDS, question_seed, questions, render, split_seeds

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)  # CLIP normalisation
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PATCH = 16
GRID = IMAGE_SIZE // PATCH  # 12
MIN_COVER = 40  # pixels of a 16 x 16 patch an object must cover for the patch to be labelled with it
N_AUX = (1 + len(COLOURS), 1 + len(SHAPES), 1 + len(SHAPES))  # colour, shape, centre-shape (0: none)
N_POS = 2  # the visual token's own column and row, regressed in [-1, 1]
MAX_OBJECTS = 7  # world 2 has 2 to 7 objects (world 1: 2 to 5)
ATTN_COVER = 24  # pixels of a patch an object must cover to count as "the object" for attention supervision
ATTN_LAYER, ATTN_HEADS = 1, (0, 1)  # the language-model layer and heads whose attention is supervised
CENTRE = 2  # in ``object_patches``: the patch of the object's centre


def patch_targets(objects: tuple) -> np.ndarray:
    """`(3, GRID*GRID)` uint8: per patch the colour, shape (1-based, 0 = background) of the object covering it
    most, and the shape of an object whose centre lies in the patch."""
    tgt = np.zeros((3, GRID, GRID), dtype=np.uint8)
    cover = np.zeros((GRID, GRID), dtype=np.int32)
    colours, shapes = list(COLOURS), list(SHAPES)
    for o in objects:
        c = o.mask.reshape(GRID, PATCH, GRID, PATCH).sum((1, 3))
        win = (c >= MIN_COVER) & (c > cover)
        cover = np.where(win, c, cover)
        tgt[0][win] = 1 + colours.index(o.colour)
        tgt[1][win] = 1 + shapes.index(o.shape)
        tgt[2][min(int(o.y) // PATCH, GRID - 1), min(int(o.x) // PATCH, GRID - 1)] = 1 + shapes.index(o.shape)
    return tgt.reshape(3, -1)


def object_patches(objects: tuple) -> np.ndarray:
    """`(MAX_OBJECTS, GRID*GRID)` uint8: the patches each object covers (>= ATTN_COVER pixels: 1) and the patch of
    its centre (2); 0 elsewhere. Nonzero is "the object", ``== CENTRE`` its one centre token."""
    out = np.zeros((MAX_OBJECTS, GRID, GRID), dtype=np.uint8)
    for i, o in enumerate(objects):
        out[i] = o.mask.reshape(GRID, PATCH, GRID, PATCH).sum((1, 3)) >= ATTN_COVER
        out[i, min(int(o.y) // PATCH, GRID - 1), min(int(o.x) // PATCH, GRID - 1)] = CENTRE
    return out.reshape(MAX_OBJECTS, -1)


def count_density(objects: tuple) -> np.ndarray:
    """`(len(SHAPES), GRID*GRID)` float32: per shape, each object's share of its visible pixels in each patch (a
    counting density map, as in crowd counting): a row sums to the number of objects of that shape, so a token
    carrying its patch's density makes a count the sum (or the mean) over tokens, however the objects' sizes vary
    and wherever they overlap."""
    out = np.zeros((len(SHAPES), GRID * GRID), dtype=np.float32)
    shapes = list(SHAPES)
    for o in objects:
        c = o.mask.reshape(GRID, PATCH, GRID, PATCH).sum((1, 3)).reshape(-1).astype(np.float32)
        if c.sum() > 0:
            out[shapes.index(o.shape)] += c / c.sum()
    return out


def token_positions(device: Any = None) -> Any:
    """`(GRID*GRID, 2)` float: each visual token's column and row (raster order), scaled to [-1, 1]."""
    import torch

    r = torch.linspace(-1.0, 1.0, GRID, device=device)
    return torch.stack([r.repeat(GRID), r.repeat_interleave(GRID)], dim=-1)


def _attention_targets(q: Any, objects: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Objects the two supervised heads should look at: both the question's objects, or for a spatial question
    the first object (head 0) and the reference object (head 1). Empty for absent objects ("no", "zero")."""
    idx = tuple(next(i for i, o in enumerate(objects) if o is qo) for qo in q.objects)
    if q.type == "spatial":
        return idx[:1], idx[1:]
    return idx, idx


def _scene_batch(args: tuple[list[int], int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, list]]:
    seeds, n_sets, world = args
    out = []
    for s in seeds:
        image, objects = render(s, world)
        # set 0 is the scene's own (what ``sample(seed, world)`` returns); the others re-draw the templates' choices
        sets = [questions(objects, random.Random(question_seed(s, world, k))) for k in range(n_sets)]
        qsets = [[(q.text, q.answer, q.type, *_attention_targets(q, objects)) for q in qs] for qs in sets]
        out.append(
            (
                np.asarray(image, dtype=np.uint8),
                patch_targets(objects),
                object_patches(objects),
                count_density(objects),
                qsets,
            )
        )
    return out


def make_dataset(split: str, n_scenes: int, workers: int, n_sets: int = 1, world: int = 1) -> tuple[Any, ...]:
    """Images `(S, H, W, 3)` uint8, patch targets `(S, 3, 144)` uint8, object patches `(S, MAX_OBJECTS, 144)`
    uint8 (``object_patches``), counting densities `(S, len(SHAPES), 144)` float32 (``count_density``), and per
    scene ``n_sets`` question sets of (text, answer, type, head-0 objects, head-1 objects), from the
    scenes of world ``world``."""
    seeds = list(split_seeds(split, n_scenes))
    chunks = [(seeds[i : i + 250], n_sets, world) for i in range(0, len(seeds), 250)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_scene_batch, chunks))
    else:
        parts = [_scene_batch(c) for c in chunks]
    rows = [r for part in parts for r in part]
    return tuple(np.stack([r[i] for r in rows]) for i in range(4)) + ([r[4] for r in rows],)


class Encoder:
    """Token ids of prompts and answers, exactly as the processor + chat template produce them (cached)."""

    def __init__(self, processor: Any, n_image_tokens: int = GRID * GRID) -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.n_image = n_image_tokens
        self.eos = self.tok.eos_token_id
        self.cache: dict[tuple[str, str], list[int]] = {}

    def first_turn(self, question: str) -> list[int]:
        """``<s>USER: <image>*144\\n{question} ASSISTANT:`` (the test-time prompt)."""
        key = ("first", question)
        if key not in self.cache:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
            text = text.replace("<image>", "<image>" * self.n_image)
            self.cache[key] = self.tok(text, add_special_tokens=True)["input_ids"]
        return self.cache[key]

    def next_turn(self, question: str) -> list[int]:
        key = ("next", question)
        if key not in self.cache:
            self.cache[key] = self.tok(f"USER: {question} ASSISTANT:", add_special_tokens=False)["input_ids"]
        return self.cache[key]

    def answer(self, answer: str) -> list[int]:
        key = ("answer", answer)
        if key not in self.cache:
            self.cache[key] = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return self.cache[key]

    def packed(self, qas: list[tuple]) -> tuple[list[int], list[int], list[int]]:
        """One multi-turn sequence of all ``qas``, its labels (answer tokens only), and per turn the position
        that predicts the answer's first token (the last prompt token)."""
        ids: list[int] = []
        lab: list[int] = []
        pos: list[int] = []
        for i, (q, a, *_) in enumerate(qas):
            p = self.first_turn(q) if i == 0 else self.next_turn(q)
            t = self.answer(a)
            ids += p
            pos.append(len(ids) - 1)
            ids += t
            lab += [-100] * len(p) + t
        return ids, lab, pos


def pad(seqs: list[list[int]], labs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded ids, attention mask and labels `(B, L)`."""
    L = max(map(len, seqs))
    ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    lab = np.full((len(seqs), L), -100, dtype=np.int64)
    am = np.zeros((len(seqs), L), dtype=np.int64)
    for i, (sq, lb) in enumerate(zip(seqs, labs)):
        ids[i, : len(sq)], lab[i, : len(lb)], am[i, : len(sq)] = sq, lb, 1
    return ids, am, lab


def normalise(images: Any, mean: Any, std: Any) -> Any:
    """CLIP normalisation of `(B, H, W, 3)` uint8 images (192 px: the processor's resize/crop are identities)."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def visual_tokens(model: Any, pv: Any) -> Any:
    """`(B, 144, D)`: the projected visual tokens the language model reads for normalised images ``pv`` (vision
    tower layer -2, CLS dropped, projector), as ``LlavaForConditionalGeneration`` computes them."""
    import torch

    cfg = model.config
    feats = model.model.get_image_features(
        pixel_values=pv,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    ).pooler_output
    return torch.stack(list(feats))


def dense_loss(
    aux: Any, feats: Any, tgt: Any, pos_weight: float = 0.0, dens: Any = None, density_weight: float = 0.0
) -> Any:
    """Mean cross-entropy of ``aux["tokens"]``'s per-token classes (colour, shape, centre-shape; ``tgt`` `(B, 3,
    144)`) plus ``pos_weight`` x the mean squared error of ``aux["pos"]``'s token position, plus ``density_weight``
    x ``density_loss`` of ``aux["density"]`` against ``dens`` `(B, len(SHAPES), 144)`."""
    import torch.nn.functional as F

    parts = aux["tokens"](feats).float().split(N_AUX, dim=-1)
    dense = sum(F.cross_entropy(p.reshape(-1, p.shape[-1]), tgt[:, i].reshape(-1)) for i, p in enumerate(parts))
    dense = dense / len(N_AUX)
    if pos_weight:
        pos = aux["pos"](feats).float()
        dense = dense + pos_weight * F.mse_loss(pos, token_positions(pos.device).expand_as(pos))
    if density_weight:
        dense = dense + density_weight * density_loss(aux["density"](feats).float(), dens)
    return dense


def density_loss(pred: Any, dens: Any) -> Any:
    """A counting density's error in units of objects: the squared error per token summed over the 144 tokens, plus
    the squared error of the sums (the counts), both averaged over images and shapes. ``pred`` `(B, 144,
    len(SHAPES))` (a head's output on the visual tokens), ``dens`` `(B, len(SHAPES), 144)` (``count_density``)."""
    t = dens.transpose(1, 2).float()
    return ((pred - t) ** 2).sum(1).mean() + ((pred.sum(1) - t.sum(1)) ** 2).mean()


def forward(model: Any, ids: Any, am: Any, pv: Any) -> tuple[Any, Any, Any]:
    """Hidden states `(B, L, D)` of the language model, the visual tokens `(B, 144, D)` it reads (the projector's
    output), and all the language model's hidden states (``[i]`` is the input of layer i).

    The same computation as ``LlavaForConditionalGeneration.forward`` (vision tower layer -2, CLS dropped,
    projector, image tokens replaced by the features), written out so the visual tokens can be supervised too.
    """
    cfg = model.config
    feats = visual_tokens(model, pv)
    emb = model.get_input_embeddings()(ids)
    mask = (ids == cfg.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, feats.to(emb.dtype))
    out = model.model.language_model(inputs_embeds=emb, attention_mask=am, output_hidden_states=True)
    return out.last_hidden_state, feats, out.hidden_states


def attention_loss(model: Any, x: Any, ids: Any, am: Any, rows: Any, pos: Any, rel: Any, head_logp: Any = None) -> Any:
    """``-log`` of the attention mass that heads ``ATTN_HEADS`` of layer ``ATTN_LAYER``, at the positions ``pos``
    predicting an answer, put on the visual tokens of the question's objects.

    Args:
        x: `(B, L, D)` input of the layer.
        rows, pos: `(N,)` sequence and position of each supervised query.
        rel: `(N, len(ATTN_HEADS), 144)` bool, the patches each head should look at (rows with none are skipped).
        head_logp: ``_head_log_attention(model, x, am)`` when the caller has it (computed here otherwise).
    """
    img = (ids[0] == model.config.image_token_id).nonzero().squeeze(1)  # (144,) same prefix in every row
    head_logp = head_logp or _head_log_attention(model, x, am)
    total, n = x.new_zeros(()), 0
    for j, h in enumerate(ATTN_HEADS):
        keep = rel[:, j].any(-1)
        if not keep.any():
            continue
        logp = head_logp(h, rows[keep], pos[keep])[:, img]  # (N, 144)
        total = total - logp.masked_fill(~rel[keep, j], float("-inf")).logsumexp(-1).sum()
        n += int(keep.sum())
    return total / max(n, 1)


def _head_log_attention(model: Any, x: Any, am: Any) -> Any:
    """``f(head, rows, pos)``: `(N, L)` float32 log attention weights of that head of layer ``ATTN_LAYER`` (its input
    ``x`` `(B, L, D)`), queried at ``pos`` of sequences ``rows``, over the causal, unpadded keys."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = model.model.language_model
    layer = lm.layers[ATTN_LAYER]
    att = layer.self_attn
    B, L, _ = x.shape
    hd = att.head_dim
    xn = layer.input_layernorm(x)
    q = att.q_proj(xn).view(B, L, -1, hd).transpose(1, 2)  # (B, H, L, hd)
    k = att.k_proj(xn).view(B, L, -1, hd).transpose(1, 2)  # (B, Hkv, L, hd)
    position_ids = torch.arange(L, device=x.device)[None].expand(B, L)
    cos, sin = lm.rotary_emb(xn, position_ids)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = q.shape[1] // k.shape[1]

    def logp(h: int, r: Any, p_: Any) -> Any:
        scores = (q[r, h, p_, :].unsqueeze(1) * k[r, h // groups]).sum(-1) / hd**0.5  # (N, L)
        allowed = (torch.arange(L, device=x.device)[None] <= p_[:, None]) & am[r].bool()
        return scores.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)

    return logp


def count_targets(centres: Any) -> Any:
    """The attention a counting head should have: `(N, 1 + 144)` over (the sequence's first token, the 144 visual
    tokens), ``1 / (n + 1)`` on the first token and on each of the ``n`` centre tokens marked in ``centres`` `(N,
    144)` bool, 0 elsewhere (all of it on the first token when ``n = 0``)."""
    import torch

    t = torch.cat([torch.ones_like(centres[:, :1]), centres], dim=1).float()
    return t / t.sum(-1, keepdim=True)


def count_loss(model: Any, x: Any, ids: Any, am: Any, rows: Any, pos: Any, centres: Any, head_logp: Any = None) -> Any:
    """Cross-entropy between the attention of head ``ATTN_HEADS[0]`` of layer ``ATTN_LAYER`` at the positions
    ``pos`` predicting a count and ``count_targets(centres)``: equal shares on the first token (``<s>``) and on the
    one centre token of each counted object.

    Why: an attention head averages, so one whose mass lies on the counted objects' tokens passes on what they are,
    not how many: with objects of continuous size (world 2), the number of their tokens does not give their number
    either. With a share ``1 / (n + 1)`` on the first token, what the head passes on from it is ``1 / (n + 1)``: the
    count, for the later layers to read off. Queries ``(N,)``; ``centres`` `(N, 144)` bool; ``head_logp`` as in
    ``attention_loss``."""
    import torch

    if not len(rows):
        return x.new_zeros(())
    img = (ids[0] == model.config.image_token_id).nonzero().squeeze(1)
    keys = torch.cat([img.new_zeros(1), img])  # the first token, then the 144 visual tokens (all before ``pos``)
    head_logp = head_logp or _head_log_attention(model, x, am)
    logp = head_logp(ATTN_HEADS[0], rows, pos)[:, keys]  # (N, 1 + 144)
    return -(count_targets(centres) * logp).sum(-1).mean()


def losses(
    model: Any,
    aux: Any,
    ids: Any,
    am: Any,
    lab: Any,
    pv: Any,
    tgt: Any,
    attn: tuple | None = None,
    pos_weight: float = 0.0,
    where: bool = False,
    what: bool = False,
    count: tuple | None = None,
    dens: Any = None,
    density_weight: float = 0.0,
) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Answer-token cross-entropy, the dense auxiliary loss (mean cross-entropy of ``aux["tokens"]``'s per-token
    classes plus ``pos_weight`` x the mean squared error of ``aux["pos"]``'s token position), the attention loss
    (``attn`` = rows, positions, relevant patches; see ``attention_loss``), if ``where`` the "where" loss
    (``where_loss``, with ``aux["where"]``), if ``what`` the "what" loss (``what_loss``, with ``aux["what"]``) and
    with ``count`` (rows, positions, centre patches of the count questions) the counting-head loss (``count_loss``);
    zeros for the parts switched off. ``dens`` and ``density_weight``: the counting density in the dense loss
    (``dense_loss``)."""
    import torch.nn.functional as F

    h, feats, hs = forward(model, ids, am, pv)
    sel = lab[:, 1:] != -100
    logits = model.lm_head(h[:, :-1][sel])
    lm = F.cross_entropy(logits.float(), lab[:, 1:][sel])
    dense = dense_loss(aux, feats, tgt, pos_weight, dens, density_weight)
    att = wh = wt = ct = h.new_zeros(())
    # layer ATTN_LAYER's queries and keys, once for both attention losses
    head_logp = _head_log_attention(model, hs[ATTN_LAYER], am) if count is not None or attn is not None else None
    if count is not None:
        ct = count_loss(model, hs[ATTN_LAYER], ids, am, *count, head_logp=head_logp)
    if attn is not None:
        att = attention_loss(model, hs[ATTN_LAYER], ids, am, *attn, head_logp=head_logp)
        if where:
            wh = where_loss(aux["where"], hs[ATTN_LAYER + 1], *attn)
        if what:
            wt = what_loss(aux["what"], hs[ATTN_LAYER + 1], *attn, tgt)
    return lm, dense, att, wh, wt, ct


def where_loss(head: Any, h: Any, rows: Any, pos: Any, rel: Any) -> Any:
    """Mean squared error of ``head`` reading, from the output `(B, L, D)` of layer ``ATTN_LAYER`` at each
    answer-predicting position, the centre (mean token position, in [-1, 1]) of the patches each supervised head
    should look at: `(N, 2 * N_POS)`, head 0's objects then head 1's; queries without objects are left out.

    The supervised heads then carry where their objects are, not only what they are: "left or right of" compares
    the two centres, which the later layers learn from the answer loss."""
    import torch.nn.functional as F

    grid = token_positions(h.device)  # (144, 2)
    m = rel.float()  # (N, 2, 144)
    n = m.sum(-1, keepdim=True)  # (N, 2, 1)
    centre = (m @ grid) / n.clamp_min(1)  # (N, 2, 2)
    pred = head(h[rows, pos]).float().view(-1, 2, N_POS)
    valid = (n > 0).expand_as(pred)
    if not valid.any():
        return h.new_zeros(())
    return F.mse_loss(pred[valid], centre[valid])


def what_targets(rel: Any, tgt: Any) -> tuple[Any, Any]:
    """Per supervised query and head, the share of each colour and each shape among the labelled patches
    (``tgt`` `(N, 3, 144)`, the queries' patch targets) of the patches that head should look at (``rel`` `(N, 2,
    144)`): `(N, 2, len(COLOURS))` and `(N, 2, len(SHAPES))`, rows of zeros where the head has no labelled patch."""
    import torch.nn.functional as F

    m = rel.float()
    out = []
    for i, n in ((0, len(COLOURS)), (1, len(SHAPES))):
        counts = m @ F.one_hot(tgt[:, i], n + 1).float()  # (N, 2, n + 1); class 0 is the background
        counts = counts[..., 1:]
        out.append(counts / counts.sum(-1, keepdim=True).clamp_min(1))
    return out[0], out[1]


def what_loss(head: Any, h: Any, rows: Any, pos: Any, rel: Any, tgt: Any) -> Any:
    """Cross-entropy of ``head`` reading, from the output `(B, L, D)` of layer ``ATTN_LAYER`` at each
    answer-predicting position, the colour and the shape of the objects each supervised head should look at
    (``what_targets`` of their patches; ``tgt`` `(B, 3, 144)` the batch's patch targets), against soft targets;
    heads without objects are left out.

    Without it the answers found an object by its shape and read its colour (99 %) but not the reverse (65-82 %):
    the visual tokens carry the shape (a linear head reads it at 94 %), yet what the supervised heads pass on from
    them did not."""
    import torch

    colour, shape = what_targets(rel, tgt[rows])
    logits = head(h[rows, pos]).float().view(-1, 2, len(COLOURS) + len(SHAPES))
    total, n = h.new_zeros((), dtype=torch.float32), 0
    for t, lg in ((colour, logits[..., : len(COLOURS)]), (shape, logits[..., len(COLOURS) :])):
        valid = t.sum(-1) > 0  # (N, 2)
        if valid.any():
            total = total - (t[valid] * lg[valid].log_softmax(-1)).sum(-1).sum()
            n += int(valid.sum())
    return total / max(n, 1)


def vision_accuracy(model: Any, aux: Any, images: Any, tgt: Any, dens: Any = None, bs: int = 128) -> dict[str, float]:
    """The dense head's accuracy on the patches that show an object: its colour and its shape; with ``dens``
    (``count_density`` of the images) and a density head, also the share of (image, shape) counts that the rounded
    sum of its density over the 144 tokens gets right."""
    import torch

    mean = torch.tensor(MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(STD, device=images.device)[None, :, None, None]
    ok, n, counted = [0, 0], 0, [0, 0]
    with_count = dens is not None and "density" in aux
    model.eval()
    with torch.no_grad():
        for s in range(0, len(images), bs):
            feats = visual_tokens(model, normalise(images[s : s + bs], mean, std))
            parts = aux["tokens"](feats).split(N_AUX, -1)
            t = tgt[s : s + bs]
            obj = t[:, 1] > 0
            for i in range(2):
                ok[i] += int((parts[i].argmax(-1) == t[:, i])[obj].sum())
            n += int(obj.sum())
            if with_count:
                got = aux["density"](feats).sum(1).round()  # (b, len(SHAPES))
                want = dens[s : s + bs].sum(-1).round()
                counted[0] += int((got == want).sum())
                counted[1] += want.numel()
    model.train()
    acc = {"colour": ok[0] / max(n, 1), "shape": ok[1] / max(n, 1)}
    if with_count:
        acc["count"] = counted[0] / max(counted[1], 1)
    return acc


def vision_stage(
    model: Any,
    aux: Any,
    imgs: Any,
    tgts: Any,
    val: tuple,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    dens: Any = None,
    density_weight: float = 0.0,
) -> list[dict]:
    """The run's first phase: the vision tower, the projector and the dense head learn the per-patch targets alone
    (the language model waits), as LLaVA starts from a vision tower already trained on images. Linear warm-up,
    cosine decay; a row of (step, loss, validation patch accuracy) every tenth of the phase. ``val`` is (images,
    patch targets) or (images, patch targets, densities); ``dens`` and ``density_weight`` add the counting density
    (``dense_loss``) and need ``aux["density"]``."""
    import torch

    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    params += list(aux["tokens"].parameters())
    if density_weight:
        params += list(aux["density"].parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    warm = max(1, steps // 25)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    mean = torch.tensor(MEAN, device=imgs.device)[None, :, None, None]
    std = torch.tensor(STD, device=imgs.device)[None, :, None, None]
    rng = np.random.default_rng(seed + 1)  # its own stream: the main phase draws the same batches with or without it
    rows, ema, t0 = [], None, time.time()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(imgs), batch)).to(imgs.device)
        feats = visual_tokens(model, normalise(imgs[idx], mean, std))
        loss = dense_loss(aux, feats, tgts[idx], 0.0, None if dens is None else dens[idx], density_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        if step % max(1, steps // 10) == 0 or step == steps:
            acc = vision_accuracy(model, aux, *val)
            row = {
                "vision_step": step,
                "loss": round(ema, 5),
                **{f"val_patch_{k}": round(v, 4) for k, v in acc.items()},
            }
            rows.append({**row, "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def val_accuracy(
    model: Any, enc: Encoder, images: Any, qsets: list, device: str, pad_id: int, bs: int = 96
) -> dict[str, float]:
    """Teacher-forced single-turn check: every answer token (and EOS) argmax-correct, per question type."""
    import torch

    mean = torch.tensor(MEAN, device=device)[None, :, None, None]
    std = torch.tensor(STD, device=device)[None, :, None, None]
    items = [(i, qa) for i, sets in enumerate(qsets) for qa in sets[0]]
    ok = {t: [0, 0] for t in QUESTION_TYPES}
    model.eval()
    with torch.no_grad():
        for s in range(0, len(items), bs):
            chunk = items[s : s + bs]
            seqs, labs, _ = zip(*(enc.packed([qa]) for _, qa in chunk))
            ids, am, lab = (torch.from_numpy(x).to(device) for x in pad(list(seqs), list(labs), pad_id))
            pv = normalise(images[[i for i, _ in chunk]], mean, std)
            h, _, _ = forward(model, ids, am, pv)
            pred = model.lm_head(h[:, :-1]).argmax(-1)
            tgt = lab[:, 1:]
            good = ((pred == tgt) | (tgt == -100)).all(1)
            for (_, qa), g in zip(chunk, good.tolist()):
                ok[qa[2]][0] += int(g)
                ok[qa[2]][1] += 1
    model.train()
    acc = {t: c / max(n, 1) for t, (c, n) in ok.items()}
    acc["all"] = sum(c for c, _ in ok.values()) / max(1, sum(n for _, n in ok.values()))
    return acc


def main(argv: list[str] | None = None) -> int:
    import torch
    from tqdm import tqdm
    from transformers import LlavaForConditionalGeneration

    from .model import DEFAULT_DIR, build_config, build_processor

    p = argparse.ArgumentParser(prog="python -m resprune.scenes.train", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=32, help="scenes per step (each one packed sequence)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scenes", type=int, default=12_000, help="training scenes to pre-generate")
    p.add_argument("--question-sets", type=int, default=3, help="question sets drawn per training scene")
    p.add_argument("--aux-weight", type=float, default=1.0, help="dense visual-token loss weight")
    p.add_argument("--attn-weight", type=float, default=1.0, help="attention supervision weight (0: off)")
    p.add_argument("--pos-weight", type=float, default=0.0, help="visual-token position regression weight (0: off)")
    p.add_argument("--where-weight", type=float, default=0.0, help="object-centre regression weight (0: off)")
    p.add_argument(
        "--what-weight",
        type=float,
        default=0.0,
        help="weight of the loss asking the supervised layer's output for the colour and shape of the objects its "
        "heads look at (0: off)",
    )
    p.add_argument(
        "--count-weight",
        type=float,
        default=0.0,
        help="weight of the counting-head loss: at count questions the first supervised head gives equal shares of "
        "its attention to <s> and to each counted object's centre token (``count_loss``; 0: off)",
    )
    p.add_argument(
        "--count-attention",
        choices=("centres", "uniform"),
        default="centres",
        help="what the counting head (--count-weight) looks at: <s> and each counted object's centre token, or all "
        "144 visual tokens alike (with --density-weight the mean of their counting densities is then the counts)",
    )
    p.add_argument(
        "--density-weight",
        type=float,
        default=0.0,
        help="weight of a counting-density target on every visual token (``count_density``: each object's share of "
        "its pixels per patch, per shape), in the vision phase and the dense loss (0: off)",
    )
    p.add_argument(
        "--position-from",
        type=float,
        default=0.0,
        help="share of the schedule after which --pos-weight and --where-weight switch on (0: from the start)",
    )
    p.add_argument("--world", type=int, default=1, choices=WORLDS, help="the scene world to train on")
    p.add_argument(
        "--vision-steps",
        type=int,
        default=0,
        help="a first phase of this many steps training the vision tower, projector and dense head alone on the "
        "per-patch targets (0: off); it counts towards --time-budget",
    )
    p.add_argument("--vision-batch", type=int, default=64, help="images per step of the vision phase")
    p.add_argument(
        "--freeze-vision",
        action="store_true",
        help="keep the vision tower fixed after the vision phase, as LLaVA keeps its CLIP tower (the projector, the "
        "language model and the heads go on learning); needs --vision-steps or --init",
    )
    p.add_argument("--val-scenes", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds of training: the step count is fixed from the speed of steps 20-60 (0: use --steps)",
    )
    p.add_argument(
        "--budget-steps",
        type=int,
        default=0,
        help="replay a --time-budget run that fixed its schedule at this many steps: the first 60 steps follow "
        "--steps' schedule and the length is then set to this, exactly as the time budget did (0: off)",
    )
    p.add_argument("--init", default=None, help="start from the model in this folder instead of from scratch")
    a = p.parse_args(argv)
    if a.time_budget and a.budget_steps:
        p.error("--budget-steps replays a --time-budget run: give one of them, not both")
    if a.budget_steps and a.budget_steps < _FIX_AT:
        p.error(f"--budget-steps must be at least {_FIX_AT}, got {a.budget_steps}")
    if (a.time_budget or a.budget_steps) and a.steps <= _FIX_AT:
        p.error(
            f"--time-budget and --budget-steps need --steps above {_FIX_AT} (the schedule is fixed at step {_FIX_AT})"
        )
    if a.freeze_vision and not (a.vision_steps or a.init):
        p.error("--freeze-vision keeps a trained vision tower fixed: give --vision-steps or --init too")
    if not 0.0 <= a.position_from < 1.0:
        p.error(f"--position-from must be in [0, 1) (a share of the schedule), got {a.position_from}")

    if a.threads:
        torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    processor = build_processor()
    enc = Encoder(processor)
    pad_id = processor.tokenizer.pad_token_id
    train_imgs, train_tgt, train_obj, train_dens, train_q = make_dataset(
        "train", a.scenes, a.workers, a.question_sets, a.world
    )
    val_imgs, val_tgt, _, val_dens, val_q = make_dataset("val", a.val_scenes, a.workers, 1, a.world)
    n_q = sum(len(s) for sets in train_q for s in sets)
    print(f"data: {len(train_imgs)} train scenes ({n_q} questions), {len(val_imgs)} val; {time.time() - t0:.0f} s")

    cfg = build_config(
        processor.tokenizer,
        vision_width=a.vision_width,
        vision_layers=a.vision_layers,
        text_width=a.text_width,
        text_layers=a.text_layers,
    )
    d = cfg.text_config.hidden_size
    aux = torch.nn.ModuleDict({"tokens": torch.nn.Linear(d, sum(N_AUX))})  # training-only heads, not saved
    earlier_rows, earlier_stages = [], []
    if a.init:  # continue from a checkpoint (a second stage); the aux head restarts from zero
        earlier_rows, earlier_stages = _earlier_stages(Path(a.init))
        model = LlavaForConditionalGeneration.from_pretrained(a.init, dtype=torch.float32).to(a.device)
        d = model.config.text_config.hidden_size  # the checkpoint's width, whatever --text-width says
        aux["tokens"] = torch.nn.Linear(d, sum(N_AUX))
    else:
        model = LlavaForConditionalGeneration(cfg).to(a.device)
    # created after the model, so that a first stage without them draws the same random initialisation
    aux["pos"], aux["where"] = torch.nn.Linear(d, N_POS), torch.nn.Linear(d, 2 * N_POS)
    if a.what_weight:  # only then: runs without it draw exactly the random numbers they drew before
        aux["what"] = torch.nn.Linear(d, 2 * (len(COLOURS) + len(SHAPES)))
    if a.density_weight:  # from zero: a random head's sum over 144 tokens would start at counts in the tens
        aux["density"] = torch.nn.Linear(d, len(SHAPES))
        torch.nn.init.zeros_(aux["density"].weight)
        torch.nn.init.zeros_(aux["density"].bias)
    aux = aux.to(a.device)
    if a.init:
        for head in aux.values():
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
    model.train()
    n_params = sum(x.numel() for x in model.parameters())
    named = list(model.named_parameters()) + [(f"aux.{n}", x) for n, x in aux.named_parameters()]
    decay = [x for n, x in named if x.dim() >= 2 and "embed" not in n]
    no_decay = [x for n, x in named if not (x.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98)
    )
    total = [a.steps]  # the time budget may reset it after 60 steps; the schedule reads it

    def lr_at(s: int) -> float:
        warm = max(1, total[0] // 25)
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total[0])))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def position_on() -> int:  # the step at which --pos-weight / --where-weight switch on
        return int(a.position_from * total[0])

    rng = np.random.default_rng(a.seed)
    imgs = torch.from_numpy(train_imgs).to(a.device)
    tgts = torch.from_numpy(train_tgt.astype(np.int64)).to(a.device)
    dens = torch.from_numpy(train_dens).to(a.device) if a.density_weight else None
    vimgs = torch.from_numpy(val_imgs).to(a.device)
    mean = torch.tensor(MEAN, device=a.device)[None, :, None, None]
    std = torch.tensor(STD, device=a.device)[None, :, None, None]
    log_rows: list[dict] = []
    ema = ema_aux = ema_att = ema_where = ema_what = ema_count = None
    t_train = time.time()
    vision_rows = []
    if a.vision_steps:
        vtgts = torch.from_numpy(val_tgt.astype(np.int64)).to(a.device)
        vdens = torch.from_numpy(val_dens).to(a.device)
        vision_rows = vision_stage(
            model,
            aux,
            imgs,
            tgts,
            (vimgs, vtgts, vdens),
            a.vision_steps,
            a.vision_batch,
            a.lr,
            a.seed,
            dens,
            a.density_weight,
        )
    if a.freeze_vision:  # no gradient reaches the tower: AdamW skips it, and the backward pass stops at the projector
        model.model.vision_tower.requires_grad_(False)
    bar = tqdm(total=total[0], desc="train", mininterval=20)
    step = 0
    while step < total[0]:
        if a.time_budget and step == 20:
            t20 = time.time()
        if a.budget_steps and step == _FIX_AT:  # the replay of a time budget
            total[0] = bar.total = a.budget_steps
        if a.time_budget and step == _FIX_AT:  # fix the schedule's length from the measured speed
            per_step = (time.time() - t20) / (_FIX_AT - 20)
            total[0] = bar.total = max(100, _FIX_AT + int((a.time_budget - (time.time() - t_train)) / per_step))
            print(
                f"{per_step:.2f} s/step: training for {total[0]} steps (replay: --budget-steps {total[0]})", flush=True
            )
        sc = rng.integers(0, len(train_imgs), a.batch)
        seqs, labs, a_rows, a_pos, a_rel, c_q, c_cen = [], [], [], [], [], [], []
        for b, i in enumerate(sc):
            qas = list(train_q[i][rng.integers(len(train_q[i]))])
            rng.shuffle(qas)
            s_ids, s_lab, s_pos = enc.packed(qas)
            seqs.append(s_ids)
            labs.append(s_lab)
            for qa, t in zip(qas, s_pos):
                a_rows.append(b)
                a_pos.append(t)
                a_rel.append([train_obj[i][list(o)].any(0) for o in qa[3:5]])
                if a.count_weight and qa[2] == "count":  # head 0 counts: its share of <s> and centre tokens
                    c_q.append(len(a_rows) - 1)
                    if a.count_attention == "uniform":  # all 144 visual tokens alike (and 1/145 on <s>)
                        c_cen.append(np.ones(GRID * GRID, dtype=bool))
                    else:
                        c_cen.append((train_obj[i][list(qa[3])] == CENTRE).any(0))
                    a_rel[-1][0] = np.zeros_like(a_rel[-1][0])  # not the "look at the objects" target as well
        ids, am, lab = (torch.from_numpy(x).to(a.device) for x in pad(seqs, labs, pad_id))
        idx = torch.from_numpy(sc).to(a.device)
        pv = normalise(imgs[idx], mean, std)
        attn = (
            torch.tensor(a_rows, device=a.device),
            torch.tensor(a_pos, device=a.device),
            torch.from_numpy(np.array(a_rel, dtype=bool)).to(a.device),
        )
        count = None
        if c_q:
            cq = torch.tensor(c_q, device=a.device)
            count = (attn[0][cq], attn[1][cq], torch.from_numpy(np.array(c_cen, dtype=bool)).to(a.device))
        # the position losses wait until the answer and attention losses have done most of their work
        pos_w, where_w = (a.pos_weight, a.where_weight) if step >= position_on() else (0.0, 0.0)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=a.device.startswith("cuda")):
            lm, dense, att, where, what, cnt = losses(
                model,
                aux,
                ids,
                am,
                lab,
                pv,
                tgts[idx],
                attn if a.attn_weight or where_w or a.what_weight else None,
                pos_w,
                bool(where_w),
                bool(a.what_weight),
                count,
                None if dens is None else dens[idx],
                a.density_weight,
            )
        loss = lm + a.aux_weight * dense + a.attn_weight * att + where_w * where + a.what_weight * what
        loss = loss + a.count_weight * cnt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        lv, dv, av = float(lm.detach()), float(dense.detach()), float(att.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        ema_aux = dv if ema_aux is None else 0.95 * ema_aux + 0.05 * dv
        ema_att = av if ema_att is None else 0.95 * ema_att + 0.05 * av
        wv = float(where.detach())
        ema_where = wv if ema_where is None else 0.95 * ema_where + 0.05 * wv
        tv = float(what.detach())
        ema_what = tv if ema_what is None else 0.95 * ema_what + 0.05 * tv
        cv = float(cnt.detach())
        ema_count = cv if ema_count is None else 0.95 * ema_count + 0.05 * cv
        bar.set_postfix(
            loss=f"{ema:.3f}", aux=f"{ema_aux:.3f}", attn=f"{ema_att:.3f}", where=f"{ema_where:.3f}", refresh=False
        )
        if step % a.eval_every == 0 or step == total[0]:
            acc = val_accuracy(model, enc, vimgs, val_q, a.device, pad_id)
            row = {
                "step": step,
                "loss": round(ema, 5),
                "aux_loss": round(ema_aux, 5),
                "attn_loss": round(ema_att, 5),
                "where_loss": round(ema_where, 5),
                "what_loss": round(ema_what, 5),
                **({"count_loss": round(ema_count, 5)} if a.count_weight else {}),
                "lr": sched.get_last_lr()[0],
                **{f"val_{k}": round(v, 4) for k, v in acc.items()},
                "seconds": round(time.time() - t0, 1),
            }
            log_rows.append(row)
            print(json.dumps(row), flush=True)
    bar.close()

    model = model.to("cpu")
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    stage = len(earlier_stages) + 1
    offset = int(earlier_rows[-1]["step"]) if earlier_rows else 0
    log_rows = earlier_rows + [{**r, "step": r["step"] + offset, "stage": stage} for r in log_rows]
    with open(out / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in log_rows for k in r)))  # every stage's
        w.writeheader()
        w.writerows(log_rows)
    meta = {
        "stage": stage,
        "init": a.init,
        "device": a.device,
        "device_name": torch.cuda.get_device_name()
        if a.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "steps": total[0],
        "batch": a.batch,
        "lr": a.lr,
        "seed": a.seed,
        "world": a.world,
        "train_scenes": a.scenes,
        "question_sets": a.question_sets,
        "train_questions": n_q,
        "aux_weight": a.aux_weight,
        "attn_weight": a.attn_weight,
        "where_weight": a.where_weight,
        "what_weight": a.what_weight,
        "count_weight": a.count_weight,
        "count_attention": a.count_attention,
        "density_weight": a.density_weight,
        "pos_weight": a.pos_weight,
        "position_from": a.position_from,
        "vision_steps": a.vision_steps,
        "vision_batch": a.vision_batch,
        "freeze_vision": a.freeze_vision,
        "vision_phase": vision_rows,
        "parameters": n_params,
        "wall_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "command": "python -m resprune.scenes.train " + " ".join(argv if argv is not None else os.sys.argv[1:]),
    }
    if earlier_stages:
        meta = {**meta, "stages": [*earlier_stages, dict(meta)]}
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    marks = []
    if a.position_from and (a.pos_weight or a.where_weight):
        marks.append((offset + position_on(), "position losses on"))
    _plot(log_rows, out / "learning_curve.png", marks)
    print(json.dumps(meta), flush=True)
    return 0


_FIX_AT = 60  # the step at which --time-budget (or its replay, --budget-steps) fixes the schedule's length


def _earlier_stages(init: Path) -> tuple[list[dict], list[dict]]:
    """The log rows (numbers, each with its ``stage``) and the ``training.json`` of every stage that produced the
    checkpoint in ``init``; empty when it has none (e.g. a checkpoint from elsewhere)."""
    rows: list[dict] = []
    if (init / "train_log.csv").is_file():
        with open(init / "train_log.csv", newline="") as f:
            for r in csv.DictReader(f):
                row = {k: float(v) for k, v in r.items() if v not in ("", None)}
                row["step"], row["stage"] = int(row["step"]), int(row.get("stage", 1))
                rows.append(row)
    stages: list[dict] = []
    if (init / "training.json").is_file():
        meta = json.loads((init / "training.json").read_text())
        stages = meta.get("stages") or [meta]
    return rows, stages


def _plot(rows: list[dict], path: Path, marks: list[tuple[int, str]] = ()) -> None:
    """Losses and validation accuracy against the step; a dashed line where a later stage took over and a dotted one
    at each of ``marks`` (step, label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    a1.plot(steps, [r["loss"] for r in rows], color="#0072B2", label="answer tokens")
    a1.plot(steps, [r["aux_loss"] for r in rows], color="#E69F00", label="visual tokens (aux; + own position when on)")
    a1.plot(steps, [r["attn_loss"] for r in rows], color="#009E73", label="attention to the objects")
    w = [(r["step"], r["where_loss"]) for r in rows if r.get("where_loss")]  # 0 while off: no point on a log axis
    if w:
        a1.plot(*zip(*w), color="#CC79A7", label="where the objects are")
    w = [(r["step"], r["what_loss"]) for r in rows if r.get("what_loss")]
    if w:
        a1.plot(*zip(*w), color="#D55E00", label="what the attended objects are")
    w = [(r["step"], r["count_loss"]) for r in rows if r.get("count_loss")]
    if w:
        a1.plot(*zip(*w), color="#56B4E9", label="counting head")
    a1.set_yscale("log")
    a1.set(xlabel="step", title="training loss (EMA)")
    a1.legend(fontsize=8)
    for t, c in zip(("all", *QUESTION_TYPES), ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#D55E00")):
        a2.plot(steps, [100 * r[f"val_{t}"] for r in rows], label=t, color=c, lw=2 if t == "all" else 1)
    a2.set(xlabel="step", ylabel="%", title="validation answer accuracy (teacher-forced)")
    a2.legend(fontsize=8)
    for prev, r in zip(rows, rows[1:]):  # where a later stage (``--init``) took over
        if r.get("stage", 1) != prev.get("stage", 1):
            for ax in (a1, a2):
                ax.axvline(prev["step"], color="#999999", ls="--", lw=0.8)
            a2.text(
                prev["step"],
                0.02,
                f" stage {r['stage']}",
                fontsize=7,
                color="#666666",
                transform=a2.get_xaxis_transform(),
            )
    for step, label in marks:
        for ax in (a1, a2):
            ax.axvline(step, color="#999999", ls=":", lw=0.8)
        a2.text(step, 0.02, f" {label}", fontsize=7, color="#666666", transform=a2.get_xaxis_transform())
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
