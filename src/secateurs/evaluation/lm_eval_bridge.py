"""Optional bridge to lm-evaluation-harness (``pip install secateurs[lm-eval]``).

Scores our task items with the harness's own in-memory ``HFLM`` wrapper instead of our scorer, to check
agreement or to use the harness's batching. Nothing else in secateurs imports the harness.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import SecateursError
from .tasks import Item
from ..resources import device_of

Scorer = Callable[[Any, Any, Item], list[float]]


def lm_eval_scorer(model: Any, tokenizer: Any, batch_size: int = 1) -> Scorer:
    """A drop-in replacement for ``harness.loglikelihoods`` backed by lm-eval's ``HFLM``."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise SecateursError("--backend lm-eval needs lm-evaluation-harness: pip install 'secateurs[lm-eval]'") from exc
    device = str(device_of(model))
    wrapper = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)

    def score_all(items: list[Item]) -> list[list[float]]:
        """Every item's requests in one call, as the harness batches them."""
        pairs = [(c, t) for item in items for c, t in zip(item.contexts, item.continuations)]
        requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        lls = iter(ll for ll, _ in wrapper.loglikelihood(requests, disable_tqdm=True))
        return [[next(lls) for _ in item.contexts] for item in items]

    def score(_model: Any, _tokenizer: Any, item: Item) -> list[float]:
        return score_all([item])[0]

    score.score_all = score_all  # type: ignore[attr-defined]
    return score
