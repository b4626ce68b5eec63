// PATCH(rustls-0.23): ported from rustls 0.20 + rustls-pemfile 0.2 to rustls 0.23 (ring provider,
// PEM parsing by rustls' own pki-types). rustls 0.20 has RUSTSEC-2024-0336: a `close_notify`
// alert received during the handshake made `complete_io` loop forever, one connection thread at
// 100 % CPU per such client. Also: a key file that is not a key was an `expect()` panic at start
// (PATCH(no-panic)), and TLS streams now honour the read timeouts (PATCH(read-timeouts)).
use crate::connection::Connection;
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::error::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use zeroize::Zeroizing;

type Inner = rustls::StreamOwned<rustls::ServerConnection, Connection>;

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream independently.
pub(crate) struct RustlsStream(Arc<Mutex<Inner>>);

impl RustlsStream {
    // PATCH(no-panic): a poisoned lock (a panic elsewhere while holding it) is an I/O error of this
    // connection, not a panic of the next thread that touches it.
    fn lock(&self) -> std::io::Result<MutexGuard<'_, Inner>> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::Other, "TLS stream lock poisoned"))
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        self.lock()?.sock.peer_addr()
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        self.lock()?.sock.shutdown(how)
    }

    // PATCH(read-timeouts): the socket under the TLS session gets the same SO_RCVTIMEO as a plain
    // one, so a client that stalls mid-handshake or mid-request is dropped like a plain one.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.lock()?.sock.set_read_timeout(timeout)
    }
}

impl Clone for RustlsStream {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Read for RustlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.lock()?.read(buf)
    }
}

impl Write for RustlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock()?.flush()
    }
}

pub(crate) struct RustlsContext(Arc<rustls::ServerConfig>);

impl RustlsContext {
    pub(crate) fn from_pem(
        certificates: Vec<u8>,
        private_key: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Box<dyn Error + Send + Sync>> {
        let certificate_chain = CertificateDer::pem_slice_iter(&certificates)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading the certificate chain: {e}"))?;
        if certificate_chain.is_empty() {
            return Err("Couldn't extract certificate chain from config.".into());
        }
        // PKCS#8, PKCS#1 (RSA) or SEC1 (EC), the first key in the file; encrypted keys are not
        // supported.
        let private_key = PrivateKeyDer::from_pem_slice(&private_key)
            .map_err(|e| format!("reading the private key: {e}"))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_conf = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certificate_chain, private_key)?;

        Ok(Self(Arc::new(tls_conf)))
    }

    pub(crate) fn accept(
        &self,
        stream: Connection,
    ) -> Result<RustlsStream, Box<dyn Error + Send + Sync + 'static>> {
        let connection = rustls::ServerConnection::new(self.0.clone())?;
        Ok(RustlsStream(Arc::new(Mutex::new(
            rustls::StreamOwned::new(connection, stream),
        ))))
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}
