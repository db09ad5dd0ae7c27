"""Token-level text helpers shared by the engines that hold a Hugging Face tokenizer."""

from __future__ import annotations


def tokenizer_pieces(tokenizer, text: str) -> list[str]:
    """Cut ``text`` at the character offsets where its tokens start (pieces join to ``text``)."""
    if not text:
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = sorted({start for start, _ in encoded["offset_mapping"] if 0 < start < len(text)})
    bounds = [0, *starts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if a < b]
