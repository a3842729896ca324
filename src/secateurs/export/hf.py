"""hf: the Hugging Face checkpoint ``secateurs prune`` writes (transformers and secateurs load it).

It is the pruned directory itself, so ``prune --format hf`` adds nothing and ``secateurs export --format hf``
copies the directory.
"""

from __future__ import annotations

from .exporter import Exporter


class HFExporter(Exporter):
    name = "hf"
    engine = "transformers"
