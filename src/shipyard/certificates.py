"""A service's TLS certificate: read and checked at plan/deploy time, then installed.

Everything that can make the data plane fail to serve a certificate is found here, before
anything changes: a file that cannot be read or is not PEM, an encrypted key (a router
restarted at 3 AM cannot ask for its passphrase), a key that does not belong to the
certificate, a certificate that has expired or is not valid yet. What passes is copied into
the state directory under its SHA-256 fingerprint (mode 0600), so the router serves the very
bytes that were checked, whatever later happens to the user's files; the files a service
serves are recorded in `<state>/tls/<service>.json`. Used by the engine and by any router
adapter (the embedded data plane builds an ssl.SSLContext from the installed files, HAProxy
would point `crt` at them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import CertificateError
from shipyard.fsutil import write_atomic
from shipyard.x509 import read_fields

EXPIRY_WARNING_DAYS = 14
"""A certificate that expires sooner than this is served, with a warning on plan and deploy."""

_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_KEY_RE = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----")


@dataclass(frozen=True)
class Certificate:
    """A checked certificate chain and its key, as read from the spec's files."""

    fingerprint: str
    """SHA-256 of the leaf certificate's DER, lower-case hex (what `openssl x509 -fingerprint
    -sha256` prints, without colons)."""
    not_before: float
    not_after: float
    names: tuple[str, ...]
    """subjectAltName entries, else the subject's common name."""
    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400


@dataclass(frozen=True)
class ServiceTls:
    """What a service's edge serves: the installed files and what is known of them."""

    fingerprint: str
    cert: str
    """Absolute path of the installed chain (mode 0600)."""
    key: str
    not_before: float
    not_after: float
    names: tuple[str, ...]
    redirect_http: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "names": list(self.names), "not_after_iso": iso(self.not_after)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceTls:
        return cls(str(d["fingerprint"]), str(d["cert"]), str(d["key"]), float(d["not_before"]),
                   float(d["not_after"]), tuple(str(n) for n in d.get("names") or ()),
                   d.get("redirect_http") or None)


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def read_pair(cert_path: Path, key_path: Path, now: float | None = None) -> Certificate:
    """Read and check a PEM chain and its key; CertificateError saying what is wrong otherwise."""
    now = time.time() if now is None else now
    chain = _read(cert_path, "certificate")
    key = _read(key_path, "key")
    blocks = _CERT_RE.findall(chain)
    if not blocks:
        raise CertificateError(f"tls.cert {cert_path} holds no PEM certificate",
                               "give the certificate chain in PEM form (-----BEGIN CERTIFICATE-----), "
                               "the server's own certificate first")
    try:
        der = ssl.PEM_cert_to_DER_cert(blocks[0].decode("ascii"))
        fields = read_fields(der)
    except (ValueError, UnicodeDecodeError) as e:
        raise CertificateError(f"tls.cert {cert_path}: the first certificate cannot be read ({e})",
                               "give the certificate chain in PEM form, the server's own certificate "
                               "first") from None
    kinds = _KEY_RE.findall(key)
    if not kinds:
        raise CertificateError(f"tls.key {key_path} holds no PEM private key",
                               "give the private key in PEM form (-----BEGIN PRIVATE KEY-----)")
    if kinds[0] == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in key:
        raise CertificateError(f"tls.key {key_path} is encrypted: the router could not start without "
                               "someone typing its passphrase",
                               f"decrypt it (openssl pkey -in {key_path} -out KEY) and keep the file "
                               "readable only by the daemon's user")
    _check_loads(cert_path, key_path, chain, key)
    fp = hashlib.sha256(der).hexdigest()
    if now < fields.not_before:
        raise CertificateError(f"tls.cert {cert_path} is not valid before {iso(fields.not_before)} "
                               f"(fingerprint {fp[:16]}...)",
                               "check the clock of this machine, or deploy once the certificate is valid")
    if now >= fields.not_after:
        raise CertificateError(f"tls.cert {cert_path} expired at {iso(fields.not_after)} "
                               f"(fingerprint {fp[:16]}...)", "renew the certificate and deploy again")
    names = fields.dns_names or ((fields.common_name,) if fields.common_name else ())
    return Certificate(fp, fields.not_before, fields.not_after, names, chain, key)


