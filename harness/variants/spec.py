"""Variants: the named things a run evaluates side by side, and the run file that lists them.

A variant is what a team might ship: the base model, a PEFT adapter from any trainer, a merged folder
(merged here from an adapter, or the team's own), or a GGUF file. Each has a name, a kind, its sources
with content hashes (its cache identity), the prompt format it was trained on, and optionally the
variant it claims to reproduce (`derived_from`), which makes the harness check that claim.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem
from harness.io import sha256_file
from harness.variants.prompts import CHAT, PromptFormat, from_training_data, load_format

VariantKind = Literal["base", "adapter", "merged", "gguf"]
KINDS: tuple[str, ...] = get_args(VariantKind)
DERIVED_KINDS = ("merged", "gguf")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names that gate checks use as roles; a variant may not take them, so a check never means two things.
ROLES = ("candidates", "derived", "source", "champion")
DataFormat = Literal["messages", "instruction", "text"]


@dataclass(frozen=True)
class TrainingData:
    """The data a variant was trained on, so leakage, duplicates and personal data can be checked."""

    path: str
    format: DataFormat = "messages"
    template: str | None = None  # instruction/text formats: the prompt part, with {instruction}
    system_prompt: str | None = None  # messages: the system prompt training prepended (default: the suite's)
    canaries: tuple[str, ...] = ()  # canary strings planted in this data, searched for in the outputs


@dataclass(frozen=True)
class VariantSpec:
    """One variant as a run file writes it."""

    name: str
    kind: VariantKind
    path: str | None = None  # adapter folder, merged folder or .gguf file; base: omit (the run's base)
    preset: str | None = None  # adapter only: a training preset; its candidate is trained (or reused) and evaluated
    derived_from: str | None = None  # the variant this one claims to reproduce (merged, gguf)
    prompt_format: dict[str, Any] | str | None = None  # default: recorded at training, else inherited, else chat
    training_data: TrainingData | None = None
    merge_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # in-process merges only
    description: str = ""


@dataclass(frozen=True)
class RunSpec:
    """A run file: one suite, one base model, any number of variants, a gate policy."""

    suite: str
    variants: tuple[VariantSpec, ...]
    base: str = "smollm2-135m-instruct"
    gates: str | None = None  # a policy file; default: the suite's gates.yaml; "none": no gates
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class Variant:
    """A resolved variant: files checked, hashes taken, prompt format and training data decided."""

    name: str
    kind: str
    path: Path | None
    derived_from: str | None
    prompt_format: PromptFormat
    format_origin: str  # where the format came from: run file, training metadata, inherited, default
    sources: tuple[dict[str, str], ...] = ()
    training: dict[str, Any] | None = None  # training_metadata.json of a harness-trained adapter
    training_data: TrainingData | None = None
    merge_dtype: str = "auto"
    description: str = ""
    adapter_config: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def in_process(self) -> bool:
        """A merged variant without a folder is merged here from its adapter."""
        return self.kind == "merged" and self.path is None

    @property
    def canaries(self) -> tuple[str, ...]:
        planted = tuple((self.training or {}).get("canaries") or ())
        return planted + tuple(
            c for c in (self.training_data.canaries if self.training_data else ()) if c not in planted
        )

    def identity(self) -> str:
        """What the result cache keys this variant's outputs by: content hashes, never a name."""
        parts = [f"{s['role']}={s['sha256']}" for s in self.sources]
        return f"{self.kind}:" + ",".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "derived_from": self.derived_from,
            "prompt_format": self.prompt_format.to_json(),
            "prompt_format_origin": self.format_origin,
            "sources": list(self.sources),
            "training_data": None
            if self.training_data is None
            else {"path": self.training_data.path, "format": self.training_data.format},
            "canaries": len(self.canaries),
            "description": self.description,
            **({"lora_method": lora_method(self.adapter_config)} if self.adapter_config is not None else {}),
        }


