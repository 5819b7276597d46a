"""The coordinator's PKI, the hospitals' own keys, and the site registry (key -> site -> domain)."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519

import uharmony.files
from client.daemon import main as site_main
from client.keys import generate_node_key
from server.coordinator import main as coordinator_main
from server.pki import PKIError, init_ca, load_signing_key, main, server_cert
from server.registry import RegistryError, SiteRegistry


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
    init_ca(other)
    (pki / "ca.key").write_bytes((other / "ca.key").read_bytes())  # a key that does not belong to ca.crt
    with pytest.raises(PKIError, match="does not belong"):
        server_cert(pki, ["a.org"], [], force=True)


def test_half_a_ca_is_refused(tmp_path):
    init_ca(tmp_path)
    (tmp_path / "ca.key").unlink()  # ca.crt alone: a new key would not match it
    with pytest.raises(PKIError, match="ca.crt exists"):
        init_ca(tmp_path)


def test_private_keys_are_0600_from_their_first_byte(pki, tmp_path, monkeypatch):
    for name in ("ca.key", "superlink.key", "signing.key"):
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
    assert isinstance(load_signing_key(pki), ed25519.Ed25519PrivateKey)
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


def test_cli_errors_name_the_problem_without_decoration(tmp_path, capsys):
    assert main(["server-cert", "--dir", str(tmp_path), "--dns", "a.org"]) == 2
    assert "ca.crt" in capsys.readouterr().err
    assert main(["init-ca", "--dir", str(tmp_path)]) == 0
    assert "NOT encrypted" in capsys.readouterr().out
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


@pytest.mark.parametrize(
    "text", ["ssh-foo AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "nonsense"]
)
def test_a_key_of_an_unknown_or_broken_kind_is_a_registry_error(text):
    from server.registry import RegistryError, node_public_key

    with pytest.raises(RegistryError, match="not an OpenSSH or PEM public key"):
        node_public_key(text)
