"""Command line: ``secateurs prune | eval | data | methods``. Errors become one line and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import threading
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .version import __version__
from .data import DATA_DIR_ENV, describe_data, resolve_data_dir
from .defaults import (BATCH_SIZE, CALIBRATION_SAMPLES, CALIBRATION_SEQLEN, DPRUNER_EPOCHS, DPRUNER_UPDATE_BATCH,
                       EVAL_WINDOWS, PAPER_SEQLEN, PLAN_BLOCKS)
from .distributed import Ranks
from .errors import SecateursError, Terminated
from .evaluation.evaluate import EvalSettings, evaluate
from .evaluation.suites import SUITES
from .evaluation.tasks import task_names
from .export import export
from .export.registry import DEFAULT_FORMAT, EXPORTERS, get_exporter, option_fields
from .files import check_output_path, write_json_atomic, write_text_atomic
from .models.loading import DTYPES, resolve_device
from .options import flag_of, own_fields
from .plan import load_config, make_plan, parse_bytes, render
from .resume import Checkpoint
from .registry import METHODS, get_method, list_methods, make_options, run_shape
from .reporting.markdown import render_comparison, render_results
from .reporting.report import Report, UnstructuredReport
from .run.prune import prune, run_spec
from .run.spec import DataSpec, EvalSpec, OutputSpec, RunSpec

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so that every temporary output is removed on the way out."""
    raise Terminated()


def _comma_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's dtype), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $SECATEURS_DATA; else the Hugging Face hub)")
    parser.add_argument("--text-field", default="text", help="field holding the text in a local .jsonl file")


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    """Every export format's options as flags (``--gguf-type``), from the formats' options classes."""
    for exporter, f in option_fields():
        choices = f.metadata.get("choices")
        parser.add_argument(flag_of(f), dest=f.name, default=f.default,
                            help=f"with --format {exporter.name}: {f.metadata['help']}"
                                 + (f", one of {', '.join(choices)}" if choices else "") + f" (default {f.default})")


def _format_option_values(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for _, f in option_fields()}


OPTION_DEST = "option_"  # argparse destination prefix of the methods' options


def _option_classes() -> list[type]:
    """Every options class the registered methods use, with their bases, bases first."""
    classes = {base for cls in METHODS.values() for base in cls.options.__mro__ if dataclasses.is_dataclass(base)}
    return sorted(classes, key=lambda c: (len(c.__mro__), c.__name__))


