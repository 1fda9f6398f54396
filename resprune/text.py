"""The text side of ResPrune: which words of the instruction form the relevance query.

The paper cleans the prompt with regular expressions and keeps its nouns, extracted with spaCy. spaCy's English
pipelines are installed from release wheels rather than the package registry, so the nouns come from spaCy when an
English pipeline is importable and otherwise from TextBlob's pattern part-of-speech tagger (a dependency from the
package registry that ships its lexicon: no download at run time, ~0.1 ms a prompt). Generic instruction nouns
("image", "question", "answer", ...) are dropped as stop words. ``Keywords.extractor`` says which one ran.

Query modes (``prune(..., query=...)``): ``"nouns"`` (the paper), ``"keywords"`` (every content word: adjectives and
verbs too) and ``"instruction"`` (every token of the instruction: the paper's Setting-1 ablation).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import torch

from .types import PRUNE_OPTIONS

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
    many much object objects phrase sentence using use
    """.split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z\-']*")


@dataclass(frozen=True)
class Keywords:
    """Words picked from an instruction, and the extractor that picked them.

    Attributes:
        words: the picked words, in prompt order, duplicates removed.
        extractor: ``"spacy:<pipeline>"``, ``"textblob-pattern"``, ``"fallback"`` (content words) or
            ``"instruction"`` (every word).
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


QUERY_MODES = PRUNE_OPTIONS["query"]


@functools.lru_cache(maxsize=1)
def _pattern_tagger():  # noqa: ANN202
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def extract_keywords(prompt: str, *, extractor: str = "auto") -> Keywords:
    """The nouns of ``prompt`` (spaCy or TextBlob's pattern tagger), or its content words (``"fallback"``).

    Args:
        prompt: the user's instruction (chat markup is stripped first).
        extractor: ``"auto"`` (spaCy if an English pipeline is installed, else TextBlob), ``"spacy"`` (raise if
            unavailable), ``"textblob"`` or ``"fallback"`` (content words, no tagger).

    Returns:
        ``Keywords`` with the words (possibly empty) and the name of the extractor that ran.

    >>> extract_keywords("Is the big red circle left of the blue square?", extractor="textblob").words
    ('circle', 'square')
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if extractor not in ("auto", "spacy", "textblob", "fallback"):
        raise ValueError(f"extractor must be 'auto', 'spacy', 'textblob' or 'fallback', got {extractor!r}")
    text = clean_prompt(prompt)
    if extractor in ("auto", "spacy"):
        nlp = _spacy_pipeline()
        if nlp is not None:  # pragma: no cover - optional
            doc = nlp(text)
            nouns = [t.text.lower() for t in doc if t.pos_ in ("NOUN", "PROPN") and t.text.lower() not in _STOP]
            return Keywords(_dedup(nouns), f"spacy:{nlp.meta.get('name', 'en')}")
        if extractor == "spacy":
            raise ValueError("extractor='spacy' but no spaCy English pipeline (en_core_web_sm) is installed")
    if extractor in ("auto", "textblob"):
        tags = _pattern_tagger().tag(text) if text else []
        nouns = [w.lower().strip("'-") for w, tag in tags if tag.startswith("NN")]
        return Keywords(
            _dedup([w for w in nouns if len(w) > 1 and w not in _STOP and _WORD.fullmatch(w)]), "textblob-pattern"
        )
    return Keywords(fallback_keywords(prompt), "fallback")


def query_words(prompt: str, query: str = "nouns") -> Keywords:
    """The words of ``prompt`` that form the relevance query in mode ``query`` (see ``QUERY_MODES``)."""
    if query not in QUERY_MODES:
        raise ValueError(f"query must be one of {QUERY_MODES}, got {query!r}")
    if query == "nouns":
        return extract_keywords(prompt)
    if query == "keywords":
        return extract_keywords(prompt, extractor="fallback")
    return Keywords(tuple(clean_prompt(prompt).split()), "instruction")


def query_embeddings(
    model: Any, tokenizer: Any, prompt: str | None, query: str = "nouns"
) -> tuple[Keywords, torch.Tensor | None]:
    """The query words of ``prompt`` (mode ``query``) that the tokenizer can embed, and the `(Q, D)` LLM input
    embeddings of their sub-word tokens (``"instruction"``: of every token of the cleaned instruction)."""
    if query not in QUERY_MODES:
        raise ValueError(f"query must be one of {QUERY_MODES}, got {query!r}")
    if not prompt or tokenizer is None:
        return Keywords((), "none"), None
    kw = query_words(prompt, query)
    special = set(tokenizer.all_special_ids or [])
    ids: list[int] = []
    used = []
    if query == "instruction":
        ids = [i for i in tokenizer(clean_prompt(prompt), add_special_tokens=False)["input_ids"] if i not in special]
        used = list(kw.words)
    else:
        for w in kw.words:
            t = [i for i in tokenizer(w, add_special_tokens=False)["input_ids"] if i not in special]
            if t:
                ids += t
                used.append(w)
    kw = Keywords(tuple(used), kw.extractor)
    if not ids:
        return kw, None
    emb = model.get_input_embeddings()
    q = emb(torch.tensor(ids, device=emb.weight.device)).detach().float().cpu()  # (Q, D)
    return kw, q
