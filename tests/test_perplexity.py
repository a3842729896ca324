import math

import torch

from conftest import tiny_model
from secateurs import perplexity
from secateurs.data import TokenWindows
from secateurs.evaluation.perplexity import window_nlls


def _windows(n=5, seqlen=16, seed=0):
    ids = torch.randint(3, 259, (n, seqlen), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, {"seqlen": seqlen, "windows": n})


def test_window_nll_matches_direct_token_by_token_loss():
    model = tiny_model("llama")
    windows = _windows()
    nlls = window_nlls(model, windows, batch_size=2, progress=False)
    for i, ids in enumerate(windows.input_ids):
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0]
        direct = -sum(torch.log_softmax(logits[t], -1)[ids[t + 1]].item() for t in range(len(ids) - 1)) / (len(ids) - 1)
        assert math.isclose(nlls[i].item(), direct, rel_tol=1e-5)


def test_batched_equals_unbatched_and_ppl_is_exp_mean(family):
    model = tiny_model(family)
    windows = _windows()
    one = window_nlls(model, windows, batch_size=1, progress=False)
    many = window_nlls(model, windows, batch_size=4, progress=False)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)
    result = perplexity(model, windows, batch_size=3, progress=False)
    assert math.isclose(result["ppl"], math.exp(one.double().mean().item()), rel_tol=1e-5)
    assert result["protocol"]["batch_size"] == 3 and result["metric"] == "token_perplexity"


def test_nll_is_float32_for_a_bfloat16_model():
    model = tiny_model("llama").to(torch.bfloat16)
    result = perplexity(model, _windows(n=2), progress=False)
    assert result["protocol"]["model_dtype"] == "bfloat16" and result["protocol"]["nll_dtype"] == "float32"
    assert window_nlls(model, _windows(n=2), progress=False).dtype == torch.float32