def _scalar(hint: Any) -> type:
    """int / float / str from a field's type hint (``int | None`` -> int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint) if (args[0] if args else hint) in (int, float) else str


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """One argument group per options class, from its fields: adding an option touches one place."""
    for cls in _option_classes():
        hints = typing.get_type_hints(cls)
        fields = [f for f in own_fields(cls) if not f.metadata.get("run_level")]
        if not fields:
            continue
        users = sorted(name for name, method in METHODS.items() if issubclass(method.options, cls))
        title = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
        group = parser.add_argument_group(f"{title} ({', '.join(users)})")
        for f in fields:
            flag, dest, help = flag_of(f), OPTION_DEST + f.name, f.metadata.get("help", "")
            if hints[f.name] is bool:
                group.add_argument(flag, action="store_true", dest=dest, default=argparse.SUPPRESS, help=help)
                continue
            choices = f.metadata.get("choices")
            group.add_argument(flag, type=_scalar(hints[f.name]), choices=choices, metavar=None if choices else f.name.upper(),
                               dest=dest, default=argparse.SUPPRESS,
                               help=help if f.default is None else f"{help} (default {f.default})")


def _method_options(args: argparse.Namespace) -> Any:
    """The chosen method's typed options from the flags given; a flag it does not take is an error."""
    fields = {f.name: f for f in dataclasses.fields(get_method(args.method).options)}
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(OPTION_DEST):
            continue
        name = dest[len(OPTION_DEST):]
        if name not in fields:
            flag = next(flag_of(f) for c in _option_classes() for f in own_fields(c) if f.name == name)
            raise SecateursError(f"{flag} is not an option of {args.method} (see `secateurs prune --help`)")
        values[name] = value
    for f in fields.values():
        if f.metadata.get("run_level"):  # one flag for the run fills it (--batch-size)
            values[f.name] = getattr(args, f.name)
    return make_options(args.method, values)


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
    ev.add_argument("--suite", choices=sorted(SUITES), help="a named set of perplexities and tasks, with their averages: "
                    + "; ".join(f"{s.name} = {s.summary}" for s in SUITES.values()))
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
    ev.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"windows per forward pass (default {BATCH_SIZE})")
    ev.add_argument("--out", help="write the results (with their protocol) to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ev.add_argument("--fresh", action="store_true", help="discard the checkpoint a killed evaluation into --out left "
                                                         "(OUT.checkpoint); without it, the same command resumes from it")
    _add_model_options(ev)
    _add_data_options(ev)

    pr = sub.add_parser("prune", allow_abbrev=False, help="prune a model: remove blocks (structured) or zero weights (unstructured)")
    pr.add_argument("model", nargs="?", help="built-in alias, .gguf file, model directory or org/name hub id "
                                             "(with --recipe: replaces the recipe's model)")
    pr.add_argument("--recipe", help="run the settings of this recipe.yaml (every pruned directory has one); "
                                     "only a MODEL, --out, --overwrite and --quiet may be added")
    pr.add_argument("--method", default="blockpruner", help="see `secateurs methods` (default blockpruner)")
    pr.add_argument("--calib", "--general-calib", dest="calib",
                    help="(general) calibration set or .txt/.jsonl file (default: alpaca for structured methods, "
                         "c4 for unstructured ones)")
    pr.add_argument("--samples", type=int, default=CALIBRATION_SAMPLES,
                    help=f"calibration documents drawn with --seed (default {CALIBRATION_SAMPLES})")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--seqlen", type=int, default=CALIBRATION_SEQLEN,
                    help=f"calibration window length (default {CALIBRATION_SEQLEN})")
    pr.add_argument("--domain", help="healthcare or legal: D-Pruner's domain data, and a domain PPL for every method")
    pr.add_argument("--domain-data", help="or your own domain text (.txt or .jsonl) for D-Pruner")
    pr.add_argument("--domain-samples", type=int, default=CALIBRATION_SAMPLES,
                    help=f"domain documents drawn with --seed (default {CALIBRATION_SAMPLES})")
    _add_method_options(pr)
    pr.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"windows per forward pass (default {BATCH_SIZE})")
    pr.add_argument("--eval-ppl", type=_comma_list, default=["wikitext2"], help="perplexity after pruning (dense vs pruned)")
    pr.add_argument("--eval-seqlen", type=int, help="window length for --eval-ppl (default: --seqlen)")
    pr.add_argument("--eval-max-windows", type=int, default=EVAL_WINDOWS, help=f"windows for --eval-ppl (default {EVAL_WINDOWS})")
    pr.add_argument("--speed", action="store_true", help="also measure decode tokens/s, dense vs pruned (structured methods)")
    pr.add_argument("--out", help="write the pruned model, report.json and report.md to this directory")
    pr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pr.add_argument("--fresh", action="store_true", help="discard the checkpoint a killed run of --out left (OUT.checkpoint) "
                                                         "and start over; without it, the same command resumes from it")
    engine_formats = [e for e in EXPORTERS.values() if not e.is_checkpoint]
    pr.add_argument("--format", default=DEFAULT_FORMAT, help=f"{DEFAULT_FORMAT} (default); " + "; ".join(
        f"{e.name} also writes {e.inside_pruned_directory} in --out for {e.engine}" for e in engine_formats))
    _add_format_options(pr)
    _add_model_options(pr)
    _add_data_options(pr)

    ex = sub.add_parser("export", help="export a pruned directory for an inference engine (" + ", ".join(
        f"{e.name}: {'a copy' if e.is_checkpoint else e.engine}" for e in EXPORTERS.values()) + ")")
    ex.add_argument("directory", help="a directory written by `secateurs prune`")
    ex.add_argument("--format", required=True, help=f"one of {', '.join(EXPORTERS)}")
    files = [e.name for e in EXPORTERS.values() if e.writes_file]
    directories = [e.name for e in EXPORTERS.values() if not e.writes_file]
    ex.add_argument("--out", required=True,
                    help=f"the file ({', '.join(files)}) or directory ({', '.join(directories)}) to write")
    _add_format_options(ex)
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    pl = sub.add_parser("plan", help="memory and work of a run, from the model's config alone (no weights loaded)")
    pl.add_argument("model", help="a config.json file, model directory, built-in alias or cached hub id")
    pl.add_argument("--method", required=True, help=f"one of {', '.join(sorted(METHODS))}")
    pl.add_argument("--dtype", default="auto", help="weights' dtype: auto (the config's), float32, bfloat16, float16")
    pl.add_argument("--windows", type=int, default=CALIBRATION_SAMPLES, help=f"calibration windows (default {CALIBRATION_SAMPLES})")
    pl.add_argument("--seqlen", type=int, default=CALIBRATION_SEQLEN, help=f"window length (default {CALIBRATION_SEQLEN})")
    pl.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"windows per forward pass (default {BATCH_SIZE})")
    pl.add_argument("--blocks", type=int, default=PLAN_BLOCKS, help=f"blocks a structured search removes (default {PLAN_BLOCKS})")
    pl.add_argument("--domain-windows", type=int, default=CALIBRATION_SAMPLES,
                    help=f"D-Pruner's domain windows (default {CALIBRATION_SAMPLES})")
    pl.add_argument("--dpruner-batch-size", type=int, default=DPRUNER_UPDATE_BATCH,
                    help=f"D-Pruner's windows per update (default {DPRUNER_UPDATE_BATCH})")
    pl.add_argument("--dpruner-steps", type=int, default=DPRUNER_EPOCHS, help=f"D-Pruner's epochs (default {DPRUNER_EPOCHS})")
    pl.add_argument("--gpus", type=int, default=0, help="GPUs the run would use (the windows divide over them)")
    pl.add_argument("--gpu-memory", help="memory of each GPU, e.g. 80GB: says whether the run fits")
    pl.add_argument("--tflops", type=float, help="sustained TFLOP/s of one device, for a time estimate")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")

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
        ppl += [p for p in SUITES[args.suite].ppl if p not in ppl]
        tasks += [t for t in SUITES[args.suite].tasks if t not in tasks]
    if not ppl and not tasks and not args.speed:
        ppl = ["wikitext2"]
    speed = {"batch_size": 1, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens} if args.speed else None
    log = [] if args.log_samples else None
    settings = EvalSettings(seqlen=args.seqlen, max_windows=args.max_windows, batch_size=args.batch_size,
                            data_dir=args.data_dir, text_field=args.text_field, limit=args.limit, sample=args.sample,
                            seed=args.seed, speed=speed, backend=args.backend)
    checkpoint = None
    if args.out:  # each set and task done is kept beside --out until the results are written
        launch = Ranks.of_launch()
        protocol = {"model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
                    "ppl": ppl, "tasks": tasks, "settings": dataclasses.asdict(settings), "dtype": args.dtype,
                    "device": args.device, "log_samples": bool(args.log_samples), "processes": launch.world}
        checkpoint = Checkpoint.open(args.out, protocol, fresh=args.fresh, writer=launch.main, rank=launch.rank)
        if checkpoint.found and not args.quiet:
            print(f"resuming from {checkpoint.root}: the sets and tasks it holds are not run again (--fresh starts over)",
                  file=sys.stderr)
    result = evaluate(args.model, ppl=ppl, tasks=tasks, settings=settings, log_samples=log, dtype=args.dtype,
                      device=args.device, progress=not args.quiet, checkpoint=checkpoint)
    result["command"] = ["secateurs", *args.argv]
    if not Ranks.from_environment(resolve_device(args.device)).main:
        return  # under torchrun, rank 0 prints and writes
    if args.speed and args.speed_baseline:
        baseline = evaluate(args.speed_baseline, ppl=[], settings={"speed": speed}, dtype=args.dtype,
                            device=args.device, progress=False)
        result["speed_baseline"] = {"model": baseline["model"], **baseline["speed"]}
    print(render_results(result))
    if log is not None:
        write_text_atomic(args.log_samples, "".join(json.dumps(row) + "\n" for row in log))
        print(f"wrote {args.log_samples} ({len(log)} items)")
    if args.out:
        write_json_atomic(args.out, result)
        checkpoint.remove()
        print(f"wrote {args.out}")


