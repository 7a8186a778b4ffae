"""Make a private CA and one certificate for a Dask cluster's TLS (``python -m pipeline.cluster.certs DIR``).

Dask's TLS is mutual: the scheduler, every worker and every client present a
certificate signed by the CA the others trust (``--tls-ca-file``). Dask does not
check host names, so one certificate can serve every process of a small cluster;
give each role its own (run this once per role, reusing the CA) where that matters.

Existing files are never replaced silently: a new CA would stop every process
that trusts the old one from talking to the cluster. ``--force`` replaces them.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

#: What :func:`make_certificates` writes into its folder.
FILE_NAMES = ("ca.pem", "cert.pem", "key.pem", "ca-key.pem")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a CA certificate, and of a certificate and key it signed (PEM)."""

    ca_file: Path
    cert: Path
    key: Path


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]):  # type: ignore[no-untyped-def]
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a replaced file (--force) keeps its old mode otherwise
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make_certificates(folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365, *, force: bool = False) -> TlsFiles:
    """Write ``ca.pem`` (CA certificate), ``cert.pem`` and ``key.pem`` (signed by it) into ``folder``.

    The CA's own key is written too (``ca-key.pem``) so that more certificates can
    be signed later by ``openssl x509 -req -CA ca.pem -CAkey ca-key.pem``; keep it
    off the cluster's machines. Refuses (before writing anything) when one of the
    files exists, unless ``force``.
    """
    existing = [folder / name for name in FILE_NAMES if (folder / name).exists()]
    if existing and not force:
        raise PipelineError(f"{existing[0]} exists: a new CA would break the cluster that trusts it (--force replaces it)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("taxi-pipeline dask CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dask"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        # Every Dask process is both a TLS server and a TLS client.
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(cert.public_bytes(pem))
    no_password = serialization.NoEncryption()
    _write_private(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password))
    _write_private(folder / "ca-key.pem", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password))
    return files


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipeline.cluster.certs [DIR] [--host H ...] [--force]``: print the three flags to use."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.cluster.certs", description=main.__doc__)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("certs"), help="[default: certs, which git ignores]")
    parser.add_argument(
        "--host", action="append", help="host name or IP the certificate names (repeatable) [default: 127.0.0.1, localhost]"
    )
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--force", action="store_true", help="replace existing files (and so the CA: reissue every certificate)")
    args = parser.parse_args(argv)
    try:
        files = make_certificates(args.folder, tuple(args.host or ("127.0.0.1", "localhost")), args.days, force=args.force)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"--tls-ca-file {files.ca_file} --tls-cert {files.cert} --tls-key {files.key}")


if __name__ == "__main__":
    main()
