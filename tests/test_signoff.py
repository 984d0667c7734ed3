"""Signed sign-offs: ed25519 keys and an allowed-signers file as in git's SSH signing, the policy that says
whether a signature is required, attestations inside the signed entry, the release checklist filled from a
real run, and the ledger inputs that used to end in a traceback or a false "intact".

Keys are made here with `cryptography` and written in OpenSSH format, as `ssh-keygen -t ed25519` writes them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.cli import main
from harness.errors import HarnessInputError
from harness.io import atomic_write_json
from harness.verdict.checklist import build_checklist
from harness.verdict.ledger import HEAD_FILE, LEDGER_FILE, append_signoff, entry_hash, signed_payload
from harness.verdict.signing import (
    ALLOWED_SIGNERS,
    PASSPHRASE_ENV,
    SIGNING_KEY_ENV,
    armored,
    fingerprint,
    load_allowed_signers,
    load_signing_key,
)
from tests.conftest import REPO

RUN = "run-a"
OTHER = "run-b"
ATTEST = [
    "--attest",
    "licence=Apache-2.0 base model; training data written by us",
    "--attest",
    "privacy=reviewed with the DPO on 2026-03-01",
    "--attest",
    "monitoring=format and safety dashboards, weekly sample review",
]


@dataclass(frozen=True)
class Key:
    path: Path
    public: str  # the .pub line: ssh-ed25519 AAAA... comment
    fingerprint: str


def make_key(folder: Path, name: str) -> Key:
    """An ed25519 key pair written as ssh-keygen writes it (OpenSSH private key, one-line .pub)."""
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    path = folder / name
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {name}@test"
    (folder / f"{name}.pub").write_text(line + "\n", encoding="utf-8")
    return Key(path, line, fingerprint(private.public_key()))


def write_signers(path: Path, *lines: str) -> Path:
    path.write_text("# allowed signers for the test\n" + "".join(f"{x}\n" for x in lines), encoding="utf-8")
    return path


def make_reports(tmp_path: Path, signoff: dict[str, Any] | None = None, gates: bool = True) -> Path:
    """Two runs of one suite whose gates.yaml carries `signoff` (None: no block, the defaults)."""
    suite = tmp_path / "suite"
    suite.mkdir(parents=True, exist_ok=True)
    policy = {"version": 1, "checks": []} | ({"signoff": signoff} if signoff is not None else {})
    (suite / "gates.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    reports = tmp_path / "reports"
    for run, verdict in ((RUN, "pass"), (OTHER, "fail")):
        (reports / run).mkdir(parents=True)
        report = {
            "kind": "pipeline",
            "run_id": run,
            "suite": {"name": "s", "version": "1", "path": str(suite), "n_cases": 2},
            "gates": {"verdict": verdict, "policy": str(suite / "gates.yaml"), "checks": []} if gates else None,
        }
        (reports / run / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return reports


@dataclass
class World:
    reports: Path
    signers: Path
    lan: Key
    minh: Key


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    for env in (SIGNING_KEY_ENV, PASSPHRASE_ENV, "HARNESS_ALLOWED_SIGNERS"):
        monkeypatch.delenv(env, raising=False)
    lan, minh = make_key(tmp_path / "keys", "lan"), make_key(tmp_path / "keys", "minh")
    signers = write_signers(tmp_path / "allowed_signers", f"lan@example.com {lan.public}")
    return World(make_reports(tmp_path), signers, lan, minh)


def harness(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code) if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.is_dir() else {}


def refused(root: Path, *argv: str | Path, needles: tuple[str, ...]) -> str:
    """Exit 2, one `harness: error` message naming what is wrong, no traceback, nothing written under root."""
    before = snapshot(root)
    code, out, err = harness(*argv)
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("harness: error")]) == 1, err
    for n in needles:
        assert n in err, f"{n!r} not in:\n{err}"
    assert snapshot(root) == before, "files were written or changed"
    return err


def sign(w: World, run: str = RUN, by: str = "lan@example.com", key: Key | None = None, *extra: str) -> str:
    code, out, err = harness(
        "signoff",
        run,
        "--by",
        by,
        "--decision",
        "approve",
        "--key",
        (key or w.lan).path,
        *ATTEST,
        "--allowed-signers",
        w.signers,
        "--reports-dir",
        w.reports,
        *extra,
    )
    assert code == 0, err
    return out


def verify(w: World, signers: Path | None = None) -> tuple[int, str, str]:
    return harness("ledger", "verify", "--reports-dir", w.reports, "--allowed-signers", signers or w.signers)


def entries(reports: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (reports / LEDGER_FILE).read_text(encoding="utf-8").splitlines() if x.strip()]


def rewrite(reports: Path, rows: list[dict[str, Any]]) -> None:
    """Write entries back with hashes, links and head made consistent again: only a signature can tell."""
    prev = "0" * 64
    for e in rows:
        e["prev_hash"] = prev
        e["hash"] = prev = entry_hash(e)
    text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for e in rows)
    (reports / LEDGER_FILE).write_text(text, encoding="utf-8")
    atomic_write_json(reports / HEAD_FILE, {"entries": len(rows), "last_hash": prev})


# ---------------------------------------------------------------- signing and verifying


def test_signed_signoff_verifies_and_records_signer_and_attestations(world: World) -> None:
    out = sign(world)
    assert "Release checklist" in out and "[attested]" in out and f"signed with {world.lan.fingerprint}" in out
    [e] = entries(world.reports)
    assert e["by"] == "lan@example.com" and e["key_fingerprint"] == world.lan.fingerprint
    assert e["attestations"]["privacy"] == "reviewed with the DPO on 2026-03-01"
    assert e["checklist"]["licence"] == "attested" and e["checklist"]["regression_safety"] == "ok"
    assert e["policy"].endswith("gates.yaml")
    payload = json.loads(signed_payload(e))
    assert "signature" not in payload and "hash" not in payload and payload["attestations"] == e["attestations"]
    assert payload["prev_hash"] == e["prev_hash"]  # the signature binds the entry to its place in the chain
    code, out, err = verify(world)
    assert code == 0, err
    assert "#1 valid" in out and "ledger: intact (1 entries, 1 valid)" in out
    code, out, _ = harness("ledger", "show", "--reports-dir", world.reports, "--allowed-signers", world.signers)
    assert code == 0 and "[valid]" in out


def test_fingerprint_and_signature_agree_with_openssh(world: World, tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen")
    sign(world)
    [e] = entries(world.reports)
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(world.lan.path) + ".pub"], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split()[1] == e["key_fingerprint"]
    (tmp_path / "sig").write_text(armored(e["signature"]), encoding="utf-8")
    checked = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(world.signers),
            "-I",
            e["by"],
            "-n",
            "harness-signoff",
            "-s",
            str(tmp_path / "sig"),
        ],
        input=signed_payload(e),
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert b"Good" in checked.stdout


def test_tampered_entry_is_a_bad_signature_even_with_a_rebuilt_chain(world: World) -> None:
    sign(world)
    sign(world, OTHER)
    rows = entries(world.reports)
    rows[0]["attestations"]["privacy"] = "not needed"
    rewrite(world.reports, rows)
    code, out, err = verify(world)
    assert code == 1
    assert "#1 bad signature" in out and f"{LEDGER_FILE}:1 " in err and "changed after it was signed" in err
    # the second entry's own fields are untouched, but its signature covers prev_hash, which the rebuild changed
    assert "#2 bad signature" in out


def test_dropped_signature_breaks_the_chain(world: World) -> None:
    sign(world)
    lines = (world.reports / LEDGER_FILE).read_text(encoding="utf-8").splitlines()
    e = json.loads(lines[0])
    e["signature"] = None
    (world.reports / LEDGER_FILE).write_text(json.dumps(e) + "\n", encoding="utf-8")
    code, out, err = verify(world)
    assert code == 1 and "edited after it was signed" in err and "#1 unsigned" in out


def test_key_missing_from_allowed_signers_is_an_unknown_signer(world: World, tmp_path: Path) -> None:
    sign(world)
    others = write_signers(tmp_path / "others", f"minh@example.com {world.minh.public}")
    code, out, err = verify(world, others)
    assert code == 1 and "#1 unknown signer" in out and f"key {world.lan.fingerprint} is not in {others}" in err


def test_principal_no_longer_allowed_for_the_key_is_an_unknown_signer(world: World, tmp_path: Path) -> None:
    sign(world)
    renamed = write_signers(tmp_path / "renamed", f"someone-else@example.com {world.lan.public}")
    code, out, err = verify(world, renamed)
    assert code == 1 and "#1 unknown signer" in out and "may not sign as 'lan@example.com'" in err


def test_principal_mismatch_is_refused_at_signoff(world: World) -> None:
    refused(
        world.reports,
        "signoff",
        RUN,
        "--by",
        "minh@example.com",
        "--decision",
        "reject",
        "--key",
        world.lan.path,
        "--allowed-signers",
        world.signers,
        "--reports-dir",
        world.reports,
        needles=("--by minh@example.com", "may not sign as 'minh@example.com'", "sign as one of lan@example.com"),
    )


def test_unlisted_key_is_refused_at_signoff_with_the_line_to_add(world: World) -> None:
    err = refused(
        world.reports,
        "signoff",
        RUN,
        "--by",
        "minh@example.com",
        "--decision",
        "reject",
        "--key",
        world.minh.path,
        "--allowed-signers",
        world.signers,
        "--reports-dir",
        world.reports,
        needles=(f"key {world.minh.fingerprint} is not in {world.signers}",),
    )
    assert world.minh.public.rsplit(" ", 1)[0] in err


def test_signing_key_from_the_environment(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, str(world.lan.path))
    code, _, err = harness(
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--allowed-signers", world.signers,
        "--reports-dir", world.reports,
    )  # fmt: skip
    assert code == 0, err
    assert entries(world.reports)[0]["key_fingerprint"] == world.lan.fingerprint


def test_wildcard_principals_namespaces_and_validity(world: World, tmp_path: Path) -> None:
    lan = world.lan.public
    world.signers = write_signers(tmp_path / "wild", f'"*@example.com",!eve@example.com {lan}')
    sign(world, by="anyone@example.com")
    refused(
        world.reports,
        "signoff", RUN, "--by", "eve@example.com", "--decision", "reject", "--key", world.lan.path,
        "--allowed-signers", world.signers, "--reports-dir", world.reports,
        needles=("may not sign as 'eve@example.com'",),
    )  # fmt: skip
    git_only = write_signers(tmp_path / "git-only", f'lan@example.com namespaces="git" {lan}')
    expired = write_signers(tmp_path / "expired", f"lan@example.com valid-before=20200101Z {lan}")
    for path, needle in ((git_only, "do not include harness-signoff"), (expired, "valid only before 2020-01-01")):
        world.signers = path
        refused(
            world.reports,
            "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
            "--allowed-signers", path, "--reports-dir", world.reports,
            needles=(needle,),
        )  # fmt: skip
    both = write_signers(tmp_path / "both", f'*@example.com namespaces="git,harness-signoff" {lan}')
    world.signers = both
    assert verify(world)[0] == 0  # the earlier entry is still valid under a line listing both namespaces


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("lan@example.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ lan", "is a ssh-rsa key"),
        ("lan@example.com ssh-ed25519 notbase64!! lan", "the key does not decode"),
        ("lan@example.com cert-authority ssh-ed25519 AAAA", "cert-authority lines are not supported"),
        ("lan@example.com no-touch-required ssh-ed25519 AAAA", "option 'no-touch-required' is not one of"),
        ("lan@example.com ssh-ed25519", "needs at least a principal, a key type and a key"),
        ('"lan@example.com ssh-ed25519 AAAA', "double quote is never closed"),
        ("lan@example.com valid-before=2027 KEY", "bad validity time"),
    ],
)
def test_bad_allowed_signers_lines_name_their_line(world: World, tmp_path: Path, line: str, needle: str) -> None:
    lan = world.lan.public
    path = write_signers(tmp_path / "bad", f"lan@example.com {lan}", line.replace("KEY", lan))
    with pytest.raises(HarnessInputError) as info:
        load_allowed_signers(path)
    assert f"{path}:3" in str(info.value) and needle in str(info.value)
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
        "--allowed-signers", path, "--reports-dir", world.reports,
        needles=(f"{path}:3",),
    )  # fmt: skip


def test_missing_allowed_signers_file(world: World, tmp_path: Path) -> None:
    sign(world)
    missing = tmp_path / "nope" / "allowed_signers"
    before = snapshot(world.reports)
    code, _, err = verify(world, missing)
    assert code == 2 and f"{missing}: no such allowed-signers file" in err and "Traceback" not in err
    assert snapshot(world.reports) == before
    code, out, err = harness("ledger", "show", "--reports-dir", world.reports, "--allowed-signers", missing)
    assert code == 0 and "[not checked]" in out and "signatures not checked" in err


def test_the_shipped_allowed_signers_file_parses_and_lists_no_one() -> None:
    signers = load_allowed_signers(REPO / ALLOWED_SIGNERS)
    assert signers.signers == ()


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("public", "is a public key"),
        ("missing", "no such key file"),
        ("folder", "is not a file"),
        ("garbage", "not an OpenSSH private key"),
        ("pkcs8", "not an OpenSSH private key"),
        ("passphrase-set", "has no passphrase, but $HARNESS_SIGNING_KEY_PASSPHRASE is set"),
    ],
)
def test_unusable_signing_keys_are_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str, needle: str
) -> None:
    path = {
        "public": Path(str(world.lan.path) + ".pub"),
        "missing": tmp_path / "no-key",
        "folder": tmp_path,
        "garbage": world.signers,
        "pkcs8": tmp_path / "pkcs8",
        "passphrase-set": world.lan.path,
    }[setup]
    if setup == "pkcs8":
        path.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    if setup == "passphrase-set":
        monkeypatch.setenv(PASSPHRASE_ENV, "x")
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", path,
        "--allowed-signers", world.signers, "--reports-dir", world.reports,
        needles=(str(path), needle),
    )  # fmt: skip


def test_passphrase_protected_key_needs_the_passphrase(world: World, tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen")
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(key)], check=True)
    with pytest.raises(HarnessInputError, match=r"passphrase-protected \(fix: put the passphrase in"):
        load_signing_key(key)


# ---------------------------------------------------------------- the policy: unsigned sign-offs


def test_unsigned_is_refused_by_default_naming_the_setting(world: World) -> None:
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan", "--decision", "reject", "--unsigned", "--reports-dir", world.reports,
        needles=("requires a signature", "signoff: {require_signature: false}", "gates.yaml"),
    )  # fmt: skip
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan", "--decision", "reject", "--reports-dir", world.reports,
        needles=("pass --key", SIGNING_KEY_ENV),
    )  # fmt: skip


def test_run_without_a_gate_policy_gets_the_strict_defaults(tmp_path: Path) -> None:
    reports = make_reports(tmp_path, gates=False)
    shutil.rmtree(tmp_path / "suite")
    refused(
        reports,
        "signoff", RUN, "--by", "lan", "--decision", "reject", "--unsigned", "--reports-dir", reports,
        needles=("defaults (no gate policy found", "requires a signature"),
    )  # fmt: skip


def test_unsigned_allowed_by_the_policy_is_shown_as_unsigned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    reports = make_reports(tmp_path, signoff={"require_signature": False, "attestations": ["licence"]})
    code, out, err = harness(
        "signoff", RUN, "--by", "Lan", "--decision", "approve", "--unsigned", "--attest", "licence=ok",
        "--reports-dir", reports,
    )  # fmt: skip
    assert code == 0, err
    assert "unsigned, as the policy allows" in out
    [e] = entries(reports)
    assert e["signature"] is None and e["key_fingerprint"] is None and e["attestations"] == {"licence": "ok"}
    no_signers = tmp_path / "none"  # not read: no entry is signed
    code, out, err = harness("ledger", "verify", "--reports-dir", reports, "--allowed-signers", no_signers)
    assert code == 0, err
    assert "#1 unsigned" in out and "as the sign-off policy" in out and "allows" in out
    code, out, _ = harness("ledger", "show", "--reports-dir", reports, "--allowed-signers", no_signers)
    assert code == 0 and "[unsigned]: " in out


def test_unsigned_entry_under_a_strict_policy_fails_verify(world: World) -> None:
    sign(world)
    append_signoff(world.reports, OTHER, "mallory", "approve", "no key")  # behind the policy's back
    code, out, err = verify(world)
    assert code == 1 and "#2 unsigned" in out and f"{LEDGER_FILE}:2 " in err and "requires a signature" in err


def test_key_and_unsigned_together_are_refused(world: World, tmp_path: Path) -> None:
    reports = make_reports(tmp_path / "lenient", signoff={"require_signature": False})
    refused(
        reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--unsigned", "--key", world.lan.path,
        "--allowed-signers", world.signers, "--reports-dir", reports,
        needles=("pass one of --key and --unsigned",),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("signoff", "needle"),
    [
        ({"require_signatures": False}, "signoff.require_signatures: unknown key"),
        ({"require_signature": "no"}, "must be true or false"),
        ({"attestations": ["Licence"]}, "attestations[0]: 'Licence' is not a short lower-case name"),
    ],
)
def test_bad_signoff_policy_is_an_input_error(
    world: World, tmp_path: Path, signoff: dict[str, Any], needle: str
) -> None:
    reports = make_reports(tmp_path / "bad", signoff=signoff)
    refused(
        reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
        "--allowed-signers", world.signers, "--reports-dir", reports,
        needles=("gates.yaml", needle),
    )  # fmt: skip


# ---------------------------------------------------------------- attestations


def test_approve_without_attestations_lists_what_is_missing(world: World) -> None:
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "approve", "--key", world.lan.path,
        "--attest", "licence=ok", "--allowed-signers", world.signers, "--reports-dir", world.reports,
        needles=("approve: needs every attestation; missing: privacy, monitoring", "(a reject needs none)"),
    )  # fmt: skip
    code, _, err = harness(
        "signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
        "--allowed-signers", world.signers, "--reports-dir", world.reports,
    )  # fmt: skip
    assert code == 0, err
    assert entries(world.reports)[0]["attestations"] == {}


def test_unknown_or_malformed_attestations_are_refused(world: World) -> None:
    base = ["signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path]
    tail = ["--allowed-signers", world.signers, "--reports-dir", world.reports]
    refused(world.reports, *base, "--attest", "licnse=x", *tail, needles=("--attest licnse", "did you mean 'licence'"))
    refused(world.reports, *base, "--attest", "licence", *tail, needles=("--attest licence", "is not NAME=TEXT"))
    refused(world.reports, *base, "--attest", "licence=a", "--attest", "licence=b", *tail, needles=("is given twice",))


def test_attestations_from_a_yaml_file(world: World, tmp_path: Path) -> None:
    file = tmp_path / "attest.yaml"
    file.write_text("licence: Apache-2.0\nprivacy: reviewed\nmonitoring: dashboards\n", encoding="utf-8")
    code, _, err = harness(
        "signoff", RUN, "--by", "lan@example.com", "--decision", "approve", "--key", world.lan.path,
        "--attestations", file, "--allowed-signers", world.signers, "--reports-dir", world.reports,
    )  # fmt: skip
    assert code == 0, err
    assert entries(world.reports)[0]["attestations"] == {
        "licence": "Apache-2.0",
        "privacy": "reviewed",
        "monitoring": "dashboards",
    }
    file.write_text("licence: ''\n", encoding="utf-8")
    refused(
        world.reports,
        "signoff", RUN, "--by", "lan@example.com", "--decision", "approve", "--key", world.lan.path,
        "--attestations", file, "--allowed-signers", world.signers, "--reports-dir", world.reports,
        needles=(f"{file}: licence", "must be non-empty text"),
    )  # fmt: skip


def test_policy_may_ask_for_other_attestations(world: World, tmp_path: Path) -> None:
    reports = make_reports(tmp_path / "custom", signoff={"attestations": ["licence", "red-team"]})
    code, out, err = harness(
        "signoff", RUN, "--by", "lan@example.com", "--decision", "approve", "--key", world.lan.path,
        "--attest", "licence=ok", "--attest", "red-team=done by the safety team",
        "--allowed-signers", world.signers, "--reports-dir", reports,
    )  # fmt: skip
    assert code == 0, err
    assert "Red team: done by the safety team" in out and "privacy" not in entries(reports)[0]["attestations"]


# ---------------------------------------------------------------- ledger input holes


def test_ledger_path_that_is_a_folder(world: World) -> None:
    (world.reports / LEDGER_FILE).mkdir()
    for argv in (
        ("signoff", RUN, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
         "--allowed-signers", world.signers, "--reports-dir", world.reports),
        ("ledger", "verify", "--reports-dir", world.reports, "--allowed-signers", world.signers),
        ("ledger", "show", "--reports-dir", world.reports),
    ):  # fmt: skip
        refused(world.reports, *argv, needles=(str(world.reports / LEDGER_FILE), "is a folder"))
    assert not (world.reports / ".ledger.lock").exists()


def test_head_or_lock_that_is_a_folder(world: World) -> None:
    sign(world)
    (world.reports / HEAD_FILE).unlink()
    (world.reports / HEAD_FILE).mkdir()
    refused(
        world.reports, "ledger", "verify", "--reports-dir", world.reports, needles=(str(world.reports / HEAD_FILE),)
    )
    refused(
        world.reports,
        "signoff", OTHER, "--by", "lan@example.com", "--decision", "reject", "--key", world.lan.path,
        "--allowed-signers", world.signers, "--reports-dir", world.reports,
        needles=(str(world.reports / HEAD_FILE), "is a folder"),
    )  # fmt: skip


def test_reports_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "reports"
    file.write_text("not a folder", encoding="utf-8")
    for argv in (("ledger", "verify"), ("ledger", "show"), ("signoff", RUN, "--by", "x", "--decision", "reject")):
        refused(tmp_path, *argv, "--reports-dir", file, needles=(str(file), "is not a folder"))


def test_verify_on_a_mistyped_reports_folder_is_an_input_error(world: World, tmp_path: Path) -> None:
    sign(world)
    typo = tmp_path / "reprots"
    for sub in ("verify", "show"):
        err = refused(tmp_path, "ledger", sub, "--reports-dir", typo, needles=(str(typo), "no such reports folder"))
        assert "intact" not in err
        assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "ledger", "verify", "--reports-dir", empty, needles=(str(empty / LEDGER_FILE), "no ledger found"))


def test_show_reports_a_corrupt_line_with_its_number(world: World) -> None:
    sign(world)
    sign(world, OTHER)
    sign(world)
    ledger = world.reports / LEDGER_FILE
    lines = ledger.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1][:30] + "\n"
    ledger.write_text("".join(lines), encoding="utf-8")
    err = refused(
        world.reports,
        "ledger", "show", "--reports-dir", world.reports, "--allowed-signers", world.signers,
        needles=(f"{ledger}:2", "not valid JSON"),
    )  # fmt: skip
    assert f"{ledger}:1" not in err and f"{ledger}:3" not in err


# ---------------------------------------------------------------- the checklist on a real run


def _pointer(report: dict[str, Any], key: str) -> Any:
    obj: Any = report
    for part in [p for p in key.split("/") if p]:
        assert isinstance(obj, dict) and part in obj, f"{key}: no {part!r}"
        obj = obj[part]
    return obj


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """Two pipeline runs of the tiny model (the second replays the first from the eval cache) with training
    metadata, under a gate policy; the first is made the champion by hand (random weights pass no gate)."""
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import run_pipeline
    from harness.suite.suite import load_suite
    from harness.verdict.gates import load_policy
    from tests.test_pipeline import _adapter, _small_suite

    root = tmp_path_factory.mktemp("signoff-runs")
    adapter = _adapter(root, tiny_model_dir, trained=True)
    suite = load_suite(_small_suite(root, n=4, max_new=8))
    fixture = REPO / "tests" / "fixtures" / "reports" / "20260301T120000Z-support_vi-demo" / "report.json"
    training = json.loads(fixture.read_text(encoding="utf-8"))["training"]
    (adapter.parent / "training_metadata.json").write_text(json.dumps(training), encoding="utf-8")
    reports = root / "reports"
    options = EvalOptions(batch_size=3, progress=False, cache_path=root / "cache.sqlite")
    policy = load_policy(suite.path / "gates.yaml")
    reports_out = {}
    for run_id in ("first", "second"):
        _, report = run_pipeline(
            suite,
            resolve(str(tiny_model_dir)),
            adapter,
            reports,
            options,
            run_id=run_id,
            training=training,
            policy=policy,
            parallel_base=False,
            token_budget="warn",
        )
        reports_out[run_id] = report
        if run_id == "first":
            atomic_write_json(reports / "champion.json", {"run_id": "first", "variant": "adapter", "previous": None})
    return {"reports": reports, "runs": reports_out, "n": len(suite.cases)}


def test_serving_figures_are_measured_during_evaluation(real_runs: dict[str, Any]) -> None:
    n = real_runs["n"]
    first = real_runs["runs"]["first"]["variants"]
    for name in ("base", "adapter"):
        s = first[name]["timings"]["serving"]
        assert s["source"] == "measured" and s["measured_cases"] == s["cases"] == n
        assert s["tokens_per_s"] > 0 and 0 < s["latency_p50_s"] <= s["latency_p95_s"]
        assert s["peak_memory_mb"] > 0 and "RSS" in s["peak_memory_basis"]
        assert s["batches"] == -(-n // 3) and s["batch_size"] == 3
    merged = first["merged"]["timings"]["serving"]
    assert merged["source"] == "not measured" and merged["replayed_cases"] == n and merged["latency_p50_s"] is None
    assert "replayed" in merged["note"]
    cached = real_runs["runs"]["second"]["variants"]["adapter"]["timings"]["serving"]
    assert cached["cached_cases"] == n and cached["tokens_per_s"] is None and "eval cache" in cached["note"]


def test_checklist_is_filled_from_a_real_run_and_links_existing_files(real_runs: dict[str, Any]) -> None:
    reports = real_runs["reports"]
    report = json.loads((reports / "second" / "report.json").read_text(encoding="utf-8"))
    items = {i.id: i for i in build_checklist(reports, "second", report)}
    assert list(items)[:8] == [
        "baseline",
        "seeded_split",
        "training_metadata",
        "sanity_check",
        "regression_safety",
        "merge_parity",
        "serving",
        "rollback",
    ]
    assert items["baseline"].status == "ok" and "beside 2 candidate(s): adapter, merged" in items["baseline"].detail
    assert items["seeded_split"].status == "ok" and "seed 42" in items["seeded_split"].detail
    assert items["training_metadata"].status == "ok" and "config 2c5c1a025ac1" in items["training_metadata"].detail
    assert items["sanity_check"].status == "ok" and "data hygiene of adapter: pass" in items["sanity_check"].detail
    assert items["regression_safety"].status == ("ok" if report["gates"]["verdict"] == "pass" else "fail")
    assert f"gates {report['gates']['verdict']}" in items["regression_safety"].detail
    assert items["merge_parity"].status == "ok" and "merged vs adapter: pass" in items["merge_parity"].detail
    assert items["serving"].status == "missing" and "eval cache" in items["serving"].detail  # replayed from cache
    assert (
        items["rollback"].status == "ok" and "the current champion first (variant adapter)" in items["rollback"].detail
    )
    assert [items[n].status for n in ("licence", "privacy", "monitoring")] == ["unattested"] * 3
    assert "apache-2.0" in items["licence"].detail
    linked = [e for i in items.values() for e in i.evidence]
    assert len(linked) > 15
    for e in linked:
        assert Path(e.path).is_file(), e
        if e.key:
            _pointer(json.loads(Path(e.path).read_text(encoding="utf-8")), e.key)
    assert any(e.path.endswith("training_metadata.json") for e in items["seeded_split"].evidence)
    assert any(e.path == str(reports / "first" / "report.json") for e in items["rollback"].evidence)
    first = json.loads((reports / "first" / "report.json").read_text(encoding="utf-8"))
    served = {i.id: i for i in build_checklist(reports, "first", first)}["serving"]
    assert served.status == "partial" and "adapter: " in served.detail and "merged: not measured" in served.detail


def test_signing_a_real_run_prints_and_records_its_checklist(
    real_runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    shutil.copytree(real_runs["reports"], reports)
    lan = make_key(tmp_path / "keys", "lan")
    signers = write_signers(tmp_path / "allowed", f"lan@example.com {lan.public}")
    code, out, err = harness(
        "signoff", "first", "--by", "lan@example.com", "--decision", "approve", "--key", lan.path, *ATTEST,
        "--allowed-signers", signers, "--reports-dir", reports, "--note", "tiny model, for the test",
    )  # fmt: skip
    assert code == 0, err
    assert out.index("Release checklist") < out.index("ledger: #1")
    assert "[ok]" in out and "Serving figures measured during evaluation" in out and "tokens/s" in out
    [e] = entries(reports)
    report = json.loads((reports / "first" / "report.json").read_text(encoding="utf-8"))
    summary = {i.id: i.status for i in build_checklist(reports, "first", report, e["attestations"])}
    assert e["checklist"] == summary
    assert harness("ledger", "verify", "--reports-dir", reports, "--allowed-signers", signers)[0] == 0


def test_serving_latency_spreads_each_batch_over_its_cases() -> None:
    from harness.runs.evaluate import serving_figures

    s = serving_figures([(2, 1.0), (1, 3.0)], 4, 3, 1, 12.5, 2, "cpu")
    assert s["latency_p50_s"] == 0.5 and s["latency_p95_s"] == 2.75  # cases at 0.5, 0.5 and 3.0 s
    assert s["source"] == "partly measured" and s["tokens_per_s"] == 12.5 and s["batches"] == 2
    assert "measured over the 3 generated cases" in s["note"]
    none = serving_figures([], 4, 0, 0, None, 2, "cpu")
    assert (
        none["latency_p50_s"] is None
        and none["peak_memory_mb"] is None
        and "4 cases came from the eval cache" in none["note"]
    )


def test_principal_patterns_are_openssh_wildcards_only() -> None:
    from harness.verdict.signing import matches

    assert matches(("*@example.com", "!eve@example.com"), "lan@example.com")
    assert not matches(("*@example.com", "!eve@example.com"), "eve@example.com")
    assert matches(("release-?",), "release-1") and not matches(("release-?",), "release-12")
    assert matches(("[ops]",), "[ops]") and not matches(("[ops]",), "o")  # no character classes


KEYS = ["kind", "variant_order", "variants", "suite", "training", "gates", "relations", "parity", "timings"]
KEYS += ["serving", "hygiene", "hygiene_by_variant", "safety_findings", "doctor", "data", "seed", "derived_from"]
KEYS += ["verdict", "checks", "policy", "tokens_per_s", "kind", "base", "adapter", "merged", "model", "provenance"]


def _json_like() -> Any:
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.sampled_from(KEYS)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
        max_leaves=25,
    )


def test_checklist_never_raises_on_odd_reports(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(KEYS), _json_like(), max_size=8))
    def check(report: dict[str, Any]) -> None:
        items = build_checklist(tmp_path, "r", report)
        assert [i.id for i in items][-3:] == ["licence", "privacy", "monitoring"]
        assert all(i.status in ("ok", "partial", "fail", "missing", "n/a", "unattested") for i in items)

    check()


def test_checklist_of_a_single_model_eval_run(tmp_path: Path) -> None:
    serving = {"tokens_per_s": 20.0, "latency_p50_s": 0.1, "latency_p95_s": 0.2, "peak_memory_mb": 500.0}
    report = {"kind": "eval", "model": {"spec": "m"}, "timings": {"serving": {**serving, "cases": 3}}}
    items = {i.id: i for i in build_checklist(tmp_path, "r", report)}
    assert items["baseline"].status == "missing" and "no base model beside it" in items["baseline"].detail
    assert items["serving"].status == "ok" and "m: 20.0 tokens/s" in items["serving"].detail
    assert str(items["serving"].evidence[0]).endswith("report.json#/timings")


def test_a_lenient_gates_file_a_run_was_judged_by_does_not_relax_its_signoff(tmp_path: Path) -> None:
    reports = make_reports(tmp_path)  # the suite's own gates.yaml: the defaults, signatures required
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({"version": 1, "checks": [], "signoff": {"require_signature": False}}))
    report = json.loads((reports / RUN / "report.json").read_text(encoding="utf-8"))
    report["gates"]["policy"] = str(lenient)  # as `harness gate RUN --gates lenient.yaml` records it
    (reports / RUN / "report.json").write_text(json.dumps(report), encoding="utf-8")
    refused(
        reports,
        "signoff", RUN, "--by", "lan", "--decision", "reject", "--unsigned", "--reports-dir", reports,
        needles=(str(tmp_path / "suite" / "gates.yaml"), "requires a signature"),
    )  # fmt: skip
