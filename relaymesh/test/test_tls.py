"""
Tests for L{relaymesh.tls}: node certificates, contexts and fingerprints.
"""

import os
import stat

from cryptography import x509
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.tls import (
    NodeCertificate,
    TLSError,
    cert_paths,
    channel_binding,
    create_certificate,
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
        server_factory = TLSMemoryBIOFactory(
            server_cert.server_options(), False, Factory.forProtocol(Recorder), clock
        )
        client_factory = TLSMemoryBIOFactory(
            client_cert.client_options(), True, Factory.forProtocol(Greeter), clock
        )
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()
        self.assertEqual(seen[b"client"], (server_cert.fingerprint, client_cert.fingerprint))
        self.assertEqual(seen[b"server"], (client_cert.fingerprint, server_cert.fingerprint))


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
