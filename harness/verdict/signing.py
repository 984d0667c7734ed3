"""Ed25519 signatures on sign-offs, in the model of git's SSH commit signing.

A signer signs with an OpenSSH private key (`ssh-keygen -t ed25519`); who may sign is an allowed-signers file
kept in the repository, in the format of git's `gpg.ssh.allowedSignersFile` (`man ssh-keygen`, ALLOWED
SIGNERS). Signatures are OpenSSH SSHSIG blobs in the namespace `harness-signoff`, so besides `harness ledger
verify` anyone can check one with `ssh-keygen -Y verify` (docs/signoff.md). Every piece of arithmetic (SHA-512,
Ed25519) is the `cryptography` package's; this module only packs and unpacks the SSHSIG envelope around it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from harness.errors import HarnessInputError, Problem

ALLOWED_SIGNERS = Path("golden/allowed_signers")  # the repository's default; kept under review like the suites
ALLOWED_SIGNERS_ENV = "HARNESS_ALLOWED_SIGNERS"
SIGNING_KEY_ENV = "HARNESS_SIGNING_KEY"
PASSPHRASE_ENV = "HARNESS_SIGNING_KEY_PASSPHRASE"
NAMESPACE = "harness-signoff"
KEY_TYPE = "ssh-ed25519"
_MAGIC = b"SSHSIG"
_HASH = "sha512"
_OPTIONS = ("namespaces", "valid-after", "valid-before")

Status = Literal["valid", "unsigned", "unknown signer", "bad signature"]


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(blob: bytes, at: int) -> tuple[bytes, int]:
    if at + 4 > len(blob):
        raise ValueError("truncated")
    (n,) = struct.unpack(">I", blob[at : at + 4])
    if at + 4 + n > len(blob):
        raise ValueError("truncated")
    return blob[at + 4 : at + 4 + n], at + 4 + n


def _digest(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def public_blob(key: Ed25519PublicKey) -> bytes:
    """The key in SSH wire format (what the base64 field of an OpenSSH public key line holds)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA256:... exactly as `ssh-keygen -l` prints it."""
    return "SHA256:" + base64.b64encode(_digest(public_blob(key), hashes.SHA256())).decode("ascii").rstrip("=")


def public_line(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def _signed_data(message: bytes, namespace: str) -> bytes:
    """What SSHSIG signs: a preamble naming the namespace and the hash of the message (PROTOCOL.sshsig)."""
    return (
        _MAGIC
        + _string(namespace.encode())
        + _string(b"")
        + _string(_HASH.encode())
        + _string(_digest(message, hashes.SHA512()))
    )


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key, with what the ledger records about it."""

    path: Path
    key: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, message: bytes) -> str:
        """The base64 SSHSIG blob over message (the armoured form without its armour lines)."""
        signature = self.key.sign(_signed_data(message, NAMESPACE))
        blob = (
            _MAGIC
            + struct.pack(">I", 1)
            + _string(public_blob(self.public))
            + _string(NAMESPACE.encode())
            + _string(b"")
            + _string(_HASH.encode())
            + _string(_string(KEY_TYPE.encode()) + _string(signature))
        )
        return base64.b64encode(blob).decode("ascii")


def armored(signature_b64: str) -> str:
    """The signature as `ssh-keygen -Y verify -s FILE` reads it."""
    body = "\n".join(signature_b64[i : i + 70] for i in range(0, len(signature_b64), 70))
    return f"-----BEGIN SSH SIGNATURE-----\n{body}\n-----END SSH SIGNATURE-----\n"


