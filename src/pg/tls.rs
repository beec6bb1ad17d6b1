//! TLS for the lock server's connections, with rustls (no OpenSSL), to
//! libpq's `sslmode` meanings:
//!
//! - `disable`: no TLS;
//! - `allow`, `prefer`: TLS when the server offers it, certificate not
//!   checked;
//! - `require`: TLS or no connection, certificate not checked (checked as
//!   for `verify-ca` when a root certificate is given, as libpq does);
//! - `verify-ca`: the server's certificate must chain to a root of
//!   `sslrootcert`;
//! - `verify-full`: and name the host connected to.
//!
//! `sslrootcert` is a PEM file, or `system` for the system's roots; without
//! it, the `verify-*` modes use `~/.postgresql/root.crt`, as libpq does. A
//! client certificate (`sslcert`, `sslkey`, PEM) is presented when given.
//! Over TLS, SCRAM logins bind the channel (`SCRAM-SHA-256-PLUS`) when the
//! server offers it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::config::{Roots, SslMode, Tls};

/// Why a TLS configuration cannot be made. Names files, never their
/// contents.
#[derive(Debug)]
pub(crate) struct TlsError(pub(crate) String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `tls`, or `None` for `sslmode=disable`.
pub(crate) fn connector(
    tls: &Tls,
    home: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, TlsError> {
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        SslMode::Disable => unreachable!(),
        SslMode::Allow | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unchecked(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(tls.roots.as_ref(), home)?);
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError(format!("TLS roots: {e}")))?;
            if tls.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly {
                    roots,
                    provider: provider.clone(),
                })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    TlsError(format!(
                        "cannot read the client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                TlsError(format!("cannot read the client key {}: {e}", key.display()))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError(format!(
                    "the client certificate and key do not go together: {e}"
                ))
            })?
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The roots a `verify-*` mode checks against.
fn roots(source: Option<&Roots>, home: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let file: PathBuf = match source {
        Some(Roots::System) => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError(
                    "sslrootcert=system: no system root certificate could be loaded".into(),
                ));
            }
            return Ok(store);
        }
        Some(Roots::File(f)) => f.clone(),
        None => match home {
            Some(h) => h.join(".postgresql/root.crt"),
            None => {
                return Err(TlsError(
                    "sslmode verify-ca/verify-full needs a root certificate (sslrootcert)".into(),
                ))
            }
        },
    };
    let certs = CertificateDer::pem_file_iter(&file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "cannot read the root certificate {} (sslrootcert): {e}",
                file.display()
            ))
        })?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError(format!(
            "no usable root certificate in {} (sslrootcert)",
            file.display()
        )));
    }
    Ok(store)
}

/// A verifier's checks of the handshake's signatures, by the algorithms
/// of its crypto provider (`self.$provider`): the same for every mode.
macro_rules! signature_checks {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// `prefer` and `require`: encryption without knowing who is at the other
/// end (libpq's meaning of those modes). The handshake's signatures are
/// still checked, so the session is with the certificate's key holder.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(0);
}

/// `verify-ca`: the certificate must chain to one of the roots; the name
/// it carries is not compared with the host's.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(provider);
}
