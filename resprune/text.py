"""The text side of ResPrune: which words of the instruction form the relevance query.

The paper cleans the prompt with regular expressions and keeps its nouns, extracted with spaCy [S]. spaCy's English
pipelines are installed from release wheels rather than the package registry, so this module uses spaCy when an
English pipeline is importable and otherwise a dependency-free fallback that keeps the prompt's content words
(everything that is not a stop word, a number or punctuation). ``Keywords.extractor`` says which one ran.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import torch

# Function words, question words, pronouns, auxiliaries and common instruction verbs: never content.
_STOP = frozenset(
    """
    a an the this that these those there here it its it's they them their theirs he she him her his hers we us our
    you your yours i me my mine one ones some any all each every both either neither no not nor none
    is are was were be been being am do does did doing done have has had having can could may might must shall
    should will would of in on at by for with about against between into through during before after above below
    to from up down out off over under again further then once and but or if because as until while so than too
    very just also only own same such more most other what which who whom whose when where why how
    please describe tell say show give explain answer question image picture photo photograph scene see look
    there's what's is there are there kind type sort thing things something anything word single briefly
    many much object objects
    """.split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z\-']*")


@dataclass(frozen=True)
class Keywords:
    """Words picked from an instruction, and the extractor that picked them.

    Attributes:
        words: the picked words, in prompt order, duplicates removed.
        extractor: ``"spacy:<pipeline>"`` or ``"fallback"``.
    """

    words: tuple[str, ...]
    extractor: str


def clean_prompt(prompt: str) -> str:
    """Strip chat-template markup and image placeholders (``<image>``, ``<|...|>``) and squeeze white space.

    >>> clean_prompt("USER: <image>\\nWhat colour is the  cube? ASSISTANT:")
    'What colour is the cube?'
    """
    text = re.sub(r"<\|?[^<>]{0,40}\|?>", " ", prompt)
    text = re.sub(r"\b(USER|ASSISTANT|SYSTEM)\s*:", " ", text)
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():  # pragma: no cover - depends on an optional install
    try:
        import spacy
    except Exception:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg"):
        try:
            return spacy.load(name, disable=["ner"])
        except Exception:
            continue
    return None


def _dedup(words: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


def fallback_keywords(prompt: str) -> tuple[str, ...]:
    """Content words of ``prompt`` without any NLP dependency (lower-cased, stop words dropped).

    >>> fallback_keywords("Is there a red circle left of the blue square?")
    ('red', 'circle', 'left', 'blue', 'square')
    """
    words = [w.lower().strip("'-") for w in _WORD.findall(clean_prompt(prompt))]
    return _dedup([w for w in words if len(w) > 1 and w not in _STOP])


def extract_keywords(prompt: str, *, extractor: str = "auto") -> Keywords:
    """The nouns of ``prompt`` (spaCy), or its content words (fallback).

    Args:
        prompt: the user's instruction (chat markup is stripped first).
        extractor: ``"auto"`` (spaCy if an English pipeline is installed, else the fallback), ``"spacy"``
            (raise if unavailable) or ``"fallback"``.

    Returns:
        ``Keywords`` with the words (possibly empty) and the name of the extractor that ran.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if extractor not in ("auto", "spacy", "fallback"):
        raise ValueError(f"extractor must be 'auto', 'spacy' or 'fallback', got {extractor!r}")
    if extractor != "fallback":
        nlp = _spacy_pipeline()
        if nlp is not None:  # pragma: no cover - optional
            doc = nlp(clean_prompt(prompt))
            nouns = [t.text.lower() for t in doc if t.pos_ in ("NOUN", "PROPN") and t.text.lower() not in _STOP]
            return Keywords(_dedup(nouns), f"spacy:{nlp.meta.get('name', 'en')}")
        if extractor == "spacy":
            raise ValueError("extractor='spacy' but no spaCy English pipeline (en_core_web_sm) is installed")
    return Keywords(fallback_keywords(prompt), "fallback")


def query_embeddings(model: Any, tokenizer: Any, prompt: str | None) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Words of ``prompt`` (nouns / content words) and the `(Q, D)` LLM input embeddings of their sub-word tokens."""
    if not prompt or tokenizer is None:
        return (), None
    words = extract_keywords(prompt).words
    ids: list[int] = []
    used = []
    special = set(tokenizer.all_special_ids or [])
    for w in words:
        t = [i for i in tokenizer(w, add_special_tokens=False)["input_ids"] if i not in special]
        if t:
            ids += t
            used.append(w)
    if not ids:
        return tuple(used), None
    emb = model.get_input_embeddings()
    q = emb(torch.tensor(ids, device=emb.weight.device)).detach().float().cpu()  # (Q, D)
    return tuple(used), q