def load_signing_key(path: Path, passphrase_env: str = PASSPHRASE_ENV) -> SigningKey:
    """An ed25519 OpenSSH private key; a passphrase, if the key has one, comes from the environment, never a flag."""
    fix = "pass the private key `ssh-keygen -t ed25519 -f FILE` wrote (not the .pub) with --key or $" + SIGNING_KEY_ENV
    path = path.expanduser()
    if not path.exists():
        raise HarnessInputError(Problem(str(path), "no such key file", fix))
    if not path.is_file():
        raise HarnessInputError(Problem(str(path), "is not a file", fix))
    data = path.read_bytes()
    if data.lstrip().startswith(b"ssh-"):
        raise HarnessInputError(Problem(str(path), "is a public key", fix))
    secret = os.environ.get(passphrase_env)
    try:
        key = serialization.load_ssh_private_key(data, secret.encode() if secret else None)
    except UnsupportedAlgorithm as exc:
        raise HarnessInputError(
            Problem(
                str(path),
                f"is passphrase-protected and cannot be opened here ({exc})",
                "install the bcrypt package, or sign with a passphrase-less key kept with care",
            )
        ) from None
    except TypeError:
        if secret:
            raise HarnessInputError(
                Problem(str(path), f"has no passphrase, but ${passphrase_env} is set", f"unset {passphrase_env}")
            ) from None
        raise HarnessInputError(
            Problem(str(path), "is passphrase-protected", f"put the passphrase in ${passphrase_env}")
        ) from None
    except ValueError as exc:
        why = "the passphrase is wrong or the file is damaged" if secret else "it is not an OpenSSH private key"
        raise HarnessInputError(Problem(str(path), f"cannot be loaded: {why} ({exc})", fix)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HarnessInputError(
            Problem(
                str(path),
                f"is not an ed25519 key (it holds {type(key).__name__.removesuffix('PrivateKey').removeprefix('_')})",
                "sign-offs use ed25519: ssh-keygen -t ed25519",
            )
        )
    return SigningKey(path, key)


# ---------------------------------------------------------------- allowed signers


def _fields(line: str) -> list[str]:
    """Whitespace-separated fields; double quotes keep spaces inside one field (OpenSSH's rules)."""
    out: list[str] = []
    cur, quoted = "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch.isspace() and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if quoted:
        raise ValueError("an opening double quote is never closed")
    if cur:
        out.append(cur)
    return out


def _split_commas(text: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH wildcards only: `*` any run, `?` one character; everything else, `[` included, is literal."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


def matches(patterns: tuple[str, ...], name: str) -> bool:
    """OpenSSH pattern-list matching: `*` and `?` wildcards, and `!pattern` ruling a name out."""
    hit = False
    for p in patterns:
        if p.startswith("!"):
            if _glob(p[1:], name):
                return False
        elif _glob(p, name):
            hit = True
    return hit


def _timestamp(text: str) -> datetime:
    """YYYYMMDD[HHMM[SS]][Z]: UTC with a Z, local time without (as ssh-keygen reads it)."""
    utc = text.endswith("Z")
    digits = text.removesuffix("Z")
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise ValueError(f"{text!r} is not YYYYMMDD[HHMM[SS]][Z]")
    when = datetime.strptime(digits, formats[len(digits)])
    return when.replace(tzinfo=timezone.utc) if utc else when.astimezone()


@dataclass(frozen=True)
class AllowedSigner:
    """One line of the allowed-signers file."""

    line: int
    principals: tuple[str, ...]
    key: Ed25519PublicKey
    fingerprint: str
    namespaces: tuple[str, ...] | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None

    def why_not(self, principal: str, at: datetime | None) -> str:
        """Why this line does not let `principal` sign a sign-off at `at`; "" when it does."""
        if not matches(self.principals, principal):
            return f"{principal!r} is not one of its principals ({', '.join(self.principals)})"
        if self.namespaces is not None and not matches(self.namespaces, NAMESPACE):
            return f"its namespaces={','.join(self.namespaces)} do not include {NAMESPACE}"
        if at is not None and self.valid_after is not None and at < self.valid_after:
            return f"it is valid only after {self.valid_after.isoformat()}"
        if at is not None and self.valid_before is not None and at > self.valid_before:
            return f"it was valid only before {self.valid_before.isoformat()}"
        return ""


@dataclass(frozen=True)
class AllowedSigners:
    path: Path
    signers: tuple[AllowedSigner, ...]

    def lines_for(self, key_fingerprint: str) -> list[AllowedSigner]:
        return [s for s in self.signers if s.fingerprint == key_fingerprint]

    def authorise(self, key_fingerprint: str, principal: str, at: datetime | None = None) -> str:
        """ "" when some line lets this key sign as principal (at that time); otherwise why not, as a sentence."""
        lines = self.lines_for(key_fingerprint)
        if not lines:
            return f"key {key_fingerprint} is not in {self.path}"
        reasons = [f"line {s.line}: {why}" for s in lines if (why := s.why_not(principal, at))]
        if len(reasons) < len(lines):
            return ""
        return f"key {key_fingerprint} may not sign as {principal!r} per {self.path} (" + "; ".join(reasons) + ")"

    def principals_of(self, key_fingerprint: str) -> list[str]:
        return [p for s in self.lines_for(key_fingerprint) for p in s.principals]


def allowed_signers_path(given: Path | None = None) -> Path:
    """--allowed-signers, else $HARNESS_ALLOWED_SIGNERS, else golden/allowed_signers."""
    if given is not None:
        return given
    env = os.environ.get(ALLOWED_SIGNERS_ENV)
    return Path(env).expanduser() if env else ALLOWED_SIGNERS


def _parse_line(path: Path, lineno: int, text: str, problems: list[Problem]) -> AllowedSigner | None:
    where = f"{path}:{lineno}"
    line_fix = f"write `principal[,principal...] [options] {KEY_TYPE} AAAA... [comment]` (the key from a .pub file)"
    try:
        fields = _fields(text)
    except ValueError as exc:
        problems.append(Problem(where, str(exc), line_fix))
        return None
    if len(fields) < 3:
        problems.append(Problem(where, "needs at least a principal, a key type and a key", line_fix))
        return None
    principals = tuple(p.strip('"') for p in _split_commas(fields[0]))
    if any(not p for p in principals):
        problems.append(Problem(where, "has an empty principal", "separate principals with single commas"))
        return None
    rest = fields[1:]
    options: dict[str, str] = {}
    if not rest[0].startswith(("ssh-", "ecdsa-", "sk-")):  # not a key type, so the options field
        for opt in _split_commas(rest[0]):
            name, _, value = opt.partition("=")
            name = name.lower()
            if name == "cert-authority":
                problems.append(
                    Problem(where, "cert-authority lines are not supported", "list each signer's own key instead")
                )
                return None
            if name not in _OPTIONS or not value:
                problems.append(
                    Problem(where, f"option {opt!r} is not one of {', '.join(o + '=...' for o in _OPTIONS)}", line_fix)
                )
                return None
            options[name] = value.strip('"')
        rest = rest[1:]
    if len(rest) < 2:
        problems.append(Problem(where, "has no key after its options", line_fix))
        return None
    key_type, b64 = rest[0], rest[1]
    if key_type != KEY_TYPE:
        problems.append(Problem(where, f"is a {key_type} key", f"sign-offs use ed25519 keys ({KEY_TYPE} ...)"))
        return None
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {b64}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, binascii.Error, UnicodeEncodeError) as exc:
        problems.append(Problem(where, f"the key does not decode ({exc})", "paste the whole line of the .pub file"))
        return None
    if not isinstance(key, Ed25519PublicKey):
        problems.append(Problem(where, "is not an ed25519 key", f"use a {KEY_TYPE} key"))
        return None
    try:
        after = _timestamp(options["valid-after"]) if "valid-after" in options else None
        before = _timestamp(options["valid-before"]) if "valid-before" in options else None
    except ValueError as exc:
        problems.append(Problem(where, f"bad validity time: {exc}", "write e.g. valid-before=20271231Z"))
        return None
    namespaces = tuple(options["namespaces"].split(",")) if "namespaces" in options else None
    return AllowedSigner(lineno, principals, key, fingerprint(key), namespaces, after, before)


def load_allowed_signers(path: Path) -> AllowedSigners:
    """Every line checked; any bad line is an input error naming its line, since a skipped one would deny someone."""
    fix = "pass the repository's allowed-signers file with --allowed-signers (default golden/allowed_signers)"
    if not path.exists():
        raise HarnessInputError(Problem(str(path), "no such allowed-signers file", fix))
    if not path.is_file():
        raise HarnessInputError(Problem(str(path), "is not a file", fix))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessInputError(Problem(str(path), f"is not UTF-8 text ({exc.reason})", "save it as UTF-8")) from None
    problems: list[Problem] = []
    signers: list[AllowedSigner] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        signer = _parse_line(path, lineno, line, problems)
        if signer is not None:
            signers.append(signer)
    if problems:
        raise HarnessInputError(problems)
    return AllowedSigners(path, tuple(signers))


# ---------------------------------------------------------------- verification


def _unpack(signature_b64: str) -> tuple[bytes, bytes]:
    """(public key blob, raw ed25519 signature) of an SSHSIG blob in our namespace; ValueError if it is not one."""
    try:
        blob = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64 ({exc})") from None
    if not blob.startswith(_MAGIC) or len(blob) < 10:
        raise ValueError("not an SSHSIG signature")
    (version,) = struct.unpack(">I", blob[6:10])
    if version != 1:
        raise ValueError(f"SSHSIG version {version}")
    pub, at = _read_string(blob, 10)
    namespace, at = _read_string(blob, at)
    _reserved, at = _read_string(blob, at)
    algorithm, at = _read_string(blob, at)
    sig, at = _read_string(blob, at)
    if at != len(blob):
        raise ValueError("trailing bytes")
    if namespace != NAMESPACE.encode():
        raise ValueError(f"made for namespace {namespace.decode(errors='replace')!r}, not {NAMESPACE}")
    if algorithm != _HASH.encode():
        raise ValueError(f"hash {algorithm.decode(errors='replace')!r}, expected {_HASH}")
    sig_type, rest = _read_string(sig, 0)
    raw, end = _read_string(sig, rest)
    if sig_type != KEY_TYPE.encode() or end != len(sig):
        raise ValueError("not an ed25519 signature")
    return pub, raw


def check_signature(
    message: bytes,
    signature_b64: object,
    key_fingerprint: object,
    principal: str,
    at: datetime | None,
    signers: AllowedSigners | None,
) -> tuple[Status, str]:
    """The status of one entry's signature, and a sentence saying why."""
    if signature_b64 is None:
        return "unsigned", "no signature"
    if not isinstance(signature_b64, str) or not isinstance(key_fingerprint, str):
        return "bad signature", "the signature or key_fingerprint field is not text"
    if signers is None:
        raise ValueError("signed entries need the allowed signers")
    lines = signers.lines_for(key_fingerprint)
    if not lines:
        return "unknown signer", f"key {key_fingerprint} is not in {signers.path}"
    try:
        pub, raw = _unpack(signature_b64)
    except ValueError as exc:
        return "bad signature", f"the signature is malformed: {exc}"
    if pub != public_blob(lines[0].key):
        return "bad signature", f"the signature was made with another key than the recorded {key_fingerprint}"
    try:
        lines[0].key.verify(raw, _signed_data(message, NAMESPACE))
    except InvalidSignature:
        return "bad signature", f"does not verify with key {key_fingerprint}: the entry was changed after it was signed"
    why = signers.authorise(key_fingerprint, principal, at)
    if why:
        return "unknown signer", why
    return "valid", f"signed by {principal} with {key_fingerprint}"