def lora_method(config: dict[str, Any]) -> dict[str, Any]:
    """Which kind of LoRA an adapter_config.json describes, and the scaling PEFT applies to it.

    DoRA and rsLoRA adapters load and run like plain LoRA, but DoRA merges with a magnitude rescale and rsLoRA
    scales by alpha/sqrt(r) instead of alpha/r; a reader of the report must see which one was evaluated.
    """
    dora, rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
    r, alpha = config.get("r"), config.get("lora_alpha")
    scaling = None
    if isinstance(r, (int, float)) and isinstance(alpha, (int, float)) and r > 0:
        scaling = alpha / (math.sqrt(r) if rslora else r)
    patterns = bool(config.get("rank_pattern") or config.get("alpha_pattern"))
    label = " + ".join(n for n, on in (("DoRA" if dora else "LoRA", True), ("rsLoRA", rslora)) if on)
    label += f", r {r}, alpha {alpha}" + (", per-layer rank/alpha patterns" if patterns else "")
    return {
        "method": "dora" if dora else "lora",
        "rslora": rslora,
        "r": r,
        "lora_alpha": alpha,
        "scaling": scaling,  # the default layers' scaling; rank_pattern / alpha_pattern layers differ
        "per_layer_patterns": patterns,
        "label": label,
    }


def load_run_file(path: str | Path) -> RunSpec:
    """Strict: unknown keys, bad kinds, duplicate names and dangling `derived_from` are all reported at once."""
    p = Path(path)
    raw = read_yaml(p, "a run file (suite, base, variants; see golden/README.md)")
    raw.pop("source", None)
    problems: list[Problem] = []
    spec = build(RunSpec, raw, "", problems)
    problems = [Problem(f"{p}: key '{pr.where}'", pr.what, pr.fix) for pr in problems]
    if spec is None or problems:
        raise HarnessInputError(
            problems or [Problem(str(p), "could not be loaded", "see examples/compare_support_vi.yaml")]
        )
    return replace(spec, source=str(p))


def _adapter_sources(
    folder: Path, where: str, problems: list[Problem], base_dir: Path | None = None
) -> tuple[tuple[dict[str, str], ...], dict[str, Any] | None]:
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not folder.is_dir():
        problems.append(
            Problem(
                where,
                f"{folder} is not a folder",
                "pass the adapter folder (adapter_config.json + adapter_model.safetensors)",
            )
        )
        return (), None
    if not config_path.is_file():
        problems.append(
            Problem(
                where,
                f"{folder} is not a PEFT adapter folder (no adapter_config.json)",
                "pass the folder save_pretrained wrote",
            )
        )
        return (), None
    if not weights.is_file():
        problems.append(
            Problem(
                where, f"{folder} has no adapter_model.safetensors", "save the adapter with safe_serialization=True"
            )
        )
        return (), None
    config = _read_adapter_config(config_path, problems)
    if config is None:
        return (), None
    tensors = _safetensors_header(weights, problems)
    if tensors is None:
        return (), None
    if not _check_adapter_tensors(folder, config_path, weights, config, tensors, base_dir, problems):
        return (), None
    return (
        {"role": "adapter", "path": str(weights), "sha256": sha256_file(weights)},
        {"role": "adapter_config", "path": str(config_path), "sha256": sha256_file(config_path)},
    ), config