def _print_unstructured(report: UnstructuredReport) -> None:
    sparsity = report.sparsity
    print(f"{report.method}: {report.details['pattern']}; achieved {100 * sparsity['over_pruned_matrices']:.2f}% "
          f"of the pruned matrices, {100 * sparsity['over_all_parameters']:.2f}% of all parameters")
    for name, ev in report.evaluation.items():
        print(f"{name} PPL {ev.dense_ppl:.3f} -> {ev.pruned_ppl:.3f}")


RECIPE_COMPANIONS = {"--recipe", "--out", "--overwrite", "--fresh", "-q", "--quiet", "--format",  # flags allowed with --recipe
                     *(flag_of(f) for _, f in option_fields())}


def _recipe_spec(args: argparse.Namespace, output: OutputSpec) -> RunSpec:
    """The run of ``--recipe``; any other setting on the command line is refused (edit the recipe)."""
    given = [a.split("=", 1)[0] for a in args.argv if a.startswith("-")]
    extra = [flag for flag in given if flag not in RECIPE_COMPANIONS]
    if extra:
        raise SecateursError(f"{extra[0]} cannot be combined with --recipe: the recipe holds every setting "
                             "(edit it, or drop --recipe)")
    return RunSpec.from_recipe(args.recipe, model=args.model, output=output, progress=not args.quiet)


