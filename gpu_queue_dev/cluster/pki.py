"""The dev cluster's certificates, keys and kubeconfigs, all under ``<state dir>/pki``.

Two CAs: the cluster's (the API server's serving certificate and every client certificate: the
admin in ``system:masters``, and the service as its ServiceAccount's user name, since without a
controller-manager there are no service-account tokens), and the service's own (its serving
certificate; the webhooks' caBundle, the ``--ca`` of ``gpu-queue status``).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gpu_queue_dev.cluster.state import write_file
from webhook.certs import CertPair, make_ca, make_client_cert, make_serving_cert

ADMIN_USER = "gpu-queue-dev-admin"


@dataclass(frozen=True)
class Pki:
    """Where each file is; ``make_*`` write them."""

    dir: Path

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def cluster_ca(self) -> Path:
        return self.cert("cluster-ca")

    @property
    def webhook_ca(self) -> Path:
        return self.cert("webhook-ca")

    def write_pair(self, name: str, pair: CertPair) -> None:
        write_file(self.cert(name), pair.cert_pem)
        write_file(self.key(name), pair.key_pem, 0o600)

    def make_webhook_pki(self) -> bytes:
        """The service's CA and serving certificate (127.0.0.1, localhost); the CA's PEM."""
        ca = make_ca("gpu-queue-dev-webhook-ca")
        self.write_pair("webhook-ca", ca)
        self.write_pair("webhook-tls", make_serving_cert(ca, ["localhost"], ["127.0.0.1"]))
        return ca.cert_pem

    def make_cluster_pki(
        self,
        server: str,
        *,
        service_user: str,
        service_groups: Sequence[str],
        kubeconfig: Path,
        service_kubeconfig: Path,
    ) -> None:
        """The cluster CA, the API server's certificate and service-account key, the admin's and the
        service's client certificates, and a kubeconfig for each of the two."""
        cluster_ca = make_ca("gpu-queue-dev-cluster-ca")
        self.write_pair("cluster-ca", cluster_ca)
        serving = make_serving_cert(
            cluster_ca,
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ["127.0.0.1", "10.0.0.1"],
            common_name="kube-apiserver",
        )
        self.write_pair("apiserver", serving)
        admin = make_client_cert(cluster_ca, ADMIN_USER, ["system:masters"])
        self.write_pair("admin", admin)
        service = make_client_cert(cluster_ca, service_user, list(service_groups))
        self.write_pair("service-client", service)
        # The API server signs service-account tokens with this key (required even though no
        # controller-manager asks it to): ECDSA P-256, which it accepts.
        sa_key = ec.generate_private_key(ec.SECP256R1())
        private = sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_file(self.key("sa"), private, 0o600)
        write_file(self.dir / "sa.pub", public)
        ca = cluster_ca.cert_pem
        write_file(kubeconfig, kubeconfig_text(server, ca, admin, ADMIN_USER), 0o600)
        write_file(service_kubeconfig, kubeconfig_text(server, ca, service, service_user), 0o600)


def client_ssl_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """Verify the server against ``ca_file``; present the client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return ctx


def kubeconfig_text(server: str, ca_pem: bytes, client: CertPair, user: str, context: str = "gpu-queue-dev") -> str:
    """A self-contained kubeconfig (data embedded) for one client-certificate identity."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(client.cert_pem), "client-key-data": b64(client.key_pem)},
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
