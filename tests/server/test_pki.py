"""The coordinator's PKI, the hospitals' own keys, and the site registry (key -> site -> domain)."""

import base64
import hashlib
import ipaddress
import json
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519

import uharmony.files
from client.keys import generate_node_key
from client.site_cli import main as site_main
from server.operator.coordinator import main as coordinator_main
from server.operator.pki import PKIError, init_ca, main, server_cert
from server.registry import RegistryError, SiteRegistry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path):
    init_ca(tmp_path, days=30, passphrase=b"correct horse")
    server_cert(tmp_path, ["superlink.example.org"], ["10.0.0.5"], days=10, passphrase=b"correct horse")
    return tmp_path


def test_chain_verifies_and_the_loopback_names_are_always_there(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "superlink.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("10.0.0.5", "127.0.0.1")]
    assert 9 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 10


def test_the_ca_key_is_encrypted_and_must_match_the_certificate(pki, tmp_path_factory):
    assert b"ENCRYPTED" in (pki / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="encrypted: give its passphrase"):
        server_cert(pki, ["a.org"], [], force=True)
    with pytest.raises(PKIError, match="wrong passphrase"):
        server_cert(pki, ["a.org"], [], force=True, passphrase=b"wrong")
    other = tmp_path_factory.mktemp("other")
    init_ca(other, passphrase=b"another passphrase")
    (pki / "ca.key").write_bytes((other / "ca.key").read_bytes())  # a key that does not belong to ca.crt
    with pytest.raises(PKIError, match="does not belong"):
        server_cert(pki, ["a.org"], [], force=True, passphrase=b"another passphrase")


def test_half_a_ca_is_refused(tmp_path):
    init_ca(tmp_path, passphrase=b"correct horse")
    (tmp_path / "ca.key").unlink()  # ca.crt alone: a new key would not match it
    with pytest.raises(PKIError, match="ca.crt exists"):
        init_ca(tmp_path, passphrase=b"correct horse")


def test_private_keys_are_0600_from_their_first_byte(pki, tmp_path, monkeypatch):
    for name in ("ca.key", "superlink.key", "app-signing.key", "model-signing.key"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    modes = []
    real_replace = uharmony.files.os.replace

    def spy(src, dst):  # the temporary file's mode just before it becomes the key
        modes.append(stat.S_IMODE(uharmony.files.os.stat(src).st_mode))
        return real_replace(src, dst)

    monkeypatch.setattr(uharmony.files.os, "replace", spy)
    generate_node_key(tmp_path / "site", "hospital-a")
    assert modes[0] == 0o600


def test_the_signing_key_and_the_trusted_entities_file_flower_reads(pki):
    from server.operator.pki import load_app_signing_key

    assert isinstance(load_app_signing_key(pki, b"correct horse"), ed25519.Ed25519PrivateKey)
    entities = _try_obtain_trusted_entities(pki / "trusted-entities.yaml")
    _validate_public_keys_ed25519(entities)  # Flower's own check of the SuperNode's --trusted-entities
    assert list(entities.values())[0].startswith("ssh-ed25519 ")


def test_a_hospital_makes_its_own_key(tmp_path, capsys):
    assert site_main(["keygen", "--dir", str(tmp_path), "--site-id", "hospital-a"]) == 0
    key = load_ssh_private_key((tmp_path / "auth.key").read_bytes(), password=None)
    assert isinstance(key.curve, ec.SECP384R1) and stat.S_IMODE((tmp_path / "auth.key").stat().st_mode) == 0o600
    pub = load_ssh_public_key((tmp_path / "auth.pub").read_bytes())
    assert pub.public_numbers() == key.public_key().public_numbers()
    before = (tmp_path / "auth.key").read_bytes()
    assert site_main(["keygen", "--dir", str(tmp_path)]) == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "auth.key").read_bytes() == before


def test_the_registry_binds_a_key_to_one_site_and_domain(tmp_path):
    keys = {s: generate_node_key(tmp_path / s)[1].read_text() for s in ("a", "b")}
    reg = SiteRegistry(tmp_path / "registry.json")
    reg.add("hospital-a", 0, keys["a"])
    reg.add("hospital-b", 1, keys["b"])
    pem = load_ssh_public_key(keys["a"].encode()).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert SiteRegistry(tmp_path / "registry.json").lookup(pem).site == "hospital-a"  # Flower's NodeInfo is PEM
    with pytest.raises(RegistryError, match="already registered for site 'hospital-a'"):
        reg.add("hospital-c", 2, keys["a"])
    with pytest.raises(RegistryError, match="site name"):
        reg.add("../evil", 0, keys["b"])
    with pytest.raises(RegistryError, match="domain"):
        reg.add("hospital-d", -1, keys["b"])
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    with pytest.raises(RegistryError, match="P-384"):
        reg.add("hospital-e", 0, ed.decode())
    reg.revoke("hospital-a")
    assert SiteRegistry(tmp_path / "registry.json").lookup(keys["a"]) is None


def test_cli_errors_name_the_problem_without_decoration(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UHARMONY_CA_PASSPHRASE", raising=False)
    (tmp_path / "pass").write_text("correct horse\n")
    assert (
        main(["server-cert", "--dir", str(tmp_path), "--dns", "a.org", "--passphrase-file", str(tmp_path / "pass")])
        == 2
    )
    assert "ca.crt" in capsys.readouterr().err
    assert main(["init-ca", "--dir", str(tmp_path)]) == 2  # no passphrase, no terminal: the keys stay unmade
    assert "needs the PKI passphrase" in capsys.readouterr().err and not (tmp_path / "ca.key").exists()
    assert (
        coordinator_main(
            [
                "register",
                "--state",
                str(tmp_path / "state"),
                "--site",
                "s1",
                "--domain",
                "0",
                "--public-key",
                str(tmp_path / "missing.pub"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing.pub" in err and "│" not in err and "─" not in err


def test_a_missing_ca_pass_file_says_what_it_is_and_how_to_make_it(tmp_path, capsys, monkeypatch):
    """Issue 31 item 11 ("ca-pass explained"): the README's `--passphrase-file ca-pass` names a file the user makes
    first; the error for a missing one says so and gives the command, which then works."""
    monkeypatch.delenv("UHARMONY_CA_PASSPHRASE", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["init-ca", "--dir", "pki", "--passphrase-file", "ca-pass", "--days", "30"]
    assert main(args) == 2 and not Path("pki/ca.key").exists()
    err = capsys.readouterr().err
    assert "ca-pass: no such passphrase file" in err and "a file you create first" in err
    command = err.split("`")[1]
    assert command == "(umask 077; openssl rand -base64 24 > ca-pass)"
    if shutil.which("openssl"):  # the advice, followed as written
        subprocess.run(["bash", "-c", command], check=True)
        assert stat.S_IMODE(Path("ca-pass").stat().st_mode) == 0o600
        assert main(args) == 0 and Path("pki/ca.key").exists()


@pytest.mark.parametrize(
    "text", ["ssh-foo AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "nonsense"]
)
def test_a_key_of_an_unknown_or_broken_kind_is_a_registry_error(text):
    from server.registry import RegistryError, node_public_key

    with pytest.raises(RegistryError, match="not an OpenSSH or PEM public key"):
        node_public_key(text)


def _publish(tmp_path, pki, passphrase_file):
    from server.operator.coordinator import main as coordinator

    args = ["publish", "--pki", str(pki), "--state", str(tmp_path / "state"), "--app", str(REPO)]
    return coordinator(args + (["--passphrase-file", str(passphrase_file)] if passphrase_file else []))


def test_the_app_signing_key_is_encrypted_and_not_the_model_key(tmp_path, capsys, monkeypatch):
    """F1 (red-team review 2026-12-06): ``signing.key`` signed both the apps hospitals run and the models, was
    stored unencrypted and was readable by whatever ran as the coordinator (a ServerApp of any app). Now the
    app-signing key is encrypted at rest, ``publish`` needs its passphrase, the key the ServerApp gets is a
    separate model-signing key that is not in ``trusted-entities.yaml``, and the registry serves only apps
    signed with the app-signing key."""
    monkeypatch.delenv("UHARMONY_CA_PASSPHRASE", raising=False)
    pki, secret = tmp_path / "pki", tmp_path / "pass"
    secret.write_text("correct horse battery\n")
    assert main(["init-ca", "--dir", str(pki), "--passphrase-file", str(secret)]) == 0
    app_key = (pki / "app-signing.key").read_bytes()
    for password in (None, b"wrong passphrase"):
        with pytest.raises((TypeError, ValueError)):
            load_pem_private_key(app_key, password)
    trusted = _try_obtain_trusted_entities(pki / "trusted-entities.yaml")
    app_pub = (pki / "app-signing.pub").read_text().split()[:2]
    assert list(trusted.values()) == [" ".join(app_pub)]

    from flwr.common.config import parse_config_args

    from server.operator.coordinator import server_app_config

    given = parse_config_args([server_app_config(pki, tmp_path / "state")])["model-signing-key"]  # what `run` passes
    model = load_ssh_private_key(Path(given).read_bytes(), None)
    model_pub = model.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    assert model_pub.split()[1] not in str(trusted)  # it cannot sign an app a hospital runs

    assert _publish(tmp_path, pki, None) == 2  # no passphrase (no terminal): nothing is signed
    assert "passphrase" in capsys.readouterr().err
    (tmp_path / "wrong").write_text("not the passphrase\n")
    assert _publish(tmp_path, pki, tmp_path / "wrong") == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert _publish(tmp_path, pki, secret) == 0

    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    from server.operator import app_registry

    record = app_registry.latest(tmp_path / "state")
    fab = (tmp_path / "state" / "apps" / f"{record['sha256']}.fab").read_bytes()
    assert _verify_fab(Fab(record["sha256"], fab, _flower_verifications(record)), trusted)  # a SuperNode's check

    # a record signed with the model key (all a ServerApp could get hold of) is planted: it is not served
    forged = dict(record, verifications=[_sign(model, fab)], version="9.9.9")
    (tmp_path / "state" / "apps" / "forged.json").write_text(json.dumps(forged))
    assert not _verify_fab(Fab(record["sha256"], fab, _flower_verifications(forged)), trusted)
    key = app_registry.app_public_key(pki)
    assert [r["version"] for r in app_registry.published(tmp_path / "state", key)] == [record["version"]]
    server = app_registry.serve(tmp_path / "state", 0, key)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hub/fetch-fab"
        for version, status in ((record["version"], 200), ("9.9.9", 404)):
            body = json.dumps({"app_id": record["app_id"], "app_version": version}).encode()
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                assert urllib.request.urlopen(request, timeout=10).status == status
            except urllib.error.HTTPError as exc:
                assert exc.code == status
        # a negative or oversized Content-Length is a bad request, answered at once (-1 read to the stream's end)
        import http.client

        for length in ("-1", "70000"):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
            conn.putrequest("POST", "/hub/fetch-fab")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            assert conn.getresponse().status == 400
            conn.close()
    finally:
        server.shutdown()


def _sign(key, fab: bytes) -> dict:
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    from server.operator.pki import public_key_id

    pub = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    digest, signed_at = hashlib.sha256(fab).hexdigest(), int(time.time())
    signature = key.sign(create_message_to_sign(bytes.fromhex(digest), signed_at))
    return {
        "public_key_id": public_key_id(pub),
        "signature": base64.urlsafe_b64encode(signature).decode().rstrip("="),
        "signed_at": signed_at,
    }


def _flower_verifications(record: dict) -> dict:
    """The verification dict the SuperLink attaches to a FAB fetched from a hub (control_handlers)."""
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    return _format_verification(record["verifications"])
