"""
Tests for L{relaymesh.tls}: node certificates, contexts and fingerprints.
"""

import datetime
import hashlib
import os
import socket
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaymesh.tls import (
    NodeCertificate,
    TLSError,
    TLSServerFactory,
    cert_paths,
    channel_binding,
    create_certificate,
    fingerprint,
)


def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def san(certificate):
    """
    The DNS names and the IP addresses (as text) of a certificate's
    subjectAltName, each in the order listed.
    """
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        names.get_values_for_type(x509.DNSName),
        [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
    )


class CertificateTests(SynchronousTestCase):
    def setUp(self):
        self.data_dir = self.mktemp()
        os.makedirs(self.data_dir)

    def test_create(self):
        """
        tls-init's certificate names the node, carries DNS and IP
        subjectAltNames, and its key is private.
        """
        cert_path, key_path = create_certificate(
            self.data_dir, "laptop-a3f2", dns_names=["relay.example"], ip_addresses=["192.0.2.7"]
        )
        self.assertEqual((cert_path, key_path), cert_paths(self.data_dir))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("relay.example", san.get_values_for_type(x509.DNSName))
        self.assertIn("localhost", san.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        self.assertTrue({"127.0.0.1", "::1", "192.0.2.7"} <= ips)
        self.assertIn("laptop-a3f2", cert.subject.rfc4514_string())

    def test_no_silent_overwrite(self):
        create_certificate(self.data_dir, "a")
        first = NodeCertificate.from_data_dir(self.data_dir).fingerprint
        with self.assertRaises(TLSError):
            create_certificate(self.data_dir, "a")
        create_certificate(self.data_dir, "a", force=True)
        self.assertNotEqual(NodeCertificate.from_data_dir(self.data_dir).fingerprint, first)

    def test_bad_ip(self):
        with self.assertRaises(TLSError):
            create_certificate(self.data_dir, "a", ip_addresses=["not-an-ip"])

    def test_missing(self):
        with self.assertRaises(TLSError) as ctx:
            NodeCertificate.from_data_dir(self.data_dir)
        self.assertIn("relaymesh tls-init", str(ctx.exception))

    def test_garbage(self):
        cert_path, key_path = cert_paths(self.data_dir)
        os.makedirs(os.path.dirname(cert_path))
        for path in (cert_path, key_path):
            with open(path, "w") as f:
                f.write("nonsense")
        with self.assertRaises(TLSError):
            NodeCertificate(cert_path, key_path)

    def test_fingerprint_format(self):
        create_certificate(self.data_dir, "a")
        self.assertRegex(NodeCertificate.from_data_dir(self.data_dir).fingerprint, r"\Asha256:[0-9a-f]{64}\Z")

    def assertNodeCertificate(self, cert, name, made_after, made_before):
        """
        C{cert} is a node certificate of C{name} made between the two times:
        self-signed with an EC P-256 key, not a CA, valid from five minutes
        before it was made (a peer's clock may be behind) for ten years.
        """
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={name}")
        self.assertEqual(cert.issuer, cert.subject)
        public = cert.public_key()
        self.assertIsInstance(public, ec.EllipticCurvePublicKey)
        self.assertEqual(public.curve.name, "secp256r1")
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertEqual((constraints.critical, constraints.value.ca), (True, False))
        skew = datetime.timedelta(minutes=5)
        second = datetime.timedelta(seconds=1)  # certificates count whole seconds
        self.assertLessEqual(made_after - skew - second, cert.not_valid_before_utc)
        self.assertLessEqual(cert.not_valid_before_utc, made_before - skew)
        self.assertEqual(
            cert.not_valid_after_utc - cert.not_valid_before_utc,
            datetime.timedelta(days=3650) + skew,
        )

    def test_certificate_properties(self):
        """
        The certificate tls-init makes is self-signed with an EC P-256 key,
        is no certificate authority, is valid from five minutes before it
        was made for ten years, and lists its subjectAltNames as a
        non-critical extension (the subject names the node); the key is
        the certificate's.
        """
        before = datetime.datetime.now(datetime.timezone.utc)
        cert_path, key_path = create_certificate(self.data_dir, "laptop-a3f2")
        after = datetime.datetime.now(datetime.timezone.utc)
        cert = load(cert_path)
        self.assertNodeCertificate(cert, "laptop-a3f2", before, after)
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertFalse(alternatives.critical)
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        self.assertEqual(key.public_key(), cert.public_key())
        loaded = NodeCertificate.from_data_dir(self.data_dir)
        loaded.server_options().getContext().check_privatekey()  # raises if not the pair's

    def test_generated_in_memory(self):
        """
        A certificate made in memory (a node without a data directory) has
        the same properties, and no subjectAltName at all: it has no names
        to list, and an empty list is malformed (RFC 5280 wants one name at
        least).
        """
        before = datetime.datetime.now(datetime.timezone.utc)
        generated = NodeCertificate.generate("ephemeral-1")
        after = datetime.datetime.now(datetime.timezone.utc)
        cert = generated.certificate.to_cryptography()
        self.assertNodeCertificate(cert, "ephemeral-1", before, after)
        with self.assertRaises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(generated.fingerprint, fingerprint(generated.certificate))
        self.assertNotEqual(NodeCertificate.generate("ephemeral-1").fingerprint, generated.fingerprint)

    def test_layout(self):
        """
        The certificate and its key live in C{tls/cert.pem} and
        C{tls/key.pem} of the data directory, in a directory only the owner
        may enter, the key readable by the owner alone, whatever the umask.
        """
        self.addCleanup(os.umask, os.umask(0))
        cert_path, key_path = create_certificate(self.data_dir, "n")
        tls_dir = os.path.join(self.data_dir, "tls")
        self.assertEqual(
            (cert_path, key_path),
            (os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem")),
        )
        self.assertEqual(sorted(os.listdir(tls_dir)), ["cert.pem", "key.pem"])
        self.assertEqual(stat.S_IMODE(os.stat(tls_dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)

    def test_host_names(self):
        """
        The subjectAltNames list this host's name and its first label,
        and each address the name resolves to once, without an IPv6 zone
        (which a certificate cannot carry), besides the loopback names.
        """
        self.patch(socket, "gethostname", lambda: "relay7.lab.example")
        looked_up = []

        def getaddrinfo(host, port):
            looked_up.append(host)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.9", 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::9%eth0", 0, 0, 2)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::9%wlan0", 0, 0, 3)),
            ]

        self.patch(socket, "getaddrinfo", getaddrinfo)
        cert_path, _ = create_certificate(self.data_dir, "n", dns_names=["relay.example"])
        self.assertEqual(looked_up, ["relay7.lab.example"])
        self.assertEqual(
            san(load(cert_path)),
            (
                ["localhost", "relay.example", "relay7", "relay7.lab.example"],
                ["127.0.0.1", "192.0.2.9", "::1", "fe80::9"],
            ),
        )

    def test_host_without_a_name(self):
        """
        A host with no name, or one that does not resolve, gets the
        loopback names only; nothing is looked up for an empty name.
        """
        looked_up = []

        def unresolvable(host, port):
            looked_up.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        self.patch(socket, "getaddrinfo", unresolvable)
        self.patch(socket, "gethostname", lambda: "")
        cert_path, _ = create_certificate(self.data_dir, "n")
        self.assertEqual(looked_up, [])
        self.assertEqual(san(load(cert_path)), (["localhost"], ["127.0.0.1", "::1"]))
        self.patch(socket, "gethostname", lambda: "lonely")
        cert_path, _ = create_certificate(self.data_dir, "n", force=True)
        self.assertEqual(looked_up, ["lonely"])
        self.assertEqual(san(load(cert_path)), (["localhost", "lonely"], ["127.0.0.1", "::1"]))

    def test_half_a_pair_not_replaced(self):
        """
        A key without its certificate, or a certificate without its key, is
        not silently replaced by a new pair: it may be all that is left of
        the node's identity to its pinned peers.
        """
        cert_path, key_path = create_certificate(self.data_dir, "n")
        for survivor, lost in ((key_path, cert_path), (cert_path, key_path)):
            with open(survivor, "rb") as f:
                kept = f.read()
            os.rename(lost, lost + ".bak")
            with self.assertRaises(TLSError) as ctx:
                create_certificate(self.data_dir, "n")
            self.assertIn("already exists; use --force", str(ctx.exception))
            with self.assertRaises(TLSError) as ctx:
                NodeCertificate.for_data_dir(self.data_dir, "n")
            self.assertIn(f"cannot read the node certificate (No such file or directory: {lost})", str(ctx.exception))
            self.assertFalse(os.path.exists(lost))
            with open(survivor, "rb") as f:
                self.assertEqual(f.read(), kept)
            os.rename(lost + ".bak", lost)

    def test_first_start(self):
        """
        A node's first start makes its certificate, and later starts load
        that one.
        """
        first = NodeCertificate.for_data_dir(self.data_dir, "n")
        self.assertEqual(first.fingerprint, NodeCertificate.from_data_dir(self.data_dir).fingerprint)
        self.assertEqual(first.certificate.get_subject().CN, "n")
        self.assertEqual(NodeCertificate.for_data_dir(self.data_dir, "other").fingerprint, first.fingerprint)

    def test_first_start_cannot_write(self):
        """
        A data directory where no certificate can be made is a
        L{TLSError} that says why, not an L{OSError}.
        """
        blocker = os.path.join(self.data_dir, "file")
        with open(blocker, "w"):
            pass
        with self.assertRaises(TLSError) as ctx:
            NodeCertificate.for_data_dir(os.path.join(blocker, "data"), "n")
        self.assertEqual(
            str(ctx.exception),
            f"cannot create the node certificate (Not a directory: {os.path.join(blocker, 'data')})",
        )

    def test_fingerprint_is_of_the_certificate(self):
        """
        A fingerprint is the SHA-256 of the certificate's DER encoding,
        whether given as pyOpenSSL's certificate or as Twisted's.
        """
        create_certificate(self.data_dir, "n")
        node = NodeCertificate.from_data_dir(self.data_dir)
        der = load(cert_paths(self.data_dir)[0]).public_bytes(serialization.Encoding.DER)
        expected = "sha256:" + hashlib.sha256(der).hexdigest()
        self.assertEqual(node.fingerprint, expected)
        self.assertEqual(fingerprint(node.certificate), expected)
        self.assertEqual(fingerprint(twisted_ssl.Certificate(node.certificate)), expected)


class ChannelBindingTests(SynchronousTestCase):
    def certificate(self, name):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        create_certificate(data_dir, name)
        return NodeCertificate.from_data_dir(data_dir)

    def test_plain_transport(self):
        from twisted.internet.testing import StringTransport

        self.assertIsNone(channel_binding(StringTransport()))

    def test_both_sides_see_both_fingerprints(self):
        """
        Over TLS with self-signed certificates on both sides, each side sees
        its own fingerprint and the other's, the other way round.
        """
        server_cert, client_cert = self.certificate("server"), self.certificate("client")
        seen = self.exchange(server_cert.server_options(), client_cert.client_options())
        self.assertEqual(seen[b"client"], (server_cert.fingerprint, client_cert.fingerprint))
        self.assertEqual(seen[b"server"], (client_cert.fingerprint, server_cert.fingerprint))

    def exchange(self, server_options, client_options):
        """
        Run a TLS connection from a client with C{client_options} to a
        server with C{server_options}: the client writes C{client}, the
        server answers C{server}.

        @return: what each side's L{channel_binding} was when it received,
            by what it received.
        """
        seen = {}

        class Recorder(Protocol):
            def dataReceived(self, data):
                seen[data] = channel_binding(self.transport)
                if data == b"client":
                    self.transport.write(b"server")

        class Greeter(Recorder):
            def connectionMade(self):
                self.transport.write(b"client")

        clock = Clock()  # TLS transports flush their writes on the clock
        server_factory = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(Recorder), clock)
        client_factory = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(Greeter), clock)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()
        return seen

    def test_client_without_certificate(self):
        """
        A client that presents no certificate (as anyone may try) is let
        through TLS, and both sides see an empty fingerprint for it, never
        another certificate's.
        """
        server_cert = self.certificate("server")
        seen = self.exchange(server_cert.server_options(), twisted_ssl.CertificateOptions())
        self.assertEqual(seen[b"client"], (server_cert.fingerprint, ""))
        self.assertEqual(seen[b"server"], ("", server_cert.fingerprint))

    def test_handle_without_certificate(self):
        """
        A TLS transport whose handle cannot say which certificate this side
        presented (one not built on pyOpenSSL's connection) gives an empty
        fingerprint for this side rather than failing.
        """
        peer = self.certificate("peer")

        @implementer(ISSLTransport)
        class OtherTLS:
            def getHandle(self):
                return object()

            def getPeerCertificate(self):
                return peer.certificate

        self.assertEqual(channel_binding(OtherTLS()), ("", peer.fingerprint))


