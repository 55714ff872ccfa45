"""The toy model's text side: the words its captions use, and a local word-level tokenizer over them.

The tiny pipelines' vocabulary (``tiny.VOCAB_WORDS``) has no word for a shape, a motion or a background, so the toy
model gets its own: every word :mod:`radial_diffusers.toy.scenes` can put in a caption, in a fixed order (token ids
must not move once weights are trained on them).

Example:
    >>> from radial_diffusers.toy.vocab import toy_tokenizer
    >>> toy_tokenizer()("two red squares bouncing on a dark background").input_ids
    [4, 14, 11, 25, 5, 3, 29, 6, 1]
"""

from __future__ import annotations

from .scenes import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

__all__ = ["TOY_WORDS", "TOY_SPECIALS", "toy_tokenizer"]

#: Special tokens first, as the tiny Wan tokenizer has them (UMT5: pad 0, eos 1, unk 2).
TOY_SPECIALS = ("<pad>", "</s>", "<unk>")


def _caption_words() -> tuple[str, ...]:
    words = ["a", "two", "on", "background", "to"]
    words += [w for s in SHAPES for w in (s, s + "s")]
    words += list(COLOURS)
    words += [w for m in MOTIONS for w in m.split()]
    words += list(BACKGROUNDS)
    return tuple(dict.fromkeys(words))  # first occurrence order, no repeats


#: Every word a toy caption can contain (ids ``len(TOY_SPECIALS) + index``).
TOY_WORDS: tuple[str, ...] = _caption_words()


def toy_tokenizer(model_max_length: int = 512):
    """A ``transformers.PreTrainedTokenizerFast`` over :data:`TOY_WORDS` (lower-cased, whitespace split, ``</s>``
    appended), built offline."""
    from ..tiny import _word_level_tokenizer

    return _word_level_tokenizer(list(TOY_SPECIALS), "$A </s>", pad="<pad>", unk="<unk>", eos="</s>",
                                 model_max_length=model_max_length, words=TOY_WORDS)
