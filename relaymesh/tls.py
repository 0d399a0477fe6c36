"""
TLS for relay connections: a node certificate, contexts that present it, and
the fingerprints that bind the PSK handshake to the TLS session.

Trust does not come from a certificate authority. Both sides present a
certificate (self-signed by default, made by C{relaymesh tls-init}); neither
rejects the other's certificate during the TLS handshake. Instead:

  - the PSK handshake that runs inside TLS proves the key over both
    certificates' fingerprints, so a man in the middle, who must show each
    side its own certificate, cannot relay a proof (see
    L{relaymesh.handshake});
  - after the first successful PSK handshake, the peer's fingerprint is
    pinned in its meta file; a different certificate later is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

from OpenSSL import SSL, crypto
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IAddress, ISSLTransport, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from relaymesh.keystore import write_atomically

TLS_DIR = "tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

#: Years a certificate made by L{create_certificate} is valid.
CERT_YEARS = 10


class TLSError(Exception):
    """
    A certificate or key that cannot be used; the message is one line.
    """


def cert_paths(data_dir: str) -> tuple[str, str]:
    """
    Where a node's certificate and private key live in its data directory.
    """
    base = os.path.join(data_dir, TLS_DIR)
    return os.path.join(base, CERT_FILE), os.path.join(base, KEY_FILE)


def _local_names() -> tuple[list[str], list[str]]:
    names = {"localhost"}
    addresses = {"127.0.0.1", "::1"}
    host = socket.gethostname()
    if host:
        names.add(host)
        names.add(host.split(".", 1)[0])
        try:
            for info in socket.getaddrinfo(host, None):
                addresses.add(str(info[4][0]).split("%", 1)[0])  # an IP address: a str
        except OSError:
            pass
    return sorted(names), sorted(addresses)


def create_certificate(
    data_dir: str,
    common_name: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    force: bool = False,
) -> tuple[str, str]:
    """
    Make a self-signed certificate and an EC P-256 key for this node.

    The certificate names the node (C{common_name}, usually its peer id) and
    carries subjectAltNames for this host's names and addresses plus any
    given, as service_identity requires.

    @return: the certificate's and the key's paths.
    @raise TLSError: if they exist and C{force} is false.
    """
    cert_path, key_path = cert_paths(data_dir)
    if not force and (os.path.exists(cert_path) or os.path.exists(key_path)):
        raise TLSError(f"{cert_path} already exists; use --force to replace it")
    names, addresses = _local_names()
    names = sorted(set(names) | set(dns_names))
    addresses = sorted(set(addresses) | set(ip_addresses))
    try:
        ips = [ipaddress.ip_address(a) for a in addresses]
    except ValueError as e:
        raise TLSError(f"invalid IP address: {e}") from None
    cert_pem, key_pem = _self_signed(common_name, names, ips)
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    write_atomically(key_path, key_pem)
    write_atomically(cert_path, cert_pem)
    return cert_path, key_path


def _self_signed(
    common_name: str,
    names: Iterable[str] = (),
    ips: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> tuple[bytes, bytes]:
    """
    A self-signed certificate and its EC P-256 key, as PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternatives += [x509.IPAddress(ip) for ip in ips]
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def fingerprint(certificate: crypto.X509 | twisted_ssl.Certificate) -> str:
    """
    A certificate's SHA-256 fingerprint: C{sha256:} and 64 lowercase hex
    characters.
    """
    x509: crypto.X509 = (
        certificate.original if isinstance(certificate, twisted_ssl.Certificate) else certificate
    )
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, x509)
    return "sha256:" + hashlib.sha256(der).hexdigest()