class ServerFactoryTests(SynchronousTestCase):
    def test_refusal_kept(self):
        """
        A connection the relay's factory refuses is refused before TLS
        (L{None}: Twisted closes the socket); one it takes runs over TLS.
        """
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        create_certificate(data_dir, "server")
        options = NodeCertificate.from_data_dir(data_dir).server_options()

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        self.assertIsNone(TLSServerFactory(options, False, Refusing()).buildProtocol(None))
        received = []

        class Server(Protocol):
            def dataReceived(self, data):
                received.append((data, ISSLTransport.providedBy(self.transport)))

        class Client(Protocol):
            def connectionMade(self):
                self.transport.write(b"hello")

        clock = Clock()
        server_factory = TLSServerFactory(options, False, Factory.forProtocol(Server), clock)
        client_factory = TLSMemoryBIOFactory(
            twisted_ssl.CertificateOptions(), True, Factory.forProtocol(Client), clock
        )
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()
        self.assertEqual(received, [(b"hello", True)])


class ContextTests(SynchronousTestCase):
    def test_context_reused(self):
        """
        Every connection gets the same context, which asks for the peer's
        certificate; asking again does not try to change a used context.
        """
        from OpenSSL import SSL

        data_dir = self.mktemp()
        os.makedirs(data_dir)
        create_certificate(data_dir, "n")
        options = NodeCertificate.from_data_dir(data_dir).server_options()
        first = options.getContext()
        SSL.Connection(first, None)  # a used context can no longer be changed
        self.assertIs(options.getContext(), first)
        self.assertEqual(first.get_verify_mode(), SSL.VERIFY_PEER)
