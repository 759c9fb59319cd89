"""Word-to-token alignment: which token positions of a prompt a word occupies.

The real CLIP tokenizer can split one word into several tokens ("photograph" -> "photo" "graph"),
so attention of a word is the mean over its tokens.  Positions include the start token at 0.
"""
from __future__ import annotations

import re


def _split_words(prompt: str) -> list[str]:
    # CLIP's pre-tokenizer separates punctuation; do the same so word indices agree
    return re.findall(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']", prompt.lower())


def word_tokens(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """[(word, [token positions])] for every word of `prompt` (start token at position 0)."""
    out, pos = [], 1
    for word in _split_words(prompt):
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        out.append((word, list(range(pos, pos + n))))
        pos += n
    limit = tokenizer.model_max_length - 1
    if pos > limit:
        raise ValueError(f"the prompt is {pos - 1} tokens long; this tokenizer keeps {limit - 1}: shorten it")
    return out


def token_indices(tokenizer, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
    """Token positions of `word` in `prompt` (all occurrences unless `occurrence` picks one)."""
    hits = [toks for w, toks in word_tokens(tokenizer, prompt) if w == word.lower()]
    if not hits:
        words = [w for w, _ in word_tokens(tokenizer, prompt)]
        raise ValueError(f"the word {word!r} is not in the prompt {prompt!r} (its words: {words})")
    if occurrence is not None:
        return hits[occurrence]
    return [t for toks in hits for t in toks]
