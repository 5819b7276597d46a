import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from server.pki import PKIError, init_ca, main, server_cert, site_key, site_public_keys


@pytest.fixture
def pki(tmp_path):
    init_ca(tmp_path, days=30)
    server_cert(tmp_path, ["superlink.example.org", "localhost"], ["127.0.0.1"], days=10)
    site_key(tmp_path, "hospital-a")
    return tmp_path


def test_chain_verifies_and_sans_present(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "superlink.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 9 <= days <= 10


def test_private_keys_are_0600_and_site_key_is_openssh_p384(pki):
    for path in (pki / "ca.key", pki / "superlink.key", pki / "sites" / "hospital-a" / "auth.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key = load_ssh_private_key((pki / "sites" / "hospital-a" / "auth.key").read_bytes(), password=None)
    assert isinstance(key.curve, ec.SECP384R1)
    pub = load_ssh_public_key((pki / "sites" / "hospital-a" / "auth.pub").read_bytes())
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert set(site_public_keys(pki)) == {"hospital-a"}


def test_never_overwritten_without_force(pki):
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite"):
        init_ca(pki)
    with pytest.raises(PKIError, match="refusing to overwrite"):
        site_key(pki, "hospital-a")
    assert (pki / "ca.key").read_bytes() == before
    init_ca(pki, force=True)
    assert (pki / "ca.key").read_bytes() != before


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: server_cert(d, ["bad name!"], []), "invalid DNS name"),
        (lambda d: server_cert(d, [], ["300.1.1.1"]), "invalid IP"),
        (lambda d: server_cert(d, [], []), "at least one"),
        (lambda d: site_key(d, "../evil"), "invalid site name"),
        (lambda d: init_ca(d / "x", days=0), "between 1 and 3650"),
    ],
)
def test_bad_input(pki, call, match):
    with pytest.raises(PKIError, match=match):
        call(pki)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["server-cert", "--dir", str(tmp_path), "--dns", "a.org"]) == 2
    assert "ca.crt" in capsys.readouterr().err
    assert main(["init-ca", "--dir", str(tmp_path)]) == 0
    assert main(["site-key", "--dir", str(tmp_path), "--site", "s1", "--site", "s2"]) == 0
    assert "flwr supernode register" in capsys.readouterr().out
