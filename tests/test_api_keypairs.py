"""``/os-keypairs`` as Nova: import and generate, list with paging, show, delete, per
microversion; per-user isolation; key_name on server create."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
TOKENS = ["admin-t:root:p1:admin", "alice-t:alice:p1:member", "bob-t:bob:p1:member"]


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))


def h(token: str, version: str = "2.1") -> dict[str, str]:
    return {"X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"}


def ssh_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return f"{public} alice@laptop"


def certificate() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    digest = cert.fingerprint(hashes.SHA1()).hex()
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))


def create(client: ApiClient, token: str, version: str, status: int = 200,
           **keypair: Any) -> dict[str, Any]:
    r = client.post("/v2.1/os-keypairs", json={"keypair": keypair}, headers=h(token, version))
    assert r.status_code == status, r.text
    return dict(r.json())


@pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                    reason="ssh-keygen is not installed (Debian: openssh-client)")
def test_generate_at_2_1_and_its_private_key_is_recorded_nowhere(
        client: ApiClient, memory_engine: Engine, tmp_path: Path) -> None:
    made = create(client, "alice-t", "2.1", name="gen")["keypair"]
    assert set(made) == {"name", "public_key", "fingerprint", "user_id", "private_key"}
    assert made["user_id"] == "alice" and made["public_key"].startswith("ssh-rsa ")
    # the private key matches the public one, and ssh-keygen agrees on the fingerprint
    private = serialization.load_pem_private_key(made["private_key"].encode(), None)
    assert made["public_key"].split()[1] in private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path = tmp_path / "gen.pub"
    path.write_text(made["public_key"] + "\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-E", "md5", "-f", str(path)],
                           capture_output=True, text=True, check=True).stdout
    assert f"MD5:{made['fingerprint']}" in shown
    secret = made["private_key"].splitlines()[1]
    dumped = memory_engine.view.query("SELECT state FROM stored_events")
    assert all(secret.encode() not in bytes(row["state"]) for row in dumped)


def test_import_list_show_delete_across_microversions(client: ApiClient) -> None:
    public = ssh_public_key()
    blob = base64.b64decode(public.split()[1])
    expected = ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())
    made = create(client, "alice-t", "2.2", status=201, name="laptop",
                  public_key=public)["keypair"]
    assert made == {"name": "laptop", "public_key": public, "fingerprint": expected,
                    "user_id": "alice", "type": "ssh"}
    pem, cert_fingerprint = certificate()
    cert = create(client, "alice-t", "2.2", status=201, name="cert", public_key=pem,
                  type="x509")["keypair"]
    assert cert["type"] == "x509" and cert["fingerprint"] == cert_fingerprint

    listed = client.get("/v2.1/os-keypairs", headers=h("alice-t")).json()["keypairs"]
    assert [k["keypair"]["name"] for k in listed] == ["cert", "laptop"]
    assert set(listed[1]["keypair"]) == {"name", "public_key", "fingerprint"}
    listed = client.get("/v2.1/os-keypairs", headers=h("alice-t", "2.2")).json()["keypairs"]
    assert listed[1]["keypair"]["type"] == "ssh"

    shown = client.get("/v2.1/os-keypairs/laptop", headers=h("alice-t", "2.2")).json()
    detail = shown["keypair"]
    assert detail["user_id"] == "alice" and detail["deleted"] is False
    assert isinstance(detail["id"], int) and detail["created_at"]
    assert detail["updated_at"] is None and detail["deleted_at"] is None

    # bob has his own namespace: alice's key pairs are not found for him
    assert client.get("/v2.1/os-keypairs", headers=h("bob-t")).json() == {"keypairs": []}
    r = client.get("/v2.1/os-keypairs/laptop", headers=h("bob-t"))
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Keypair laptop not found for user bob"
    create(client, "bob-t", "2.2", status=201, name="laptop", public_key=public)

    r = client.post("/v2.1/os-keypairs", json={"keypair": {"name": "laptop",
                                                           "public_key": public}},
                    headers=h("alice-t", "2.2"))
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == "Key pair 'laptop' already exists."

    assert client.delete("/v2.1/os-keypairs/cert", headers=h("alice-t")).status_code == 202
    assert client.delete("/v2.1/os-keypairs/laptop",
                         headers=h("alice-t", "2.2")).status_code == 204
    assert client.delete("/v2.1/os-keypairs/laptop",
                         headers=h("alice-t", "2.2")).status_code == 404
    # the name can be used again
    create(client, "alice-t", "2.2", status=201, name="laptop", public_key=public)


@pytest.mark.parametrize(("version", "keypair", "message"), [
    ("2.1", {"name": "k", "public_key": "ssh-rsa not-base64"},
     "Keypair data is invalid: failed to generate fingerprint"),
    ("2.2", {"name": "k", "public_key": "-----BEGIN CERTIFICATE-----\nAAAA\n", "type": "x509"},
     "Keypair data is invalid: failed to generate fingerprint"),
    ("2.1", {"name": ""}, "name"),
    ("2.1", {"name": " lead"}, "does not match"),
    ("2.1", {"name": "a@b"}, "does not match"),
    ("2.1", {"name": "k", "type": "ssh"}, "Additional properties are not allowed"),
    ("2.2", {"name": "k", "type": "gpg"}, "is not one of"),
    ("2.2", {"name": "k", "user_id": "bob"}, "Additional properties are not allowed"),
    ("2.92", {"name": "k"}, "'public_key' is a required property"),
    ("2.2", {"name": "k", "type": "x509"}, "Generating x509 key pairs is not supported"),
])
def test_bad_requests_are_400(client: ApiClient, version: str, keypair: dict[str, Any],
                              message: str) -> None:
    r = client.post("/v2.1/os-keypairs", json={"keypair": keypair}, headers=h("alice-t",
                                                                                version))
    assert r.status_code == 400, r.text
    assert message in r.json()["badRequest"]["message"]
    assert client.get("/v2.1/os-keypairs", headers=h("alice-t")).json() == {"keypairs": []}


def test_names_with_at_from_2_92(client: ApiClient) -> None:
    made = create(client, "alice-t", "2.92", status=201, name="alice@laptop",
                  public_key=ssh_public_key())
    assert made["keypair"]["name"] == "alice@laptop"


def test_admins_manage_other_users_key_pairs_from_2_10(client: ApiClient) -> None:
    public = ssh_public_key()
    made = create(client, "admin-t", "2.10", status=201, name="for-bob", public_key=public,
                  user_id="bob")["keypair"]
    assert made["user_id"] == "bob"
    names = client.get("/v2.1/os-keypairs", headers=h("bob-t")).json()["keypairs"]
    assert [k["keypair"]["name"] for k in names] == ["for-bob"]
    listed = client.get("/v2.1/os-keypairs?user_id=bob", headers=h("admin-t", "2.10"))
    assert [k["keypair"]["name"] for k in listed.json()["keypairs"]] == ["for-bob"]
    r = client.get("/v2.1/os-keypairs?user_id=bob", headers=h("alice-t", "2.10"))
    assert r.status_code == 403
    r = client.post("/v2.1/os-keypairs", json={"keypair": {
        "name": "x", "public_key": public, "user_id": "bob"}}, headers=h("alice-t", "2.10"))
    assert r.status_code == 403
    assert client.delete("/v2.1/os-keypairs/for-bob?user_id=bob",
                         headers=h("admin-t", "2.10")).status_code == 204
    assert client.get("/v2.1/os-keypairs", headers=h("bob-t")).json() == {"keypairs": []}


def test_paging_from_2_35(client: ApiClient) -> None:
    public = ssh_public_key()
    for name in ("a", "b", "c"):
        create(client, "alice-t", "2.2", status=201, name=name, public_key=public)
    page = client.get("/v2.1/os-keypairs?limit=2", headers=h("alice-t", "2.35")).json()
    assert [k["keypair"]["name"] for k in page["keypairs"]] == ["a", "b"]
    assert page["keypairs_links"][0]["href"].endswith("os-keypairs?limit=2&marker=b")
    rest = client.get("/v2.1/os-keypairs?limit=2&marker=b", headers=h("alice-t", "2.35"))
    assert [k["keypair"]["name"] for k in rest.json()["keypairs"]] == ["c"]
    assert "keypairs_links" not in rest.json()
    r = client.get("/v2.1/os-keypairs?marker=zz", headers=h("alice-t", "2.35"))
    assert r.status_code == 400
    # before 2.35 the paging parameters are not part of the API
    old = client.get("/v2.1/os-keypairs?limit=1", headers=h("alice-t", "2.34")).json()
    assert len(old["keypairs"]) == 3 and "keypairs_links" not in old


def test_key_pairs_per_user_are_held_to_the_quota(client: ApiClient, memory_engine: Engine) -> None:
    assert memory_engine.quota_limits("p1")["key_pairs"] == 100  # Nova's default
    memory_engine.set_quotas("p1", {"key_pairs": 2}, ctx=memory_engine.context(is_admin=True))
    public = ssh_public_key()
    for name in ("a", "b"):
        create(client, "alice-t", "2.2", status=201, name=name, public_key=public)
    r = client.post("/v2.1/os-keypairs", json={"keypair": {"name": "c", "public_key": public}},
                    headers=h("alice-t", "2.2"))
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == "Quota exceeded, too many key pairs."
    create(client, "bob-t", "2.2", status=201, name="c", public_key=public)


def test_a_server_key_name_is_one_of_the_users_key_pairs(client: ApiClient,
                                                         memory_engine: Engine) -> None:
    create(client, "alice-t", "2.2", status=201, name="mine", public_key=ssh_public_key())
    server = {"name": "vm", "flavorRef": "1", "imageRef": IMAGE, "key_name": "mine"}
    r = client.post("/v2.1/servers", json={"server": server}, headers=h("alice-t"))
    assert r.status_code == 202, r.text
    memory_engine.run_until_idle()
    sid = r.json()["server"]["id"]
    assert client.get(f"/v2.1/servers/{sid}", headers=h("alice-t")).json()[
        "server"]["key_name"] == "mine"
    # bob cannot use alice's key pair, nor a name nobody has
    for token, name in (("bob-t", "mine"), ("alice-t", "nobodys")):
        r = client.post("/v2.1/servers", json={"server": {**server, "key_name": name}},
                        headers=h(token))
        assert r.status_code == 400
        assert r.json()["badRequest"]["message"] == "Invalid key_name provided."


def test_key_pair_events_are_in_the_ledger(client: ApiClient, memory_engine: Engine) -> None:
    create(client, "alice-t", "2.2", status=201, name="k", public_key=ssh_public_key())
    client.delete("/v2.1/os-keypairs/k", headers=h("alice-t", "2.2"))
    report = memory_engine.verify()
    assert report.ok
    topics = [r["topic"] for r in memory_engine.view.query("SELECT topic FROM stored_events")]
    assert [t.rsplit(".", 1)[-1] for t in topics if "Keypair" in t] == ["Imported", "Deleted"]