def _read_adapter_config(config_path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    """adapter_config.json as PEFT would read it, checked for what a LoRA load needs: all problems at once."""
    fix = "restore the adapter_config.json that save_pretrained wrote with the weights"
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(config_path), f"is not UTF-8 text (byte {exc.start})", fix))
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc})"
        problems.append(Problem(str(config_path), what, fix))
        return None
    if not isinstance(config, dict):
        problems.append(Problem(str(config_path), f"is a JSON {type(config).__name__}, not an object", fix))
        return None
    if config.get("peft_type") not in ("LORA", None):
        problems.append(
            Problem(
                f"{config_path}: key 'peft_type'",
                f"{config.get('peft_type')!r} is not LORA",
                "only LoRA adapters (LoRA, QLoRA-trained, DoRA, rsLoRA) are evaluated",
            )
        )
        return None
    found = len(problems)
    r = config.get("r")
    if "r" not in config:
        problems.append(Problem(f"{config_path}: key 'r'", "missing (the LoRA rank)", fix))
    elif isinstance(r, bool) or not isinstance(r, int) or r < 1:
        problems.append(Problem(f"{config_path}: key 'r'", f"{r!r} is not a positive whole number", fix))
    alpha = config.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        problems.append(Problem(f"{config_path}: key 'lora_alpha'", f"{alpha!r} is not a number", fix))
    targets = config.get("target_modules")
    if targets is None:
        problems.append(
            Problem(f"{config_path}: key 'target_modules'", "missing (which modules the adapter changes)", fix)
        )
    elif isinstance(targets, str):
        if not targets.strip():
            problems.append(Problem(f"{config_path}: key 'target_modules'", "is an empty string", fix))
    elif not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        problems.append(
            Problem(
                f"{config_path}: key 'target_modules'",
                f"{targets!r} is not a non-empty list of module names",
                'e.g. "target_modules": ["q_proj", "v_proj"]',
            )
        )
    for key in ("use_dora", "use_rslora"):
        if key in config and not isinstance(config[key], bool):
            problems.append(Problem(f"{config_path}: key '{key}'", f"{config[key]!r} is not true or false", fix))
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            problems.append(Problem(f"{config_path}: key '{key}'", "is not an object (module -> value)", fix))
    return config if len(problems) == found else None


def _safetensors_header(path: Path, problems: list[Problem]) -> dict[str, list[int]] | None:
    """name -> shape from a .safetensors header, without reading the tensors; a truncated or corrupt file is
    an input error naming it (the header says where every tensor ends: the file must be that long)."""
    fix = "the file is damaged: copy or save the adapter again (save_pretrained writes it)"
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                problems.append(Problem(str(path), f"is {size} bytes: too short for a safetensors file", fix))
                return None
            n = int.from_bytes(head, "little")
            if n < 2 or 8 + n > size:
                problems.append(
                    Problem(
                        str(path), f"is not a safetensors file or is truncated (header of {n} bytes in {size})", fix
                    )
                )
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        problems.append(Problem(str(path), "has a corrupt safetensors header (not JSON)", fix))
        return None
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot be read ({exc.strerror})", fix))
        return None
    if not isinstance(header, dict):
        problems.append(Problem(str(path), "has a corrupt safetensors header", fix))
        return None
    shapes: dict[str, list[int]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = [int(d) for d in info["shape"]]
            begin, stop = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            problems.append(Problem(str(path), f"has a corrupt safetensors header (tensor {name!r})", fix))
            return None
        shapes[name] = shape
        end = max(end, stop)
    if 8 + n + end > size:
        problems.append(Problem(str(path), f"is truncated: {size} bytes, the header says {8 + n + end}", fix))
        return None
    if not shapes:
        problems.append(Problem(str(path), "holds no tensors", fix))
        return None
    return shapes


LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "smollm3")
UNSHAPED = ("embed_tokens", "lm_head")  # valid LoRA targets of a llama-like base whose shapes are not checked here


