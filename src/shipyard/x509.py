"""Just enough X.509 DER reading for what a deploy must know of a certificate: its validity
window and the names it is for.

The standard library verifies certificates but does not parse them (outside a private test
hook), and `cryptography` is a test dependency only; the fields needed are few and at fixed
places in the TBSCertificate, so they are read here. Anything unexpected is a ValueError."""

from __future__ import annotations

import calendar
from dataclasses import dataclass

_SAN_OID = bytes.fromhex("551d11")          # 2.5.29.17 subjectAltName
_CN_OID = bytes.fromhex("550403")           # 2.5.4.3 commonName


@dataclass(frozen=True)
class CertFields:
    not_before: float
    """Unix time."""
    not_after: float
    common_name: str | None
    dns_names: tuple[str, ...]
    """subjectAltName DNS entries, then IP addresses as text."""


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 0 < n <= 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, s, e = _tlv(data, start)
        out.append((tag, s, e))
        start = e
    return out


def _time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if not text.endswith("Z"):
        raise ValueError("certificate time is not in UTC")
    if tag == 0x17:      # UTCTime YYMMDDHHMMSSZ: years 50..99 are 19xx (RFC 5280 4.1.2.5.1)
        yy = int(text[:2])
        text = ("19" if yy >= 50 else "20") + text
    elif tag != 0x18:    # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("unknown time type")
    y, mo, d, h, mi, s = (int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)))
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def _common_name(data: bytes, start: int, end: int) -> str | None:
    for _set, s, e in _children(data, start, end):
        for _seq, s2, e2 in _children(data, s, e):
            (_t, os_, oe), (_vt, vs, ve) = _children(data, s2, e2)[:2]
            if data[os_:oe] == _CN_OID:
                return data[vs:ve].decode("utf-8", "replace")
    return None


def _san(data: bytes, start: int, end: int) -> tuple[str, ...]:
    names = []
    for tag, s, e in _children(data, start, end):
        if tag == 0x82:                       # dNSName [2]
            names.append(data[s:e].decode("ascii", "replace"))
        elif tag == 0x87 and e - s == 4:      # iPAddress [7], IPv4
            names.append(".".join(str(b) for b in data[s:e]))
        elif tag == 0x87 and e - s == 16:
            import ipaddress
            names.append(str(ipaddress.IPv6Address(data[s:e])))
    return tuple(names)


def read_fields(der: bytes) -> CertFields:
    """The validity and names of one DER certificate; ValueError if it is not one."""
    _tag, s, e = _tlv(der, 0)
    tbs_tag, ts, te = _children(der, s, e)[0]
    if tbs_tag != 0x30:
        raise ValueError("not a certificate")
    parts = _children(der, ts, te)
    if parts and parts[0][0] == 0xA0:        # [0] version
        parts = parts[1:]
    # serial, signature algorithm, issuer, validity, subject, subjectPublicKeyInfo, [extensions]
    if len(parts) < 6:
        raise ValueError("not a certificate")
    _vt, vs, ve = parts[3]
    (nb_tag, nbs, nbe), (na_tag, nas, nae) = _children(der, vs, ve)[:2]
    cn = _common_name(der, parts[4][1], parts[4][2])
    dns: tuple[str, ...] = ()
    for tag, xs, _xe in parts[6:]:
        if tag != 0xA3:                       # [3] extensions
            continue
        _seq, ls, le = _tlv(der, xs)
        for _ext, es, ee in _children(der, ls, le):
            fields = _children(der, es, ee)
            if der[fields[0][1]:fields[0][2]] == _SAN_OID:
                _os, octs, octe = fields[-1]
                _st, ss, se = _tlv(der, octs)
                dns = _san(der, ss, se)
    return CertFields(_time(nb_tag, der[nbs:nbe]), _time(na_tag, der[nas:nae]), cn, dns)
