"""certificates.py: what a deploy refuses, what it records, and what it installs."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import pytest

from shipyard.certificates import (
    ServiceTls,
    expiry_warning,
    install,
    load_service,
    pinned_client_context,
    read_pair,
    save_service,
)
from shipyard.errors import CertificateError, ShipyardError
from support.certs import TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def test_a_good_pair_is_read_with_its_fingerprint_validity_and_names(ca: TestCA) -> None:
    p = ca.issue("good", ("shop.example.test", "*.shop.example.test", "127.0.0.1"))
    c = read_pair(p.cert, p.key)
    assert c.fingerprint == p.fingerprint
    assert c.names == ("shop.example.test", "*.shop.example.test", "127.0.0.1")
    assert c.not_before < time.time() < c.not_after
    assert abs(c.not_after - (time.time() + 90 * 86400)) < 120
    assert expiry_warning(c) is None
    assert c.chain_pem == p.cert.read_bytes() and c.key_pem == p.key.read_bytes()


@pytest.mark.parametrize("case, expect", [
    ("expired", "expired at"),
    ("not_yet", "is not valid before"),
    ("mismatch", "is not the key of the certificate"),
    ("encrypted", "is encrypted"),
    ("missing_cert", "cannot read the TLS certificate"),
    ("missing_key", "cannot read the TLS key"),
    ("junk_cert", "holds no PEM certificate"),
    ("junk_key", "holds no PEM private key"),
    ("key_as_cert", "holds no PEM certificate"),
])
def test_what_cannot_be_served_is_refused_saying_what_is_wrong(ca: TestCA, tmp_path: Path, case: str,
                                                               expect: str) -> None:
    good = ca.issue(f"ok-{case}")
    cert, key = good.cert, good.key
    if case == "expired":
        bad = ca.issue("expired", not_before=dt.timedelta(days=-30), not_after=dt.timedelta(days=-1))
        cert, key = bad.cert, bad.key
    elif case == "not_yet":
        bad = ca.issue("later", not_before=dt.timedelta(days=1), not_after=dt.timedelta(days=30))
        cert, key = bad.cert, bad.key
    elif case == "mismatch":
        key = ca.issue("other").key
    elif case == "encrypted":
        bad = ca.issue("locked", passphrase=b"secret")
        cert, key = bad.cert, bad.key
    elif case == "missing_cert":
        cert = tmp_path / "nope.pem"
    elif case == "missing_key":
        key = tmp_path / "nope.key"
    elif case == "junk_cert":
        cert = tmp_path / "junk.pem"
        cert.write_text("not a certificate\n")
    elif case == "junk_key":
        key = tmp_path / "junk.key"
        key.write_text("not a key\n")
    elif case == "key_as_cert":
        cert = key
    with pytest.raises(CertificateError) as e:
        read_pair(cert, key)
    assert expect in e.value.message and e.value.hint
    assert isinstance(e.value, ShipyardError) and e.value.exit_code != 0


def test_a_certificate_close_to_expiry_is_served_with_a_warning(ca: TestCA) -> None:
    p = ca.issue("soon", not_after=dt.timedelta(days=5))
    c = read_pair(p.cert, p.key)
    w = expiry_warning(c)
    assert w is not None and "expires at" in w and ("in 5.0 days" in w or "in 4.9 days" in w)
    assert expiry_warning(c, now=c.not_after - 15 * 86400) is None


def test_install_copies_by_fingerprint_readable_by_the_owner_only(ca: TestCA, tmp_path: Path) -> None:
    p = ca.issue("inst")
    c = read_pair(p.cert, p.key)
    cert_path, key_path = install(c, tmp_path / "tls")
    assert cert_path == tmp_path / "tls" / f"{p.fingerprint}.pem" and key_path.name == f"{p.fingerprint}.key"
    assert cert_path.read_bytes() == p.cert.read_bytes() and key_path.read_bytes() == p.key.read_bytes()
    for f in (cert_path, key_path):
        assert f.stat().st_mode & 0o777 == 0o600
    before = key_path.stat().st_mtime_ns
    p.key.write_text("changed later by the user")       # the installed copy is what was checked
    assert install(c, tmp_path / "tls") == (cert_path, key_path)
    assert key_path.stat().st_mtime_ns == before and key_path.read_bytes() == c.key_pem


def test_the_service_record_round_trips_and_can_be_forgotten(tmp_path: Path) -> None:
    tls = ServiceTls("a" * 64, "/s/tls/a.pem", "/s/tls/a.key", 1.0, 2e9, ("shop.example.test",), "127.0.0.1:8081")
    save_service(tmp_path, "shop", tls)
    assert load_service(tmp_path, "shop") == tls
    assert (tmp_path / "shop.json").stat().st_mode & 0o777 == 0o600
    assert load_service(tmp_path, "other") is None
    save_service(tmp_path, "shop", None)
    assert load_service(tmp_path, "shop") is None


def test_the_pinned_context_trusts_exactly_the_installed_leaf(ca: TestCA, tmp_path: Path) -> None:
    p = ca.issue("pin", ("shop.example.test",))
    c = read_pair(p.cert, p.key)
    cert_path, key_path = install(c, tmp_path)
    ctx = pinned_client_context(ServiceTls(c.fingerprint, str(cert_path), str(key_path), c.not_before,
                                           c.not_after, c.names))
    assert ctx.cert_store_stats() == {"crl": 0, "x509": 1, "x509_ca": 0}   # the leaf alone, not the CA
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_an_rsa_pair_and_a_traditional_rsa_key_file_are_read_too(ca: TestCA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p = ca.issue("rsa", ("rsa.example.test",), key=key)  # type: ignore[arg-type]
    assert read_pair(p.cert, p.key).fingerprint == p.fingerprint
    traditional = tmp_path / "rsa.key"      # -----BEGIN RSA PRIVATE KEY-----
    traditional.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()))
    assert read_pair(p.cert, traditional).names == ("rsa.example.test",)
    locked = tmp_path / "rsa-locked.key"    # Proc-Type: 4,ENCRYPTED
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(CertificateError, match="is encrypted"):
        read_pair(p.cert, locked)
