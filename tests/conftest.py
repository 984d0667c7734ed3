"""Shared fixtures: the real tokenizer of the embedded model and a tiny random model built from a config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the slow lane (real embedded model)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow lane: pass --run-slow"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


REPO = Path(__file__).resolve().parents[1]
SUPPORT_VI = REPO / "golden" / "support_vi"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from harness.models.embedded import pull

    return pull(quiet=True)


@pytest.fixture(scope="session")
def tokenizer(embedded_dir: Path):  # noqa: ANN201 - transformers tokenizer type
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path, tokenizer) -> Path:  # noqa: ANN001
    """A 2-layer, 64-wide Llama with the real tokenizer, saved as a normal model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (embedded_dir / name).exists():
            shutil.copy(embedded_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture()
def suite_copy(tmp_path: Path) -> Path:
    """A writable copy of golden/support_vi for tests that break it on purpose."""
    dst = tmp_path / "support_vi"
    shutil.copytree(SUPPORT_VI, dst)
    return dst