def _cmd_prune(args: argparse.Namespace) -> None:
    output = OutputSpec(args.out, args.overwrite, command=["secateurs", *args.argv], format=args.format,
                        fresh=args.fresh, **_format_option_values(args))
    if args.recipe:
        result = run_spec(_recipe_spec(args, output))
        if result.main:
            _report_prune(result.report, args.out)
        return
    if args.model is None:
        raise SecateursError("say which model to prune (an alias, a .gguf file, a directory or a hub id), or --recipe FILE")
    data = DataSpec(calib=args.calib, samples=args.samples, seqlen=args.seqlen, seed=args.seed, data_dir=args.data_dir,
                    text_field=args.text_field, domain=args.domain, domain_data=args.domain_data,
                    domain_samples=args.domain_samples)
    evaluation = EvalSpec(ppl=args.eval_ppl, seqlen=args.eval_seqlen, max_windows=args.eval_max_windows,
                          batch_size=args.batch_size, speed=args.speed)
    result = prune(args.model, args.method, _method_options(args), data, evaluation, output, dtype=args.dtype,
                   device=args.device, progress=not args.quiet)
    if result.main:  # under torchrun, rank 0 prints and writes
        _report_prune(result.report, args.out)


def _report_prune(report: Report, out: str | None) -> None:
    if isinstance(report, UnstructuredReport):
        _print_unstructured(report)
    else:
        print(f"{report.method}: removed {', '.join(report.removal_order)} (in this order)")
        print(render_comparison(report))
    if out:
        engine = report.outputs.engine_export
        exporter = get_exporter(engine["format"]) if engine else None
        also = f", {exporter.inside_pruned_directory} for {exporter.engine}" if exporter else ""
        print(f"wrote {out} (model{also}, recipe.yaml, report.json, report.md)")


