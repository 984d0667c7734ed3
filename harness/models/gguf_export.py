"""`harness gguf`: prove that a merged model folder converts to GGUF with llama.cpp's own converter.

Why this exists: the pipeline saves `reports/<run>/merged/` (safetensors + config + tokenizer) and
promises llama.cpp can consume it. This runs the official `convert_hf_to_gguf.py` on the folder in a
subprocess and checks the file with `gguf.GGUFReader`: the architecture, the tensor count against the
safetensors, and that the tokenizer is embedded.

4-bit output (`--outtype q4_0` or `q4_1`): the converter cannot write it, so the folder is converted to f32
in a temporary folder and requantized with gguf-py's reference quantizer (harness/models/gguf_quantize.py).
K-quants (q4_k_m, ...) need llama.cpp's C++ `llama-quantize`; `harness compare` scores such a file the same
way when one is brought (transformers dequantizes it on load).

Converter: `--converter PATH/convert_hf_to_gguf.py`, else $LLAMA_CPP_CONVERTER, else the copy that
`scripts/fetch_llama_cpp_converter.sh` puts in $LLAMA_CPP_DIR or the harness cache's llama.cpp/.
Bad input raises HarnessInputError (exit 2); a failed or unfaithful conversion raises ConversionError
(exit 1, with the converter's last stderr lines).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import HarnessInputError
from harness.io import atomic_output
from harness.models.embedded import cache_dir
from harness.models.gguf_quantize import REQUANT_TYPES, requantize

ENV_CONVERTER = "LLAMA_CPP_CONVERTER"
FETCH_SCRIPT = "scripts/fetch_llama_cpp_converter.sh"
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself
OUTTYPES = CONVERTER_OUTTYPES + tuple(REQUANT_TYPES)  # q4_0, q4_1: converted to f32, then requantized here
STDERR_TAIL = 15


class ConversionError(Exception):
    """The converter ran and failed, or wrote a GGUF that does not match the source (exit 1)."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


@dataclass(frozen=True)
class SourceInfo:
    """What the merged folder says about itself, read without loading any weights."""

    path: Path
    model_type: str
    architectures: tuple[str, ...]
    vocab_size: int | None
    n_tensors: int
    tokenizer_class: str | None


@dataclass(frozen=True)
class GGUFSummary:
    """What gguf.GGUFReader sees in the converted file."""

    path: Path
    architecture: str
    name: str | None
    n_tensors: int
    size_bytes: int
    tensor_types: dict[str, int]
    tokenizer_model: str | None
    tokenizer_pre: str | None
    n_tokens: int
    n_merges: int
    has_chat_template: bool
    file_type: str | None = None  # general.file_type without MOSTLY_ (F16, Q8_0, Q4_0, ...)


@dataclass(frozen=True)
class CheckResult:
    """One conversion: the source, the GGUF read back, how long the converter took, and notes."""

    source: SourceInfo
    gguf: GGUFSummary
    converter: Path
    converter_version: str | None
    outtype: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def default_converter() -> Path:
    """Where scripts/fetch_llama_cpp_converter.sh puts the converter: $LLAMA_CPP_DIR, else the harness cache."""
    folder = os.environ.get("LLAMA_CPP_DIR")
    return (Path(folder).expanduser() if folder else cache_dir() / "llama.cpp") / "convert_hf_to_gguf.py"


def resolve_converter(arg: str | Path | None = None) -> Path:
    """--converter, else $LLAMA_CPP_CONVERTER, else the default cache location; it must exist."""
    if arg:
        path, origin = Path(arg).expanduser(), "--converter"
    elif os.environ.get(ENV_CONVERTER):
        path, origin = Path(os.environ[ENV_CONVERTER]).expanduser(), f"${ENV_CONVERTER}"
    else:
        path, origin = default_converter(), "the default location"
    if path.is_dir():
        path = path / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise HarnessInputError(
            f"llama.cpp converter not found at {path} (from {origin}); get it with `{FETCH_SCRIPT}` "
            f"(downloads the pinned llama-cpp-python sdist from PyPI and prints the path), or pass "
            f"--converter PATH/convert_hf_to_gguf.py from a llama.cpp checkout, or set ${ENV_CONVERTER}"
        )
    if not (path.parent / "gguf-py").is_dir():
        raise HarnessInputError(
            f"{path.parent} has no gguf-py/ next to convert_hf_to_gguf.py; "
            "use a whole llama.cpp tree or the fetch script"
        )
    return path.resolve()