def expiry_warning(cert: Certificate, now: float | None = None) -> str | None:
    """A warning for a certificate that expires within EXPIRY_WARNING_DAYS, else None."""
    now = time.time() if now is None else now
    days = cert.days_left(now)
    if days >= EXPIRY_WARNING_DAYS:
        return None
    return (f"the TLS certificate for {', '.join(cert.names) or 'this service'} expires at "
            f"{iso(cert.not_after)} (in {days:.1f} days): renew it and deploy again")


def install(cert: Certificate, tls_dir: Path) -> tuple[Path, Path]:
    """Copy a checked pair into `tls_dir` as <fingerprint>.pem / .key (0600); the same
    certificate installed twice is written once. Returns the two paths."""
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = []
    for suffix, data in ((".pem", cert.chain_pem), (".key", cert.key_pem)):
        path = tls_dir / f"{cert.fingerprint}{suffix}"
        with contextlib.suppress(OSError):
            if path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o600:
                out.append(path)
                continue
        _write_private(path, data)
        out.append(path)
    return out[0], out[1]


def service_file(tls_dir: Path, service: str) -> Path:
    return tls_dir / f"{service}.json"


def load_service(tls_dir: Path, service: str) -> ServiceTls | None:
    """What `service` serves over TLS; None when it does not (or the record is unreadable)."""
    try:
        return ServiceTls.from_dict(json.loads(service_file(tls_dir, service).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_service(tls_dir: Path, service: str, tls: ServiceTls | None) -> None:
    """Record (or, with None, forget) what `service` serves over TLS."""
    path = service_file(tls_dir, service)
    if tls is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, json.dumps(tls.to_dict(), sort_keys=True).encode())


def pinned_client_context(tls: ServiceTls) -> ssl.SSLContext:
    """A client context that trusts exactly the installed leaf certificate, whatever name it is
    for: how the daemon's own requests through the router (preview checks, sent to the listen
    address, not to a public name) verify they reach shipyard's listener."""
    with open(tls.cert, encoding="ascii", errors="replace") as f:
        leaf = _CERT_RE.search(f.read().encode())
    if leaf is None:
        raise CertificateError(f"the installed certificate {tls.cert} holds no PEM certificate",
                               "deploy the service again to reinstall it")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False            # the anchor is the certificate itself, not a name in it
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=leaf.group(0).decode("ascii"))
    return ctx


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as e:
        raise CertificateError(f"cannot read the TLS {what} {path}: {e.strerror or e}",
                               f"check tls.{'cert' if what == 'certificate' else 'key'} in the spec "
                               "(paths are relative to the spec file) and that the daemon may read it") from None
    if len(data) > 1 << 20:
        raise CertificateError(f"the TLS {what} {path} is larger than 1 MiB: not a PEM {what}")
    return data


def _check_loads(cert_path: Path, key_path: Path, chain: bytes, key: bytes) -> None:
    """Load the pair the way the data plane will (from private copies, so what is checked is
    what was read); a key of another certificate is refused here."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_passphrase() -> bytes:
        raise CertificateError(f"tls.key {key_path} is encrypted", "decrypt it (openssl pkey)")

    with tempfile.TemporaryDirectory(prefix="shipyard-tls-") as tmp:
        c, k = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        _write_private(c, chain)
        _write_private(k, key)
        try:
            ctx.load_cert_chain(c, k, password=no_passphrase)
        except ssl.SSLError as e:
            if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
                raise CertificateError(f"tls.key {key_path} is not the key of the certificate in {cert_path}",
                                       "give the private key the certificate was issued for") from None
            raise CertificateError(f"tls.cert {cert_path} and tls.key {key_path} cannot be loaded: "
                                   f"{e.reason or e}", "give a PEM certificate chain and its PEM key") from None


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only from the first byte on."""
    write_atomic(path, data, mode=0o600, durable=True)
