"""vLLM's side of the export proofs and benchmarks: prompt log-probabilities, and speed.

Runs inside the vLLM virtualenv (`.venv-vllm`, made by `scripts/install.sh --engines`), which cannot hold
secateurs itself (vLLM pins an older transformers), so it imports nothing of ours:

    .venv-vllm/bin/python scripts/vllm_probe.py JOB.json RESULT.json

JOB.json: {"models": [{"path": DIR, "tokens": [ids...]}, ...], "top": K, "dtype": "float32"}.
RESULT.json: one entry per model, with, for every prompt position after the first, the top K
log-probabilities of the next token (token id -> log-probability) and the prompt token's own, or the
error vLLM raised on that model.

With "speed": {"batch_sizes": [1, 8], "prompt_tokens": 128, "decode_tokens": 32, "repeats": 3} in the job,
each model is timed instead: prefill (a generate of one token) and decode (the further tokens, EOS
ignored) for each batch size, median of the repeats after a warm-up.
"""

import gc
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU backend: plenty for tests
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


TOKEN_STEP, SEQUENCE_STEP = 17, 101  # the speed prompts' token ids: (17 i + 101 b) modulo the vocabulary


def _median(values):
    return sorted(values)[len(values) // 2]


def _speed(llm, settings):
    """Prefill and decode tokens/s of ``llm`` per batch size (fixed token ids, greedy, EOS ignored)."""
    import time

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rows = []
    prompt, decode = settings["prompt_tokens"], settings["decode_tokens"]
    vocab = llm.llm_engine.model_config.get_vocab_size()
    for batch in settings["batch_sizes"]:  # fixed token ids, a different prompt for each sequence
        prompts = [TokensPrompt(prompt_token_ids=[(TOKEN_STEP * i + SEQUENCE_STEP * b) % vocab for i in range(prompt)])
                   for b in range(batch)]
        timings = []
        for attempt in range(settings["repeats"] + 1):
            spent = []
            for tokens in (1, 1 + decode):
                params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
                start = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                spent.append(time.perf_counter() - start)
            if attempt:  # the first round warms up
                timings.append((batch * prompt / spent[0], batch * decode / max(spent[1] - spent[0], 1e-9)))
        rows.append({"batch_size": batch, "prefill_tokens_per_s": _median([t[0] for t in timings]),
                     "decode_tokens_per_s": _median([t[1] for t in timings])})
    return rows


def main(job_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    job = json.load(open(job_path))
    top = job.get("top", 20)
    results = []
    for model in job["models"]:
        try:
            speed = job.get("speed")
            length = speed["prompt_tokens"] + speed["decode_tokens"] + 8 if speed else len(model["tokens"]) + 8
            llm = LLM(model=model["path"], trust_remote_code=True, dtype=job.get("dtype", "float32"),
                      enforce_eager=job.get("enforce_eager", True), max_model_len=max(length, 64), max_logprobs=top,
                      seed=0)
            if speed:
                results.append({"path": model["path"], "speed": _speed(llm, speed)})
                del llm
                gc.collect()
                continue
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top)
            output = llm.generate([TokensPrompt(prompt_token_ids=model["tokens"])], params, use_tqdm=False)[0]
        except Exception as exc:  # noqa: BLE001 - recorded: a test may expect vLLM to fail on a model
            results.append({"path": model["path"], "error": f"{type(exc).__name__}: {exc}"[:2000]})
            continue
        positions = [{str(token): lp.logprob for token, lp in entry.items()} for entry in output.prompt_logprobs[1:]]
        results.append({"path": model["path"], "prompt_logprobs": positions,
                        "next_token": output.outputs[0].token_ids[0]})
        del llm  # its engine process ends with it
        gc.collect()
    with open(result_path, "w") as handle:
        json.dump({"results": results}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:3])