def _base_shapes(base_dir: Path) -> dict[str, tuple[int, int]] | None:
    """(in, out) features of each linear module name of a llama-like base, from its config.json; None if unknown."""
    try:
        cfg = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(cfg, dict) or cfg.get("model_type") not in LLAMA_LIKE:
        return None
    try:
        hidden, inter, heads = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _check_adapter_tensors(
    folder: Path,
    config_path: Path,
    weights: Path,
    config: dict[str, Any],
    tensors: dict[str, list[int]],
    base_dir: Path | None,
    problems: list[Problem],
) -> bool:
    """Ranks against the config, module names and shapes against the base (llama-like bases): before any load."""
    found = len(problems)
    r = config["r"]
    patterned = bool(config.get("rank_pattern"))
    lora = [(m.group("module"), m.group("ab"), shape) for name, shape in tensors.items() if (m := LORA_KEY.match(name))]
    if not any("lora_" in name for name in tensors):
        problems.append(
            Problem(str(weights), "holds no LoRA tensors (lora_A / lora_B weights)", "pass a LoRA adapter folder")
        )
        return False
    base = _base_shapes(base_dir) if base_dir is not None else None
    targets = config["target_modules"]
    if base is not None and isinstance(targets, list):
        unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in (*base, *UNSHAPED) and t != "all-linear"]
        if unknown:
            problems.append(
                Problem(
                    f"{config_path}: key 'target_modules'",
                    f"{', '.join(map(repr, unknown))} not in the base model {base_dir} (it has {', '.join(base)})",
                    "the adapter was trained on another architecture: evaluate it on its own base model",
                )
            )
    for module, ab, shape in lora:
        short = module.rsplit(".", 1)[-1]
        if len(shape) != 2:
            problems.append(Problem(str(weights), f"{module}.lora_{ab} has shape {shape}, not a matrix", "save again"))
            break
        rank = shape[0] if ab == "A" else shape[1]
        if not patterned and rank != r:
            problems.append(
                Problem(
                    str(weights),
                    f"{module}.lora_{ab} has rank {rank}, but {config_path.name} says r = {r}",
                    "the config and the weights come from different adapters: restore the pair save_pretrained wrote",
                )
            )
            break
        if base is not None and short in base:
            want_in, want_out = base[short]
            got = shape[1] if ab == "A" else shape[0]
            want = want_in if ab == "A" else want_out
            if got != want:
                problems.append(
                    Problem(
                        str(folder),
                        f"{module}.lora_{ab} is {shape[0]}x{shape[1]}: {short} of the base {base_dir} takes "
                        f"{want_in} -> {want_out} features",
                        "the adapter was trained on another base model (other size): evaluate it on that base",
                    )
                )
                break
        elif base is not None and short not in UNSHAPED:
            problems.append(
                Problem(
                    str(weights),
                    f"adapts {module}, which the base {base_dir} does not have (it has {', '.join(base)})",
                    "the adapter was trained on another architecture: evaluate it on its own base model",
                )
            )
            break
    return len(problems) == found


def check_adapter(folder: Path, where: str, base_spec: str) -> dict[str, Any] | None:
    """An adapter folder a flag names, checked like a run file's (config, header, shapes against the base),
    before any training or model work; returns its training metadata (None if trained elsewhere)."""
    problems: list[Problem] = []
    _adapter_sources(folder.expanduser(), where, problems, _base_folder(base_spec))
    if problems:
        raise HarnessInputError(problems)
    return _training_metadata(folder.expanduser())


def _training_metadata(adapter: Path) -> dict[str, Any] | None:
    """A harness-trained candidate keeps training_metadata.json beside its adapter/ folder."""
    for folder in (adapter, adapter.parent):
        meta = folder / "training_metadata.json"
        if meta.is_file():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                return data
            except (ValueError, UnicodeDecodeError):
                raise HarnessInputError(
                    Problem(
                        str(meta),
                        "is not valid JSON",
                        "restore it or delete it (the adapter is then treated as trained elsewhere)",
                    )
                ) from None
    return None


def _recorded_format(meta: dict[str, Any], suite_system: str | None) -> PromptFormat | None:
    """The format a harness-trained adapter recorded; older metadata is read from its data config."""
    if "prompt_format" in meta:
        problems: list[Problem] = []
        return (
            load_format(meta["prompt_format"], "training_metadata.json: prompt_format", problems)
            if meta["prompt_format"]
            else None
        )
    data = ((meta.get("config") or {}).get("data")) or {}
    if not data:
        return None
    return from_training_data(
        str(data.get("format", "messages")), data.get("template"), data.get("system_prompt"), suite_system
    )


def _base_folder(base_spec: str) -> Path | None:
    """The base model's folder when it is already on disk (a local folder, or a pulled embedded model)."""
    from harness.models.embedded import EMBEDDED, embedded_dir

    folder = embedded_dir(base_spec) if base_spec in EMBEDDED else Path(base_spec).expanduser()
    return folder if (folder / "config.json").is_file() else None