def _safetensors_count(file: Path) -> int:
    """Tensor names in a safetensors file; safe_open reads the header only, no weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return len(list(f.keys()))
    except SafetensorError as exc:
        raise HarnessInputError(f"{file} is not a safetensors file ({exc})") from None


def inspect_source(merged: Path) -> SourceInfo:
    """Check that the folder is what the converter needs; HarnessInputError names everything missing."""
    if not merged.is_dir():
        raise HarnessInputError(f"{merged} is not a folder (expected a merged model folder, e.g. reports/<run>/merged)")
    missing: list[str] = []
    if not (merged / "config.json").is_file():
        missing.append("config.json (write it with model.save_pretrained(dir))")
    index = merged / "model.safetensors.index.json"
    single = merged / "model.safetensors"
    if not single.is_file() and not index.is_file():
        missing.append("model.safetensors (write it with model.save_pretrained(dir, safe_serialization=True))")
    if not (merged / "tokenizer.json").is_file() and not (merged / "tokenizer.model").is_file():
        missing.append("tokenizer.json or tokenizer.model (write them with tokenizer.save_pretrained(dir))")
    if missing:
        raise HarnessInputError(f"{merged} lacks " + "; ".join(missing))
    try:
        config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarnessInputError(f"{merged / 'config.json'} is not valid JSON: {exc}") from None
    if index.is_file():
        n_tensors = len(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    else:
        n_tensors = _safetensors_count(single)
    tokenizer_class = None
    tok_config = merged / "tokenizer_config.json"
    if tok_config.is_file():
        tokenizer_class = json.loads(tok_config.read_text(encoding="utf-8")).get("tokenizer_class")
    text_config = config.get("text_config", config)
    return SourceInfo(
        path=merged,
        model_type=str(config.get("model_type", "")),
        architectures=tuple(config.get("architectures") or ()),
        vocab_size=text_config.get("vocab_size"),
        n_tensors=n_tensors,
        tokenizer_class=tokenizer_class,
    )


def _converter_env(converter: Path) -> dict[str, str]:
    """The converter finds its gguf-py itself; add pydeps/ (sentencepiece from the fetch script)."""
    env = dict(os.environ)
    extra = [str(p) for p in (converter.parent / "pydeps",) if p.is_dir()]
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _tail(text: str, n: int = STDERR_TAIL) -> str:
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def run_converter(converter: Path, merged: Path, outfile: Path, outtype: str = "f16", timeout: float = 600.0) -> float:
    """Run convert_hf_to_gguf.py with this interpreter; return its wall time in seconds."""
    cmd = [sys.executable, str(converter), str(merged), "--outfile", str(outfile), "--outtype", outtype]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_converter_env(converter), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise ConversionError(f"the converter ran past {timeout:.0f} s", _tail(stderr)) from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        stderr = proc.stderr + proc.stdout
        module = re.search(r"No module named '([^']+)'", stderr)
        if module:
            name = module.group(1).split(".")[0]
            raise HarnessInputError(
                f"the converter needs the Python module {name!r}, missing from {sys.executable}: run "
                f"`{FETCH_SCRIPT}` (puts sentencepiece in {converter.parent / 'pydeps'}) "
                f"or install it (llama.cpp's list: requirements/requirements-convert_hf_to_gguf.txt)"
            )
        hint = ""
        if "Tokenizer class TokenizersBackend does not exist" in stderr:
            hint = (
                " (tokenizer_config.json says tokenizer_class TokenizersBackend, a transformers 5 name; "
                "transformers 4.x cannot load it: set it to PreTrainedTokenizerFast)"
            )
        raise ConversionError(f"convert_hf_to_gguf.py exited with {proc.returncode}{hint}", _tail(stderr))
    if not outfile.is_file():
        raise ConversionError(f"convert_hf_to_gguf.py exited 0 but wrote no {outfile}", _tail(proc.stderr))
    return seconds


def read_gguf(path: Path) -> GGUFSummary:
    """Read the GGUF back with the gguf package (memory-mapped; no tensor data is copied)."""
    import gguf  # the venv's gguf package, not the converter's copy

    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> object:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    def length(key: str) -> int:
        f = reader.get_field(key)
        return 0 if f is None else len(f.data)

    arch = value("general.architecture")
    name = value("general.name")
    tok_model = value("tokenizer.ggml.model")
    tok_pre = value("tokenizer.ggml.pre")
    file_type = value("general.file_type")
    file_type_name = None
    if file_type is not None:
        try:
            file_type_name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type_name = f"unknown ({file_type})"
    return GGUFSummary(
        path=path,
        architecture=str(arch) if arch is not None else "",
        name=str(name) if name is not None else None,
        n_tensors=len(reader.tensors),
        size_bytes=path.stat().st_size,
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        tokenizer_model=str(tok_model) if tok_model is not None else None,
        tokenizer_pre=str(tok_pre) if tok_pre is not None else None,
        n_tokens=length("tokenizer.ggml.tokens"),
        n_merges=length("tokenizer.ggml.merges"),
        has_chat_template=reader.get_field("tokenizer.chat_template") is not None,
        file_type=file_type_name,
    )


def verify(source: SourceInfo, summary: GGUFSummary, outtype: str | None = None) -> list[str]:
    """Mismatches between the folder and its GGUF; empty when the conversion is faithful.

    For a requantized `outtype` (q4_0, q4_1) the declared file type and the tensors must carry that type too:
    a scorer keys its parity bounds on the file type.
    """
    problems: list[str] = []
    if outtype in REQUANT_TYPES:
        tensor_type, file_type = REQUANT_TYPES[outtype]
        if summary.file_type != file_type.removeprefix("MOSTLY_"):
            problems.append(f"general.file_type is {summary.file_type}, expected {file_type}")
        if not summary.tensor_types.get(tensor_type):
            problems.append(f"no tensor is stored as {tensor_type}")
    if not summary.architecture:
        problems.append("general.architecture is missing")
    elif source.model_type == "llama" and summary.architecture != "llama":
        problems.append(f"architecture is {summary.architecture!r}, expected 'llama' for model_type llama")
    if summary.n_tensors != source.n_tensors:
        problems.append(f"{summary.n_tensors} tensors in the GGUF but {source.n_tensors} in the safetensors")
    if not summary.tokenizer_model or summary.n_tokens == 0:
        problems.append("no tokenizer embedded (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    elif source.vocab_size is not None and summary.n_tokens != source.vocab_size:
        problems.append(f"{summary.n_tokens} tokens embedded but config vocab_size is {source.vocab_size}")
    return problems


def convert_and_check(
    merged: Path,
    converter: str | Path | None = None,
    outtype: str = "f16",
    outfile: Path | None = None,
    timeout: float = 600.0,
) -> CheckResult:
    """Convert `merged` with llama.cpp's converter and check the GGUF; keep it only if `outfile` is given.

    q4_0 and q4_1 are converted to f32 in a temporary folder, then requantized (one rounding, not two).
    The kept file is written under a temporary name in its folder and renamed, so it is never half-written.
    """
    if outtype not in OUTTYPES:
        raise HarnessInputError(_outtype_problem(outtype))
    source = inspect_source(Path(merged))
    conv = resolve_converter(converter)
    stamp = conv.parent / "VERSION"
    version = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else None
    notes: list[str] = []
    if source.tokenizer_class == "TokenizersBackend":
        notes.append(
            "tokenizer_config.json has tokenizer_class TokenizersBackend (transformers 5); llama.cpp's pinned "
            "transformers 4.57.6 cannot load that class; PreTrainedTokenizerFast works with both"
        )
    with tempfile.TemporaryDirectory(prefix="gguf-check-") as tmp:
        target = Path(outfile) if outfile is not None else Path(tmp) / "model.gguf"
        if outtype in REQUANT_TYPES:
            intermediate = Path(tmp) / "model-f32.gguf"
            seconds = run_converter(conv, source.path, intermediate, "f32", timeout)
            start = time.perf_counter()
            done = requantize(intermediate, target, outtype)
            requant_s = time.perf_counter() - start
            seconds += requant_s
            types = ", ".join(f"{k} {v}" for k, v in sorted(done.tensor_types.items()))
            head = (
                (
                    f"; {done.output_tensor} (the output matrix) in Q8_0, where llama-quantize writes Q6_K "
                    "(Q8_0 when the row length is not a multiple of 256)"
                )
                if done.output_tensor
                else ""
            )
            notes.append(
                f"converted to f32, then requantized to {done.file_type} with gguf-py's reference quantizer in "
                f"{requant_s:.1f} s: {types} (1-D tensors stay F32{head})"
            )
            if done.already_on_grid:
                notes.append(
                    f"warning: {done.file_type} rounding moved the weights by only {done.rounding_rel:.2%} (median; "
                    f"trained weights move ~9%): the folder was already on the {done.file_type} grid, i.e. its base "
                    f"was dequantized from {done.file_type}, and a merged adapter's delta smaller than the rounding "
                    "step is rounded away with it; harness compare would report derived_lacks_adapter. "
                    "Use another type (q4_0, q8_0) for this base"
                )
            if done.kept_float:
                notes.append(f"kept in F32 (row length not a multiple of the block size): {', '.join(done.kept_float)}")
        else:
            with atomic_output(target) as partial:
                seconds = run_converter(conv, source.path, partial, outtype, timeout)
        summary = read_gguf(target)
        problems = verify(source, summary, outtype)
        if outfile is None:
            summary = replace(summary, path=Path("(temporary, deleted)"))
    if problems:
        raise ConversionError("the GGUF does not match the folder: " + "; ".join(problems))
    return CheckResult(source, summary, conv, version, outtype, seconds, notes)


def _outtype_problem(outtype: str) -> str:
    """What is wrong with an --outtype and what to use instead; k-quants name the tool that writes them."""
    message = f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}"
    if "_k" in outtype.lower() or outtype.lower().startswith("iq"):
        message += (
            f" ({outtype} needs llama.cpp's C++ llama-quantize: convert with --outtype f16 and run "
            "`llama-quantize merged-f16.gguf out.gguf " + outtype.upper() + "`; harness compare scores the result)"
        )
    else:
        message += "; pick one of those (q4_0 and q4_1 are requantized from f32 with gguf-py's reference quantizer)"
    return message


def render(result: CheckResult) -> str:
    """Human-readable summary, one fact per line."""
    g, s = result.gguf, result.source
    types = ", ".join(f"{k} {v}" for k, v in sorted(g.tensor_types.items()))
    lines = [
        f"converted {s.path} with {result.converter} ({result.converter_version or 'version unknown'}) "
        f"in {result.seconds:.1f} s",
        f"  architecture: {g.architecture} (config: model_type {s.model_type}, {', '.join(s.architectures) or '-'})",
        f"  tensors:      {g.n_tensors} (safetensors: {s.n_tensors}); {types}",
        f"  size:         {g.size_bytes / 2**20:.1f} MiB ({g.size_bytes} bytes), outtype {result.outtype}, "
        f"file type {g.file_type or 'not declared'}",
        f"  tokenizer:    {g.tokenizer_model} (pre {g.tokenizer_pre}), {g.n_tokens} tokens, {g.n_merges} merges, "
        f"chat template {'embedded' if g.has_chat_template else 'absent'}",
        f"  output:       {g.path}",
    ]
    lines += [n if n.startswith("warning: ") else f"note: {n}" for n in result.notes]
    return "\n".join(lines)
