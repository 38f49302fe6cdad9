"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages) for the PACS tests and bench.

``OrthancServer`` starts ``/usr/sbin/Orthanc`` on a free localhost port with the DICOMweb plugin,
HTTP basic authentication on, remote access off, no DICOM port, its storage in a folder of the
test's, and optionally a Lua filter that refuses structured reports (a PACS that rejects what it is
sent). ``stop`` ends it; the tests also stop it in the middle of a run.

HTTPS: Debian's Orthanc 1.10 cannot serve it itself (its web server, the system's civetweb,
looks OpenSSL up by name at run time and crashes on the first TLS request with OpenSSL 3: seen
here, a null function pointer in ``libcivetweb.so.1``). ``TlsFront`` puts TLS in front of it, as a
hospital's reverse proxy does: a certificate for 127.0.0.1 signed by a CA the test makes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "pacs-reader", "orthanc-test-password"
# Orthanc 1.10 applies ReceivedInstanceFilter to DICOM C-STORE only, not to DICOMweb: refuse the
# STOW-RS request itself (Orthanc answers 403, as a PACS does for an account without write access).
REFUSE_REPORTS_LUA = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if method == 'POST' and string.find(uri, '/dicom-web/studies', 1, true) == 1 then
    return false
  end
  return true
end
"""


def missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not Path(ORTHANC).is_file():
        return f"Orthanc is not installed ({ORTHANC}; Debian package orthanc)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with ``cryptography``:
    (the CA's PEM, the server's key + certificate PEM as Orthanc reads it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pneumo test hospital CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # RSA: Orthanc 1.10's web server (civetweb) crashes on the first request with an EC key.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, server_file = folder / "ca.pem", folder / "server.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
        + server.public_bytes(serialization.Encoding.PEM)
    )
    return ca_file, server_file


class OrthancServer:
    """One Orthanc process with its own storage under ``folder``."""

    def __init__(self, folder: Path, *, refuse_reports: bool = False):
        self.folder = Path(folder)
        self.storage = self.folder / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "Name": "pneumo-test-pacs",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "HttpDescribeErrors": False,
            "StorageCompression": False,
            "SaveJobs": False,
            "MaximumStorageCacheSize": 0,  # every retrieval reads the disk (the tests take files away)
        }
        if refuse_reports:
            lua = self.folder / "refuse_reports.lua"
            lua.write_text(REFUSE_REPORTS_LUA)
            config["LuaScripts"] = [str(lua)]
        self.config_file = self.folder / "orthanc.json"
        self.config_file.write_text(json.dumps(config, indent=2))
        self.log = self.folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.root}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.config_file)], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {self.process.returncode}):\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                answer = requests.get(f"{self.root}/system", auth=(USER, PASSWORD), timeout=2)
                if answer.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self.process = None

    def upload(self, data: bytes) -> str:
        """Stores a DICOM file through Orthanc's own REST API; returns Orthanc's instance id."""
        answer = requests.post(f"{self.root}/instances", data=data, auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.json()["ID"]

    def attachment_file(self, orthanc_id: str) -> Path:
        """The file in which Orthanc keeps an instance (to take it away: a retrieval then fails
        on the server's side, as a damaged disk makes it)."""
        answer = requests.get(f"{self.root}/instances/{orthanc_id}/attachments/dicom/info", auth=(USER, PASSWORD),
                              timeout=10)
        answer.raise_for_status()
        uuid = answer.json()["Uuid"]
        return self.storage / uuid[:2] / uuid[2:4] / uuid

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class TlsFront:
    """HTTPS on a free localhost port, forwarding every connection to ``target_port`` in plain
    HTTP (Python's ``ssl``, TLS 1.2 or later, the server certificate signed by ``ca_file``)."""

    def __init__(self, folder: Path, target_port: int):
        import ssl
        import threading

        self.ca_file, server_pem = self_signed_certificate(Path(folder))
        self.target_port = target_port
        self.port = free_port()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(server_pem)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._context = context
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        import ssl
        import threading

        try:
            secure = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # a client that does not trust the certificate hangs up here
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            secure.close()
            return

        def pipe(source, sink) -> None:
            try:
                while chunk := source.recv(1 << 16):
                    sink.sendall(chunk)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pipe, args=(upstream, secure), daemon=True)
        back.start()
        pipe(secure, upstream)
        back.join(timeout=30)
        secure.close()
        upstream.close()

    @property
    def dicomweb_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dicom-web"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