def resolve_variants(
    specs: tuple[VariantSpec, ...], suite_system: str | None, where: str, base_spec: str
) -> list[Variant]:
    """Check every variant's files and references and decide its prompt format; all problems at once."""
    problems: list[Problem] = []
    base_dir = _base_folder(base_spec)
    names = [s.name for s in specs]
    if not specs:
        problems.append(
            Problem(f"{where}: key 'variants'", "is empty", "list at least one variant (e.g. the base and an adapter)")
        )
    for i, s in enumerate(specs):
        at = f"{where}: variants[{i}] ({s.name})"
        if s.preset is not None and (s.kind != "adapter" or s.path is not None):
            problems.append(
                Problem(
                    f"{at}.preset",
                    "only an adapter variant without a path takes a preset",
                    "give either path or preset",
                )
            )
        if not NAME_RE.match(s.name):
            problems.append(
                Problem(
                    f"{at}.name",
                    f"{s.name!r} is not a usable name",
                    "use letters, digits, '.', '_' or '-' (at most 64)",
                )
            )
        if s.name in ROLES:
            problems.append(
                Problem(
                    f"{at}.name",
                    f"{s.name!r} is a role gate checks use",
                    f"pick another name; reserved: {', '.join(ROLES)}",
                )
            )
        if names.count(s.name) > 1 and names.index(s.name) == i:
            problems.append(
                Problem(f"{at}.name", "is used by more than one variant", "give every variant its own name")
            )
        if s.derived_from is not None:
            if s.derived_from == s.name:
                problems.append(
                    Problem(f"{at}.derived_from", "names the variant itself", "name the variant it was made from")
                )
            elif s.derived_from not in names:
                problems.append(
                    Problem(
                        f"{at}.derived_from",
                        f"no variant named {s.derived_from!r}",
                        f"use one of: {', '.join(n for n in names if n != s.name)}",
                    )
                )
            if s.kind in ("base", "adapter"):
                problems.append(
                    Problem(
                        f"{at}.derived_from",
                        f"a {s.kind} variant is not derived from another",
                        "only merged and gguf variants take derived_from",
                    )
                )
    bases = [s for s in specs if s.kind == "base"]
    if len(bases) > 1:
        problems.append(
            Problem(
                f"{where}: key 'variants'",
                f"{len(bases)} base variants",
                "a run has one base model; name it once (kind: base)",
            )
        )
    by_name = {s.name: s for s in specs}
    resolved: dict[str, Variant] = {}
    pending = list(specs)
    # derived variants inherit their source's prompt format and training data: resolve sources first
    for _ in range(len(specs) + 1):
        if not pending:
            break
        later: list[VariantSpec] = []
        for s in pending:
            if s.derived_from in by_name and s.derived_from not in resolved and s.derived_from != s.name:
                later.append(s)
                continue
            resolved[s.name] = _resolve_one(
                s, names.index(s.name), resolved, suite_system, where, base_spec, problems, base_dir
            )
        if len(later) == len(pending):
            problems.append(
                Problem(
                    f"{where}: key 'variants'",
                    "derived_from forms a cycle: " + " -> ".join(v.name for v in later),
                    "break the cycle",
                )
            )
            break
        pending = later
    if problems:
        raise HarnessInputError(problems)
    return [resolved[n] for n in names]


