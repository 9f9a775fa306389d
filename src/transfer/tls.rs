//! QUIC endpoints with mutual TLS where a peer is known by its certificate
//! fingerprint, not by a certificate authority.
//!
//! The verifiers below accept any certificate but still check the TLS 1.3
//! handshake signature, which proves the peer holds the certificate's key.
//! Whether that certificate is acceptable (authorized, pinned, the one a
//! bootstrap printed) is decided right after the handshake, from
//! [`peer_fingerprint`], before a single message is exchanged: that is
//! where a useful, ssh-like error can be given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity::{Identity, fingerprint};
use super::wire::ALPN;
use crate::digest::Digest;

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// ring's suites with AES-128-GCM first: every byte of a transfer is
/// sealed once and opened once, and with AES instructions the 128-bit key
/// does that about a third faster than the 256-bit one that rustls puts
/// first, for a security margin this tool does not need more of than ssh's
/// `aes128-gcm@openssh.com`.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Accepts any certificate; checks handshake signatures.
#[derive(Debug)]
struct ByFingerprint(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for ByFingerprint {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for ByFingerprint {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The largest UDP payload an endpoint accepts (the QUIC maximum). What
/// a path carries is found by quinn's MTU discovery; this only keeps the
/// receiver from capping it at Ethernet's 1472.
const MAX_UDP_PAYLOAD: u16 = 65527;

/// Flow-control windows sized for a fast link while bounding what one
/// connection can make the receiver buffer. Towards a peer on a loopback
/// address, MTU discovery may go up to the loopback interface's 64 KiB:
/// each datagram then carries ~45 times what it does on Ethernet, and the
/// per-packet work (sealing, headers, acknowledgements, system calls)
/// shrinks with it (a cold 1.1 GB push on 2 cores: 2.5-2.8 s instead of
/// 3.5-4.1, the sender's CPU time halved). Elsewhere quinn's default
/// bound (1452) stands.
fn transport(loopback_peer: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if loopback_peer {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        // quinn hands the kernel up to 10 datagrams per GSO send without
        // capping their total at UDP's 64 KiB, so datagrams over ~6.5 KB
        // would be refused in batches (and taken for a black hole). One
        // 64 KiB datagram per send is the larger gain.
        t.enable_segmentation_offload(false);
    }
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20))
        .receive_window(quinn::VarInt::from_u32(8 << 20))
        .send_window(16 << 20)
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(20)).expect("20 s is a valid timeout"),
        ));
    Arc::new(t)
}

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max`
/// and `wmem_max` unless we run as root): the default ~200 KiB overflows
/// at loopback and LAN rates, and every datagram dropped there is taken
/// for congestion.
const SOCKET_BUFFER: usize = 16 << 20;

/// An endpoint on a UDP socket bound to `addr`, with large buffers.
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TlsError> {
    let bind = |source| TlsError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    // Beyond the kernel's caps where we may (root), else up to them.
    // Smaller buffers only cost speed: go on with what the kernel gives.
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TlsError::Quic("no async runtime to run QUIC on".into()))?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    quinn::Endpoint::new(config, server, socket, runtime).map_err(bind)
}

/// A server endpoint on `addr` presenting `identity` and requiring a
/// client certificate.
pub fn server(identity: &Identity, addr: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ByFingerprint(provider.signature_verification_algorithms));
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(false));
    endpoint(addr, Some(config))
}

/// A client endpoint presenting `identity`, bound to an ephemeral port of
/// the same address family as `peer`.
pub fn client(identity: &Identity, peer: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ByFingerprint(provider.signature_verification_algorithms));
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(peer.ip().is_loopback()));

    let local: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let mut endpoint = endpoint(local, None)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The fingerprint of the certificate the peer presented.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<Digest> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(fingerprint)
}