class NodeCertificate:
    """
    A node's certificate and key, loaded, with the TLS contexts that use them.

    @ivar fingerprint: The certificate's L{fingerprint}.
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        try:
            with open(cert_path, "rb") as f:
                cert_pem = f.read()
            with open(key_path, "rb") as f:
                key_pem = f.read()
        except OSError as e:
            raise TLSError(
                f"cannot read the node certificate ({e.strerror}: {e.filename}); "
                f"run: relaymesh tls-init"
            ) from None
        self._load(cert_pem, key_pem, f"{cert_path} or {key_path}")

    def _load(self, cert_pem: bytes, key_pem: bytes, where: str) -> None:
        try:
            self.certificate = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)
            self.key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        except crypto.Error:
            raise TLSError(f"{where} is not a PEM certificate and key") from None
        self.fingerprint = fingerprint(self.certificate)
        self._server: twisted_ssl.CertificateOptions | None = None
        self._client: twisted_ssl.CertificateOptions | None = None

    @classmethod
    def from_data_dir(cls, data_dir: str) -> NodeCertificate:
        """
        Load the certificate that C{relaymesh tls-init} (or the node's
        first start) made.
        """
        return cls(*cert_paths(data_dir))

    @classmethod
    def for_data_dir(cls, data_dir: str, common_name: str) -> NodeCertificate:
        """
        Load the node's certificate, making it first if there is none yet:
        what a node does on its first start, so that its links are private
        with no set-up step.

        @raise TLSError: if a certificate exists and cannot be read, or
            none can be written.
        """
        cert_path, key_path = cert_paths(data_dir)
        if not (os.path.exists(cert_path) or os.path.exists(key_path)):
            try:
                create_certificate(data_dir, common_name)
            except OSError as e:
                raise TLSError(
                    f"cannot create the node certificate ({e.strerror}: {e.filename})"
                ) from None
        return cls(cert_path, key_path)

    @classmethod
    def generate(cls, common_name: str) -> NodeCertificate:
        """
        A new certificate that lives only in memory: for a node without a
        data directory (its peers pin the certificate, so a restarted node
        with a new one is refused by them until unpinned).
        """
        certificate = cls.__new__(cls)
        certificate._load(*_self_signed(common_name), "a generated certificate")
        return certificate

    def _options(self) -> twisted_ssl.CertificateOptions:
        return _AnyPeerCertificateOptions(
            privateKey=self.key,
            certificate=self.certificate,
            # TLS 1.3 only: the channel binding names the certificates of
            # the handshake, and 1.3 has no renegotiation to change them
            raiseMinimumTo=twisted_ssl.TLSVersion.TLSv1_3,
        )

    def server_options(self) -> twisted_ssl.CertificateOptions:
        """
        Options for a listener: present our certificate, ask the connector
        for its own (any is accepted here; the PSK handshake and pinning
        decide). One set of options serves every connection.
        """
        if self._server is None:
            self._server = self._options()
        return self._server

    def client_options(self) -> twisted_ssl.CertificateOptions:
        """
        Options for dialling a peer: present our certificate, accept any
        server certificate (the PSK handshake and pinning decide).
        """
        if self._client is None:
            self._client = self._options()
        return self._client


#: OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h), which pyOpenSSL sets on
#: every context and does not name.
SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1


class _AnyPeerCertificateOptions(twisted_ssl.CertificateOptions):
    """
    Certificate options that request the peer's certificate and accept any.
    """

    _verify_set = False

    def getContext(self) -> SSL.Context:
        # The base class builds one context and hands it out every time; it
        # can be changed only before its first connection.
        context = super().getContext()
        if not self._verify_set:
            context.set_verify(SSL.VERIFY_PEER, lambda connection, cert, errno, depth, ok: True)
            # A write through a memory BIO never blocks: without partial
            # writes, one SSL_write seals a whole burst (L{RelayTLSProtocol})
            # instead of returning after each record.
            context.clear_mode(SSL_MODE_ENABLE_PARTIAL_WRITE)
            self._verify_set = True
        return context


#: Bytes of application data in a full TLS record (RFC 8446, 5.1).
RECORD_BYTES = 16384

#: Bytes a TLS 1.3 record adds to the data it protects: the header, the
#: inner content type and the AEAD tag (RFC 8446, 5.2).
RECORD_OVERHEAD = 5 + 1 + 16

#: Bytes asked of OpenSSL per decrypted read, as Twisted does: at most one
#: record comes out of each.
READ_BYTES = 2**15


class RelayTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS layer, with two changes for bulk traffic:

      - a write is sealed straight out of the caller's bytes, in one
        C{SSL_write} if the context allows whole writes (relaymesh's do:
        L{NodeCertificate}), where Twisted copies each 16 KiB slice and
        seals it on its own; the records are read out of OpenSSL and handed
        to the transport together, once per write, instead of once per
        record (each read allocates and copies a buffer);
      - the records that arrive in one read are decrypted and handed to
        the protocol in one C{dataReceived}, instead of one per record.

    relaymesh hands its TLS layer one write per burst of lines
    (L{relaymesh.outbound}), up to 64 KiB: four records. A TLS error that
    ends the connection reaches the protocol without its traceback, whose
    frames would make the connection cyclic garbage.
    """

    #: The transport below, there while the layer is connected.
    transport: ITransport

    if TYPE_CHECKING:
        # TLSMemoryBIOProtocol's own, which Twisted leaves unannotated

        def _bufferedWrite(self, octets: bytes) -> None: ...

        def _tlsShutdownFinished(self, reason: Failure | None) -> None: ...

        def _shutdownTLS(self) -> None: ...

        def _flushSendBIO(self) -> None: ...

    def flushWrites(self) -> None:
        """
        Seal what was written so far and hand it to the transport now,
        rather than on the reactor's next turn: for a writer that joined
        its writes itself (a burst of lines, L{relaymesh.outbound}), the
        wait would only delay them.
        """
        self._aggregator.flush()

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        size = len(data)
        view = memoryview(data)
        sent = 0
        while sent < size:
            try:
                sent += connection.send(view[sent:] if sent else view)
            except SSL.WantReadError:
                # not until the handshake (or a key update) is done
                self._flushRecords(sent)
                self._bufferedWrite(data[sent:])
                return
            except SSL.Error as e:
                self._flushRecords(sent)
                self._tlsShutdownFinished(Failure(e.with_traceback(None)))
                return
        self._flushRecords(size)

    def _flushReceiveBIO(self) -> None:
        """
        Decrypt every record that arrived and hand the lot to the protocol
        in one C{dataReceived}, then send what OpenSSL has to send.
        """
        connection = self._tlsConnection
        chunks: list[bytes] = []
        closed = False
        error: SSL.Error | None = None
        while not self._lostTLSConnection:
            try:
                chunks.append(connection.recv(READ_BYTES))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                closed = True  # the peer's close_notify
                break
            except SSL.Error as e:
                # Without its traceback: the frames it holds would make the
                # error, this frame and the connection cyclic garbage (every
                # connection reset by a peer ends here).
                error = e.with_traceback(None)
                break
        if chunks and not self._aborted:
            ProtocolWrapper.dataReceived(self, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if closed:
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        elif error is not None:
            self._tlsShutdownFinished(Failure(error))
        self._flushSendBIO()

    def _flushRecords(self, size: int) -> None:
        """
        Hand what OpenSSL sealed of C{size} bytes of data to the transport,
        in one write.
        """
        want = size + (size // RECORD_BYTES + 1) * RECORD_OVERHEAD + 512
        read = self._tlsConnection.bio_read
        chunks = []
        while True:
            try:
                chunk = read(want)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < want:
                break
        if chunks:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def use_relay_tls(transport: object) -> RelayTLSProtocol | None:
    """
    Make the TLS layer under a connection a L{RelayTLSProtocol}: the one
    C{transport.startTLS} (or C{connectSSL}) put under it, if it is
    Twisted's own. (Twisted's C{startTLS} offers no choice of layer.)

    @return: the connection's L{RelayTLSProtocol}: C{transport} itself if
        it is one (a C{tls:} listener's), else its layer; C{None} if it has
        none.
    """
    if isinstance(transport, RelayTLSProtocol):
        return transport
    layer = getattr(transport, "protocol", None)
    if type(layer) is BufferingTLSTransport:
        layer.__class__ = RelayTLSProtocol
    return layer if isinstance(layer, RelayTLSProtocol) else None


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    Wraps the relay's server factory in TLS, and keeps its refusals: when the
    wrapped factory refuses a connection (returns C{None}), so does this one,
    and Twisted closes the socket before any TLS byte. Its TLS layer is a
    L{RelayTLSProtocol}.
    """

    protocol = RelayTLSProtocol

    # WrappingFactory's annotation leaves out the None a factory may return
    # (IProtocolFactory) to refuse a connection.
    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


class _TLSTransport(Protocol):
    """
    What L{channel_binding} uses of a TLS transport.
    """

    def getHandle(self) -> object: ...

    def getPeerCertificate(self) -> crypto.X509 | None: ...


def channel_binding(transport: object) -> tuple[str, str] | None:
    """
    The fingerprints of this side's and the peer's certificates on a TLS
    transport, or C{None} if the transport is not TLS.

    A side that presented no certificate is an empty string.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    # Twisted's TLS transports (and relaymesh.testing's) have getHandle,
    # which ISSLTransport does not declare, and their peer's certificate is
    # a pyOpenSSL one.
    tls = cast(_TLSTransport, transport)
    handle = tls.getHandle()
    local = handle.get_certificate() if hasattr(handle, "get_certificate") else None
    peer = tls.getPeerCertificate()
    return (
        fingerprint(local) if local is not None else "",
        fingerprint(peer) if peer is not None else "",
    )