def _cmd_export(args: argparse.Namespace) -> None:
    record = export(args.directory, args.format, args.out, overwrite=args.overwrite, **_format_option_values(args))
    details = f" ({record['architecture']}, {record.get('gguf_type', record['format'])}, {record['layers']} layers)" \
        if not get_exporter(args.format).is_checkpoint else ""
    print(f"wrote {args.out}{details}")


def _cmd_plan(args: argparse.Namespace) -> None:
    gpu_memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    for flag in ("windows", "seqlen", "batch_size", "domain_windows", "dpruner_batch_size"):
        if getattr(args, flag) < 1:
            raise SecateursError(f"--{flag.replace('_', '-')} must be at least 1")
    config = load_config(args.model)
    dtype = args.dtype
    if dtype == "auto":
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = str(saved).removeprefix("torch.") if saved is not None else "float32"
    if dtype not in DTYPES:
        raise SecateursError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(DTYPES)}")
    shape = run_shape(args.method, windows=args.windows, seqlen=args.seqlen, batch_size=args.batch_size,
                      dtype_bytes=DTYPES[dtype].itemsize, blocks=args.blocks, domain_windows=args.domain_windows,
                      update_batch_size=args.dpruner_batch_size, epochs=args.dpruner_steps)
    plan = make_plan(config, shape)
    if args.json:
        print(json.dumps({"model": args.model, "shape": dataclasses.asdict(shape), "dtype": dtype, **plan.as_dict()}, indent=2))
    else:
        print(render(plan, args.model, shape, args.gpus, gpu_memory, args.tflops, args.gpu_memory or ""))


def _cmd_data(args: argparse.Namespace) -> None:
    rows = describe_data(args.data_dir)
    if resolve_data_dir(args.data_dir) is None:
        print(f"no data directory: pass --data-dir DIR or set ${DATA_DIR_ENV} (the named sets are read from it; "
              "without one, wikitext2, ptb and alpaca come from the Hugging Face hub when online)")
    for row in rows:
        mark = "ok" if row["available"] else "--"
        default = " (default)" if row["default"] else ""
        print(f"[{mark}] {row['name']}:{row['split']}{default}  {row['description']}")
        for path in row["files"]:
            print(f"       {path}")


def _cmd_methods(args: argparse.Namespace) -> None:
    for m in list_methods():
        print(f"{m['name']:<19} {m['kind']:<12} {m['options']:<20} {m['summary']}")
        budget = f"--max-memory decides its {m['max_memory']}" if m["max_memory"] else "no --max-memory"
        print(f"{'':<19} memory: {m['memory']}; {budget}" + ("; --offload disk streams its weights"
                                                               if m["streams_weights"] else ""))


def _silence_transformers() -> None:
    """--quiet: no loading bars or info logs from transformers either."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


COMMANDS = {"eval": _cmd_eval, "prune": _cmd_prune, "export": _cmd_export, "plan": _cmd_plan, "data": _cmd_data,
            "methods": _cmd_methods}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        _silence_transformers()
    on_main = threading.current_thread() is threading.main_thread()  # signal handlers live on the main thread
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        COMMANDS[args.command](args)
    except SecateursError as exc:
        launch = Ranks.of_launch()  # under torchrun, rank 0's line is the one to read
        print(f"error: {exc}" if launch.main else f"error (rank {launch.rank}): {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated:
        why = " by torchrun: another process of the run failed" if Ranks.of_launch().world > 1 else ""
        print(f"terminated (SIGTERM{why}); nothing half-written was left behind", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
        Ranks.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