def _resolve_one(
    s: VariantSpec,
    i: int,
    done: dict[str, Variant],
    suite_system: str | None,
    where: str,
    base_spec: str,
    problems: list[Problem],
    base_dir: Path | None = None,
) -> Variant:
    at = f"{where}: variants[{i}] ({s.name})"
    source = done.get(s.derived_from) if s.derived_from else None
    path = Path(s.path).expanduser() if s.path else None
    sources: tuple[dict[str, str], ...] = ()
    training: dict[str, Any] | None = None
    adapter_config: dict[str, Any] | None = None
    if s.kind == "base":
        if path is not None:
            problems.append(
                Problem(
                    f"{at}.path",
                    "a base variant is the run's base model",
                    f"remove path and set the run's `base:` (now {base_spec!r})",
                )
            )
        sources = ({"role": "base", "path": base_spec, "sha256": "(run base)"},)
    elif s.kind == "adapter":
        if path is None and s.preset is not None:
            if not Path(s.preset).is_file():
                problems.append(
                    Problem(
                        f"{at}.preset",
                        f"{s.preset} does not exist",
                        "name a preset YAML, e.g. trainers/configs/demo.yaml",
                    )
                )
        elif path is None:
            problems.append(
                Problem(
                    f"{at}.path",
                    "missing",
                    "give the adapter folder, or a training preset (preset: trainers/configs/...)",
                )
            )
        else:
            sources, adapter_config = _adapter_sources(path, f"{at}.path", problems, base_dir)
            training = _training_metadata(path) if sources else None
    elif s.kind == "merged":
        if path is None:
            if source is None or source.kind != "adapter":
                problems.append(
                    Problem(
                        f"{at}",
                        "a merged variant without a path is merged here, from an adapter",
                        "set derived_from to an adapter variant, or give the merged folder as path",
                    )
                )
        elif not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            problems.append(
                Problem(
                    f"{at}.path",
                    f"{path} is not a model folder with config.json and *.safetensors",
                    "pass the folder save_pretrained wrote (pickled .bin weights are not loaded)",
                )
            )
        else:
            weights = sorted(path.glob("*.safetensors"))
            sources = tuple({"role": "weights", "path": str(w), "sha256": sha256_file(w)} for w in weights)
    elif s.kind == "gguf":
        if path is None or path.suffix != ".gguf" or not path.is_file():
            problems.append(
                Problem(f"{at}.path", f"{path} is not a .gguf file" if path else "missing", "give the GGUF file's path")
            )
        else:
            sources = ({"role": "gguf", "path": str(path), "sha256": sha256_file(path)},)
    fmt_problems: list[Problem] = []
    fmt: PromptFormat | None
    if s.prompt_format is not None:
        fmt, origin = load_format(s.prompt_format, f"{at}.prompt_format", fmt_problems), "run file"
    elif training is not None and (recorded := _recorded_format(training, suite_system)) is not None:
        fmt, origin = recorded, "training_metadata.json"
    elif source is not None:
        fmt, origin = source.prompt_format, f"inherited from {source.name}"
    elif s.training_data is not None:
        td = s.training_data
        fmt, origin = from_training_data(td.format, td.template, td.system_prompt, suite_system), "training_data"
    else:
        fmt, origin = CHAT, "default (chat template with the suite's system prompt)"
    problems.extend(fmt_problems)
    data = s.training_data or (source.training_data if source is not None else None)
    if s.training_data is not None and not Path(s.training_data.path).is_file():
        problems.append(
            Problem(
                f"{at}.training_data.path",
                f"{s.training_data.path} does not exist",
                "give the JSONL file the variant was trained on",
            )
        )
    return Variant(
        s.name,
        s.kind,
        path,
        s.derived_from,
        fmt or CHAT,
        origin,
        sources,
        training if training is not None else (source.training if source is not None else None),
        data,
        s.merge_dtype,
        s.description,
        adapter_config,
    )


def source_chain(variants: dict[str, Variant], name: str) -> list[Variant]:
    """The variant and every variant it derives from, nearest first."""
    out: list[Variant] = []
    cur: Variant | None = variants[name]
    while cur is not None and cur not in out:
        out.append(cur)
        cur = variants.get(cur.derived_from) if cur.derived_from else None
    return out


def evaluation_order(variants: list[Variant]) -> list[Variant]:
    """Base first, then adapters, then derived variants after their sources; in-process merges last,
    because merging changes the one resident copy of the base weights."""
    rank = {"base": 0, "adapter": 1, "merged": 2, "gguf": 2}
    done: list[Variant] = []
    todo = sorted(variants, key=lambda v: (rank[v.kind] + (2 if v.in_process else 0), variants.index(v)))
    while todo:
        for v in todo:
            if v.derived_from is None or any(d.name == v.derived_from for d in done):
                done.append(v)
                todo.remove(v)
                break
        else:
            done.extend(todo)
            break
    return done
