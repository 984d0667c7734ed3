"""pytest plugin: `pytest golden/<suite>` turns each gate of the suite's gates.yaml into a test item.

The pipeline (train or reuse the candidate, evaluate base, adapter and merged) runs once per session,
on the first item that needs it; every item then reads its own verdict. A failing item shows the
verdict, the figures with their intervals and the worst cases. Inconclusive verdicts are reported as
xfail with the reason and make the session exit 3 (or fail with --harness-strict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessInputError
from harness.verdict.gates import GATES_FILE, CheckSpec, GatePolicy, VariantInfo, expected_check_ids, load_policy

RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()
INCONCLUSIVE = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("harness", "LoRA regression harness gates")
    g.addoption("--harness-config", default=None, help="training preset to run (default: the policy's `pipeline`)")
    g.addoption("--harness-adapter", default=None, help="evaluate this adapter folder instead of training")
    g.addoption("--harness-model", default=None, help="override the preset's base model")
    g.addoption(
        "--harness-run", default=None, help="gate an existing run (folder name in the reports dir) instead of running"
    )
    g.addoption(
        "--harness-run-file",
        default=None,
        help="run this run file (harness compare) instead of the policy's `run` or `pipeline`",
    )
    g.addoption("--harness-reports-dir", default="reports", help="where run folders go (default: reports)")
    g.addoption("--harness-strict", action="store_true", help="an inconclusive gate fails")
    g.addoption("--harness-no-cache", action="store_true", help="do not reuse cached generations")
    g.addoption(
        "--harness-retention",
        default=None,
        help="also run capability retention with this lm-eval tasks folder (e.g. golden/retention)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}
    config.stash[INCONCLUSIVE] = []


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name == GATES_FILE and (file_path.parent / "suite.yaml").is_file():
        return GateFile.from_parent(parent, path=file_path)
    return None


class GateFile(pytest.File):
    """One gates.yaml: an item per check and variant, as the gate evaluator will name them."""

    def collect(self) -> list[pytest.Item]:
        try:
            policy = load_policy(self.path)
        except HarnessInputError as exc:
            raise self.CollectError(exc.render()) from None
        try:
            infos = _collected_variants(self.config, policy)
        except HarnessInputError as exc:
            raise self.CollectError(exc.render()) from None
        items: list[pytest.Item] = []
        for spec in policy.checks:
            for check_id in expected_check_ids(spec, infos) or [spec.id]:
                items.append(GateItem.from_parent(self, name=check_id, spec=spec, policy=policy))
        return items


def _run_file(config: pytest.Config, policy: GatePolicy) -> str | None:
    if config.getoption("--harness-run-file"):
        return str(config.getoption("--harness-run-file"))
    if config.getoption("--harness-config"):
        return None
    return policy.run


def _collected_variants(config: pytest.Config, policy: GatePolicy) -> list[VariantInfo]:
    """The variants the session's run will have: from the run file (read, nothing loaded), else the pipeline's three."""
    run_file = _run_file(config, policy)
    if run_file is None or config.getoption("--harness-run"):
        from harness.runs.pipeline import pipeline_variants

        specs = pipeline_variants(Path("adapter"))
    else:
        from harness.variants.spec import load_run_file

        specs = load_run_file(run_file).variants
    return [VariantInfo(v.name, v.kind, v.derived_from) for v in specs]


class GateFailure(Exception):
    def __init__(self, check: dict[str, Any]) -> None:
        super().__init__(check["id"])
        self.check = check


class GateItem(pytest.Item):
    def __init__(self, *, spec: CheckSpec, policy: GatePolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.policy = policy

    def runtest(self) -> None:
        report = _session_report(self.config, self.path)
        checks = [c for c in report["gates"]["checks"] if c["id"] == self.name or c["id"].startswith(self.name + ".")]
        if not checks:
            if self.spec.baseline == "champion" and report["gates"].get("champion") is None:
                pytest.skip("no champion yet: champion comparisons start after the first `harness promote`")
            if self.spec.kind == "retention" and self.spec.optional and not report.get("retention"):
                pytest.skip(
                    "capability retention was not run (optional check): pass --harness-retention golden/retention"
                )
            raise GateFailure(
                {
                    "id": self.name,
                    "verdict": "fail",
                    "title": self.spec.description,
                    "explanation": "the run produced no result for this check",
                    "worst_cases": [],
                }
            )
        for c in checks:
            if c["verdict"] == "fail":
                raise GateFailure(c)
        if all(c["verdict"] == "not_applicable" for c in checks):
            pytest.skip("not applicable: " + "; ".join(c["explanation"] for c in checks))
        inconclusive = [c for c in checks if c["verdict"] == "inconclusive"]
        if inconclusive:
            self.config.stash[INCONCLUSIVE].append(self.name)
            if self.config.getoption("--harness-strict"):
                raise GateFailure(inconclusive[0])
            pytest.xfail("inconclusive: " + "; ".join(_figures(c) for c in inconclusive))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailure):
            c = excinfo.value.check
            lines = [
                f"gate {c['id']}: {c['verdict'].upper()}",
                f"  {c.get('title') or ''}".rstrip(),
                f"  {c['explanation']}",
                f"  {_figures(c)}",
            ]
            for w in c.get("worst_cases", [])[:5]:
                lines.append(f"  worst case {w['id']}: {w['why']}")
            return "\n".join(line for line in lines if line.strip())
        if isinstance(excinfo.value, HarnessInputError):
            return f"harness input error:\n{excinfo.value.render()}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"gate {self.name} ({self.spec.kind})"


def _figures(c: dict[str, Any]) -> str:
    parts = []
    if c.get("value") is not None:
        parts.append(
            f"value {c['value']:.3f}" + (f" [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]" if c.get("ci95") else "")
        )
    if c.get("delta") is not None:
        parts.append(
            f"delta {c['delta']:+.3f}"
            + (f" [{c['delta_ci95'][0]:+.3f}, {c['delta_ci95'][1]:+.3f}]" if c.get("delta_ci95") else "")
        )
    if c.get("p_value") is not None:
        parts.append(f"p={c['p_value']:.3g}")
    if c.get("n"):
        parts.append(f"n={c['n']}")
    if c.get("mde") is not None:
        parts.append(f"MDE {c['mde']:.3f}")
    return ", ".join(parts) or c.get("explanation", "")


def _session_report(config: pytest.Config, gates_file: Path) -> dict[str, Any]:
    """Run (or load) the pipeline once per suite per session; errors are cached too, so they show once per item."""
    key = str(gates_file)
    cache = config.stash[RESULTS]
    if key not in cache:
        try:
            cache[key] = {"report": _run(config, gates_file)}
        except HarnessInputError as exc:
            cache[key] = {"error": exc}
    if "error" in cache[key]:
        raise cache[key]["error"]
    return cache[key]["report"]


def _run(config: pytest.Config, gates_file: Path) -> dict[str, Any]:
    from harness.engine.cache import default_path
    from harness.errors import Problem
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import refuse_unfit_references, run_pipeline
    from harness.suite.suite import load_suite
    from harness.training.config import load_train_config
    from harness.verdict.promote import regate

    policy = load_policy(gates_file)
    reports = Path(config.getoption("--harness-reports-dir"))
    existing = config.getoption("--harness-run")
    if existing:
        return regate(reports, existing, policy)[1]
    run_file = _run_file(config, policy)
    if run_file is not None:
        from harness.runs.plan import plan_run

        plan = plan_run(
            Path(run_file),
            EvalOptions(progress=False, cache_path=None if config.getoption("--harness-no-cache") else default_path()),
            policy_override=policy,
        )
        from harness.runs.compare import run_variants

        return run_variants(plan, reports)[1]
    preset = config.getoption("--harness-config") or policy.pipeline
    if not preset:
        raise HarnessInputError(
            Problem(
                f"{gates_file}: key 'pipeline'",
                "missing",
                (
                    "name the training preset (pipeline:) or a run file (run:) to run, "
                    "or pass --harness-config / --harness-run-file / --harness-run"
                ),
            )
        )
    cfg = load_train_config(Path(preset)).with_overrides(config.getoption("--harness-model"))
    suite = load_suite(gates_file.parent)
    from trainers.sft_recipe import candidate_adapter

    refuse_unfit_references(suite, resolve(cfg.model))  # before training, as `harness pipeline` does
    adapter_opt = config.getoption("--harness-adapter")
    adapter, training = candidate_adapter(cfg, Path(adapter_opt) if adapter_opt else None)
    options = EvalOptions(
        progress=False,
        canaries=tuple((training or {}).get("canaries") or ()),
        cache_path=None if config.getoption("--harness-no-cache") else default_path(),
    )
    retention = config.getoption("--harness-retention")
    _, report = run_pipeline(
        suite,
        resolve(cfg.model),
        adapter,
        reports,
        options,
        training=training,
        policy=policy,
        retention_dir=Path(retention) if retention else None,
        merge_dtype=cfg.merge_dtype,
    )
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for entry in config.stash[RESULTS].values():
        report = entry.get("report")
        if report:
            g = report["gates"]
            terminalreporter.write_line(
                f"harness: run {report['run_id']}: gates {g['verdict']} "
                f"({sum(c['verdict'] == 'pass' for c in g['checks'])}/{len(g['checks'])} pass)"
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (
        exitstatus == 0
        and session.config.stash.get(INCONCLUSIVE, [])
        and not session.config.getoption("--harness-strict", False)
    ):
        session.exitstatus = 3
