"""Word-to-token alignment: which token positions of a prompt a word occupies.

The real CLIP tokenizer can split one word into several tokens ("photograph" -> "photo" "graph"),
so attention of a word is the mean over its tokens.  Positions include the start token at 0.
"""
from __future__ import annotations

import re


#: a word of a prompt: a run of letters (any script; apostrophes inside, "don't"), of digits, of
#: other symbols.  CLIP's pre-tokenizer (letters, single digits, symbols, contractions) never puts a
#: boundary inside a run of letters, and splits every run this splits, so each word's tokens are
#: exactly its tokens in the whole prompt (an ASCII-only class split "crème" into "cr", "è", "me"
#: and shifted every later word)
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|(?:[^\w\s]|_)+")


def _split_words(prompt: str) -> list[str]:
    return WORD.findall(prompt.lower())


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
