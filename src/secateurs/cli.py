"""Command line: ``secateurs eval | data | methods``. Errors become one line and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from . import __version__
from .api import PAPER_SEQLEN, describe_data, evaluate
from .errors import SecateursError
from .io import check_output_path, write_json_atomic, write_text_atomic
from .report import render_comparison, render_results
from .tasks import SUITES, task_names
from .methods import list_methods
from .perplexity import DEFAULT_BATCH_SIZE
from .masks import parse_nm
from .methods import DPrunerOptions, UnstructuredOptions, get_method
from .prune import prune

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _comma_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $SECATEURS_DATA; else the Hugging Face hub)")
    parser.add_argument("--text-field", default="text", help="field holding the text in a local .jsonl file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune large language models and prove they still work.")
    parser.add_argument("--version", action="version", version=f"secateurs {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a model: perplexity, zero-shot and domain tasks, speed")
    ev.add_argument("model", help="built-in alias (smollm2-135m), .gguf file, model directory (pruned ones too) or org/name hub id")
    ev.add_argument("--ppl", type=_comma_list, help="datasets for token perplexity, e.g. wikitext2,c4 or a .txt/.jsonl file "
                                                    "(default wikitext2 when nothing else is asked)")
    ev.add_argument("--tasks", type=_comma_list, default=[], help=f"tasks: {', '.join(task_names())}, or a .jsonl file")
    ev.add_argument("--suite", choices=sorted(SUITES), help="a named set of perplexities and tasks (paper = BlockPruner's five + wikitext2)")
    ev.add_argument("--limit", type=int, help="first N rows of each task (the harness's rule)")
    ev.add_argument("--sample", type=int, help="or a seeded subset of N rows (--seed)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--log-samples", help="write every item's log-likelihoods and prediction to this JSONL file")
    ev.add_argument("--backend", default="builtin", choices=["builtin", "lm-eval"],
                    help="score tasks with our evaluator (default) or lm-evaluation-harness's HFLM (optional extra)")
    ev.add_argument("--speed", action="store_true", help="measure prefill and decode tokens/s and peak memory")
    ev.add_argument("--speed-baseline", help="also measure this model (e.g. the dense original) under the same settings")
    ev.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for --speed (default 128)")
    ev.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded for --speed (default 32)")
    ev.add_argument("--seqlen", type=int, default=PAPER_SEQLEN, help=f"window length in tokens (default {PAPER_SEQLEN}, as the papers)")
    ev.add_argument("--max-windows", type=int, help="use only the first N windows")
    ev.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass")
    ev.add_argument("--out", help="write the results (with their protocol) to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_model_options(ev)
    _add_data_options(ev)

    pr = sub.add_parser("prune", help="prune a model: remove blocks (structured) or zero weights (unstructured)")
    pr.add_argument("model", help="built-in alias, .gguf file, model directory or org/name hub id")
    pr.add_argument("--method", default="blockpruner", help="see `secateurs methods` (default blockpruner)")
    pr.add_argument("--calib", "--general-calib", dest="calib",
                    help="(general) calibration set or .txt/.jsonl file (default: alpaca for structured methods, "
                         "c4 for unstructured ones)")
    pr.add_argument("--samples", type=int, default=64, help="calibration documents drawn with --seed (default 64)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--seqlen", type=int, default=512, help="calibration window length (default 512)")
    pr.add_argument("--blocks", type=int, help="remove K units (blocks or layers)")
    pr.add_argument("--ratio", type=float, help="or stop at the first step whose parameter ratio reaches R")
    pr.add_argument("--block-type", default="mix", choices=["mix", "mha", "mlp"], help="block units to search")
    pr.add_argument("--unit", default="layer", choices=["layer", "block"], help="unit of shortgpt / relative-magnitude")
    pr.add_argument("--naive", action="store_true", help="reference search: a full forward per candidate")
    un = pr.add_argument_group("unstructured methods (magnitude, wanda, sparsegpt, dpruner)")
    un.add_argument("--sparsity", type=float, help="fraction of weights to zero, in (0, 1)")
    un.add_argument("--nm", help="or N:M sparsity, e.g. 2:4 (keep N of every M)")
    un.add_argument("--group", help="comparison group: row, matrix, columns:W or blocks:N (default: the method's)")
    un.add_argument("--sparsity-of", default="matrices", choices=["matrices", "all"],
                    help="the sparsity counts the pruned matrices (default) or all parameters")
    un.add_argument("--propagate", default="pruned", choices=["pruned", "dense"],
                    help="what the next layer is calibrated on (default: the pruned layers' outputs)")
    un.add_argument("--damping", type=float, default=0.01, help="SparseGPT / OBS damping (default 0.01)")
    un.add_argument("--domain", help="healthcare or legal: D-Pruner's domain data, and a domain PPL for every method")
    un.add_argument("--domain-data", help="or your own domain text (.txt or .jsonl) for D-Pruner")
    un.add_argument("--domain-samples", type=int, default=64, help="domain documents drawn with --seed (default 64)")
    dp = pr.add_argument_group("D-Pruner")
    dp.add_argument("--dpruner-steps", type=int, default=1, help="epochs of fused SGD on the domain data; 0 = one pass of gradients (default 1)")
    dp.add_argument("--dpruner-variant", default="paper", choices=["paper", "code"], help="the paper's regulariser or the authors' code's")
    dp.add_argument("--dpruner-lambda", type=float, default=0.1, help="weight of the general-importance penalty (default 0.1)")
    dp.add_argument("--dpruner-lr", type=float, default=0.03, help="learning rate (default 0.03)")
    dp.add_argument("--dpruner-batch-size", type=int, default=8, help="windows per update (default 8)")
    dp.add_argument("--general-importance", help="reuse a saved general importance (general_importance.safetensors)")
    pr.add_argument("--from-report", help="re-apply a saved search (report.json) at level --blocks, no search")
    pr.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass")
    pr.add_argument("--eval-ppl", type=_comma_list, default=["wikitext2"], help="perplexity after pruning (dense vs pruned)")
    pr.add_argument("--eval-seqlen", type=int, help="window length for --eval-ppl (default: --seqlen)")
    pr.add_argument("--eval-max-windows", type=int, default=8, help="windows for --eval-ppl (default 8)")
    pr.add_argument("--speed", action="store_true", help="also measure decode tokens/s, dense vs pruned (structured methods)")
    pr.add_argument("--out", help="write the pruned model, report.json and report.md to this directory")
    pr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_model_options(pr)
    _add_data_options(pr)

    da = sub.add_parser("data", help="list the named datasets and where they resolve")
    _add_data_options(da)

    sub.add_parser("methods", help="list the registered pruning methods")
    return parser


def _cmd_eval(args: argparse.Namespace) -> None:
    for path in (args.out, args.log_samples):
        if path:
            check_output_path(path, args.overwrite)
    ppl, tasks = list(args.ppl or []), list(args.tasks)
    if args.suite:
        ppl += [p for p in SUITES[args.suite]["ppl"] if p not in ppl]
        tasks += [t for t in SUITES[args.suite]["tasks"] if t not in tasks]
    if not ppl and not tasks and not args.speed:
        ppl = ["wikitext2"]
    speed = {"batch_size": 1, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens} if args.speed else None
    log = [] if args.log_samples else None
    result = evaluate(
        args.model,
        ppl=ppl,
        tasks=tasks,
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        log_samples=log,
        speed=speed,
        backend=args.backend,
        seqlen=args.seqlen,
        max_windows=args.max_windows,
        data_dir=args.data_dir,
        text_field=args.text_field,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        progress=not args.quiet,
    )
    result["command"] = ["secateurs", *args.argv]
    if args.speed and args.speed_baseline:
        baseline = evaluate(args.speed_baseline, ppl=[], speed=speed, dtype=args.dtype, device=args.device, progress=False)
        result["speed_baseline"] = {"model": baseline["model"], **baseline["speed"]}
    print(render_results(result))
    if log is not None:
        write_text_atomic(args.log_samples, "".join(json.dumps(row) + "\n" for row in log))
        print(f"wrote {args.log_samples} ({len(log)} items)")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")


def _unstructured_options(args: argparse.Namespace) -> UnstructuredOptions | None:
    if get_method(args.method).kind != "unstructured":
        return None
    dpruner = DPrunerOptions(lam=args.dpruner_lambda, lr=args.dpruner_lr, steps=args.dpruner_steps,
                             variant=args.dpruner_variant, batch_size=args.dpruner_batch_size,
                             general_importance=args.general_importance)
    return UnstructuredOptions(sparsity=args.sparsity, nm=parse_nm(args.nm) if args.nm else None, group=args.group, sparsity_of=args.sparsity_of,
                               batch_size=args.batch_size, propagate=args.propagate, damping=args.damping,
                               extra={"dpruner": dpruner})


def _print_unstructured(report: dict) -> None:
    sparsity = report["sparsity"]
    print(f"{report['method']}: {report['details']['pattern']}; achieved {100 * sparsity['over_pruned_matrices']:.2f}% "
          f"of the pruned matrices, {100 * sparsity['over_all_parameters']:.2f}% of all parameters")
    for name, ev in report["evaluation"].items():
        print(f"{name} PPL {ev['dense_ppl']:.3f} -> {ev['pruned_ppl']:.3f}")


def _cmd_prune(args: argparse.Namespace) -> None:
    unstructured = _unstructured_options(args)
    result = prune(
        args.model, method=args.method, calib=args.calib, samples=args.samples, seqlen=args.seqlen,
        seed=args.seed, blocks=args.blocks, ratio=args.ratio, block_type=args.block_type, unit=args.unit,
        naive=args.naive, batch_size=args.batch_size, eval_ppl=args.eval_ppl, eval_seqlen=args.eval_seqlen,
        eval_max_windows=args.eval_max_windows, from_report=args.from_report, data_dir=args.data_dir,
        text_field=args.text_field, out=args.out, overwrite=args.overwrite, dtype=args.dtype,
        device=args.device, progress=not args.quiet, command=["secateurs", *args.argv],
        unstructured=unstructured, domain=args.domain, domain_data=args.domain_data,
        domain_samples=args.domain_samples, speed=args.speed,
    )
    report = result.report
    if unstructured is not None:
        _print_unstructured(report)
        if args.out:
            print(f"wrote {args.out} (model, report.json, report.md)")
        return
    print(f"{args.method}: removed {', '.join(report['removal_order'])} (in this order)")
    print(render_comparison(report))
    if args.out:
        print(f"wrote {args.out} (model, report.json, report.md)")


def _cmd_data(args: argparse.Namespace) -> None:
    rows = describe_data(args.data_dir)
    for row in rows:
        mark = "ok" if row["available"] else "--"
        default = " (default)" if row["default"] else ""
        print(f"[{mark}] {row['name']}:{row['split']}{default}  {row['description']}")
        for path in row["files"]:
            print(f"       {path}")


def _cmd_methods(args: argparse.Namespace) -> None:
    methods = list_methods()
    if not methods:
        print("no pruning methods are registered yet")
    for m in methods:
        print(f"{m['name']:<14} {m['kind']:<12} {m['summary']}")


def _silence_transformers() -> None:
    """--quiet: no loading bars or info logs from transformers either."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


COMMANDS = {"eval": _cmd_eval, "prune": _cmd_prune, "data": _cmd_data, "methods": _cmd_methods}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        _silence_transformers()
    try:
        COMMANDS[args.command](args)
    except SecateursError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
