//! The QUIC client side of the uplink: TLS setup, the hello/welcome
//! handshake, and a session that writes batch frames and reads acks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use o1_common::wire::{self, AgentMessage, Credentials, FrameReader, Hello, RelayMessage};
use quinn::VarInt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Everything needed to reach and authenticate to the relay.
#[derive(Clone)]
pub struct UplinkSettings {
    /// Relays to try, in order (at least one).
    pub addresses: Vec<String>,
    /// In-flight batches unacked this long: the relay is lost.
    pub ack_timeout: Duration,
    pub server_name: Option<String>,
    pub ca: Option<std::path::PathBuf>,
    pub insecure_skip_verify: bool,
    pub token: String,
    /// Client certificate and key files (mutual TLS).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub host: String,
    pub agent_id: String,
    pub applications: Vec<String>,
    pub idle_timeout: Duration,
    pub max_frame: usize,
}

impl std::fmt::Debug for UplinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkSettings")
            .field("addresses", &self.addresses)
            .field("host", &self.host)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("the relay refused this agent: {0}")]
    Refused(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to the relay: {0}")]
    Connect(String),
    #[error("uplink protocol error: {0}")]
    Protocol(String),
    #[error("connection to the relay lost: {0}")]
    Lost(String),
}

/// A lost connection, with its cause: "connection lost: reset by peer"
/// (the relay restarted and reset it), "…: timed out", ...
fn lost(error: impl std::error::Error) -> UplinkError {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    UplinkError::Lost(reason)
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate: the explicit development flag only.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, UplinkError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| UplinkError::Tls(format!("cannot read CA file {}: {e}", ca.display())))?;
    if certs.is_empty() {
        return Err(UplinkError::Tls(format!(
            "no certificate in CA file {}",
            ca.display()
        )));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| {
            UplinkError::Tls(format!("bad CA certificate in {}: {e}", ca.display()))
        })?;
    }
    Ok(roots)
}

/// A client configuration: TLS 1.3 with ring, ALPN `o1/1`, the CA from
/// the settings (or, with the dev flag only, no verification).
pub fn client_config(settings: &UplinkSettings) -> Result<quinn::ClientConfig, UplinkError> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut tls = if settings.insecure_skip_verify {
        tracing::warn!(
            "relay.insecure_skip_verify is set: the relay's certificate is NOT verified; use only for development"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else if let Some((cert, key)) = &settings.client_cert {
        let Some(ca) = &settings.ca else {
            return Err(UplinkError::Tls(
                "relay.ca is not set: name the CA file that signed the relay's certificate".into(),
            ));
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| UplinkError::Tls(format!("{}: {e}", cert.display())))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
            .map_err(|e| UplinkError::Tls(format!("{}: {e}", key.display())))?;
        builder
            .with_root_certificates(load_roots(ca)?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| UplinkError::Tls(format!("client certificate: {e}")))?
    } else {
        let Some(ca) = &settings.ca else {
            return Err(UplinkError::Tls(
                "relay.ca is not set: name the CA file that signed the relay's certificate".into(),
            ));
        };
        builder
            .with_root_certificates(load_roots(ca)?)
            .with_no_client_auth()
    };
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(settings.idle_timeout / 3));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral UDP port.
pub fn endpoint(settings: &UplinkSettings) -> Result<quinn::Endpoint, UplinkError> {
    let bind: SocketAddr = if settings.addresses.iter().any(|a| a.starts_with('[')) {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| UplinkError::Connect(e.to_string()))?;
    endpoint.set_default_client_config(client_config(settings)?);
    Ok(endpoint)
}

/// An open, authenticated session with the relay.
#[derive(Debug)]
pub struct Session {
    pub connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
    buffer: Vec<u8>,
}

/// Connects to the relay at `relay` (one of `settings.addresses`).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    settings: &UplinkSettings,
    relay: &str,
) -> Result<Session, UplinkError> {
    let address = tokio::net::lookup_host(relay)
        .await
        .map_err(|e| UplinkError::Resolve(format!("{relay}: {e}")))?
        .next()
        .ok_or_else(|| UplinkError::Resolve(relay.to_owned()))?;
    let server_name = settings.server_name.clone().unwrap_or_else(|| {
        relay
            .rsplit_once(':')
            .map_or(relay, |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    let connecting = endpoint
        .connect(address, &server_name)
        .map_err(|e| UplinkError::Connect(e.to_string()))?;
    let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| UplinkError::Connect(format!("no answer from {address} within 10s")))?
        .map_err(|e| UplinkError::Connect(e.to_string()))?;
    let (mut send, recv) = connection.open_bi().await.map_err(lost)?;
    let hello = AgentMessage::Hello(Hello {
        agent_id: settings.agent_id.clone(),
        host: settings.host.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        // With a certificate and no token, the certificate speaks for
        // the agent.
        credentials: if settings.client_cert.is_some() && settings.token.is_empty() {
            Credentials::ClientCertificate
        } else {
            Credentials::Token(settings.token.clone())
        },
        applications: settings.applications.clone(),
    });
    let mut out = Vec::new();
    wire::encode_frame(&hello, &mut out, settings.max_frame)
        .map_err(|e| UplinkError::Protocol(e.to_string()))?;
    send.write_all(&out).await.map_err(lost)?;
    let mut session = Session {
        connection,
        send,
        recv,
        reader: FrameReader::new(settings.max_frame),
        buffer: vec![0; 16 * 1024],
    };
    match tokio::time::timeout(Duration::from_secs(10), session.next_message()).await {
        Ok(Ok(RelayMessage::Welcome(_))) => Ok(session),
        Ok(Ok(RelayMessage::Refused(refused))) => Err(UplinkError::Refused(refused.reason)),
        Ok(Ok(RelayMessage::Ack(_))) => Err(UplinkError::Protocol("ack before welcome".into())),
        Ok(Err(UplinkError::Lost(reason))) => {
            // A refusal closes the connection; its reason is the close reason.
            match session.connection.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close))
                    if close.error_code == VarInt::from_u32(1) =>
                {
                    Err(UplinkError::Refused(
                        String::from_utf8_lossy(&close.reason).into_owned(),
                    ))
                }
                _ => Err(UplinkError::Lost(reason)),
            }
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(UplinkError::Protocol("no welcome within 10s".into())),
    }
}

impl Session {
    /// Writes one encoded frame.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), UplinkError> {
        self.send.write_all(frame).await.map_err(lost)
    }

    /// The next message from the relay. Cancel-safe: bytes read stay in
    /// the frame reader.
    pub async fn next_message(&mut self) -> Result<RelayMessage, UplinkError> {
        loop {
            if let Some(message) = self
                .reader
                .next_message::<RelayMessage>()
                .map_err(|e| UplinkError::Protocol(e.to_string()))?
            {
                return Ok(message);
            }
            match self.recv.read(&mut self.buffer).await {
                Ok(Some(n)) => self.reader.extend(&self.buffer[..n]),
                Ok(None) => return Err(UplinkError::Lost("the relay closed the stream".into())),
                Err(e) => return Err(lost(e)),
            }
        }
    }

    /// The next acknowledged sequence.
    pub async fn next_ack(&mut self) -> Result<u64, UplinkError> {
        match self.next_message().await? {
            RelayMessage::Ack(ack) => Ok(ack.sequence),
            RelayMessage::Refused(refused) => Err(UplinkError::Refused(refused.reason)),
            RelayMessage::Welcome(_) => Err(UplinkError::Protocol("second welcome".into())),
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.connection
            .close(VarInt::from_u32(0), b"agent stopping");
    }
}
