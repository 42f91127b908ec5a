//! TLS server configuration from the PEM material of a `tls` or `wss` socket.
//!
//! The supervisor reads the certificate files at each reload and passes their text
//! ([`TlsMaterial`]); it calls [`tls_server_config`] itself to refuse a socket whose material does
//! not load (the bind fails with the error's text), and the stream worker calls it again to serve
//! the socket's connections. The crypto provider is always `ring`, named here rather than taken
//! from a process-wide default, so nothing depends on which crate installed one first.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use crate::ipc::TlsMaterial;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;

/// Why a socket's TLS material cannot be used. The text names the part that failed, for the
/// socket's bind error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// The certificate PEM does not parse.
    #[error("certificate: bad PEM: {0}")]
    CertificatePem(String),
    /// The certificate PEM holds no certificate.
    #[error("certificate: no CERTIFICATE block in the PEM")]
    NoCertificate,
    /// The private key PEM does not parse.
    #[error("private key: bad PEM: {0}")]
    KeyPem(String),
    /// The private key PEM holds no key.
    #[error("private key: no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1) in the PEM")]
    NoKey,
    /// The key is not the certificate's.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// The key or certificate is not one rustls can use (unsupported algorithm, bad DER).
    #[error("certificate or private key not usable: {0}")]
    Unusable(String),
    /// The CA list does not parse, is empty, or holds a certificate that is not a valid anchor.
    #[error("ca_list: {0}")]
    CaList(String),
    /// `require_client_cert` without a CA list to verify client certificates against.
    #[error("require_client_cert needs a ca_list to verify client certificates against")]
    RequireWithoutCa,
    /// Anything else rustls refused.
    #[error("tls: {0}")]
    Other(String),
}

/// The rustls server configuration of a socket: its certificate chain and key, and the client
/// certificate policy (verified against `ca_pem` when given; required when
/// `require_client_cert`).
pub fn tls_server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = certificates(&m.cert_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsConfigError::NoCertificate,
        e => TlsConfigError::CertificatePem(e.to_string()),
    })?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsConfigError::NoKey,
        e => TlsConfigError::KeyPem(e.to_string()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Other(e.to_string()))?;
    let builder = match &m.ca_pem {
        Some(ca_pem) => {
            let cas = certificates(ca_pem).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    TlsConfigError::CaList("no CERTIFICATE block in the PEM".into())
                }
                e => TlsConfigError::CaList(format!("bad PEM: {e}")),
            })?;
            let mut roots = RootCertStore::empty();
            for (i, ca) in cas.into_iter().enumerate() {
                roots
                    .add(ca)
                    .map_err(|e| TlsConfigError::CaList(format!("certificate {}: {e}", i + 1)))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if m.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsConfigError::CaList(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if m.require_client_cert => return Err(TlsConfigError::RequireWithoutCa),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsConfigError::KeyMismatch
        }
        e => TlsConfigError::Unusable(e.to_string()),
    })?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM text; `NoItemsFound` when there is none.
fn certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(pem::Error::NoItemsFound);
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(names: &[&str]) -> (TlsMaterial, rcgen::CertifiedKey<rcgen::KeyPair>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (
            TlsMaterial {
                cert_pem: ck.cert.pem(),
                key_pem: ck.signing_key.serialize_pem(),
                ca_pem: None,
                require_client_cert: false,
            },
            ck,
        )
    }

    #[test]
    fn a_self_signed_certificate_loads() {
        let (m, _) = material(&["localhost"]);
        tls_server_config(&m).unwrap();
        let (ca, _) = material(&["ca"]);
        let with_ca = TlsMaterial {
            ca_pem: Some(ca.cert_pem.clone()),
            require_client_cert: true,
            ..m.clone()
        };
        tls_server_config(&with_ca).unwrap();
        let optional = TlsMaterial {
            require_client_cert: false,
            ..with_ca
        };
        tls_server_config(&optional).unwrap();
    }

    #[test]
    fn errors_name_what_failed() {
        let (m, _) = material(&["localhost"]);
        let (other, _) = material(&["other"]);
        let err = |m: TlsMaterial| tls_server_config(&m).unwrap_err();
        assert_eq!(
            err(TlsMaterial {
                cert_pem: "nothing here".into(),
                ..m.clone()
            }),
            TlsConfigError::NoCertificate
        );
        let cut = m.cert_pem.replace("-----END CERTIFICATE-----", "");
        let e = err(TlsMaterial {
            cert_pem: cut,
            ..m.clone()
        });
        assert!(matches!(e, TlsConfigError::CertificatePem(_)), "{e:?}: {e}");
        assert!(e.to_string().starts_with("certificate: bad PEM"), "{e}");
        assert_eq!(
            err(TlsMaterial {
                key_pem: m.cert_pem.clone(),
                ..m.clone()
            }),
            TlsConfigError::NoKey
        );
        assert_eq!(
            err(TlsMaterial {
                key_pem: other.key_pem.clone(),
                ..m.clone()
            }),
            TlsConfigError::KeyMismatch
        );
        assert_eq!(
            TlsConfigError::KeyMismatch.to_string(),
            "private key does not match the certificate"
        );
        let e = err(TlsMaterial {
            ca_pem: Some(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            ),
            ..m.clone()
        });
        assert!(e.to_string().starts_with("ca_list: "), "{e}");
        let e = err(TlsMaterial {
            ca_pem: Some(String::new()),
            ..m.clone()
        });
        assert_eq!(e.to_string(), "ca_list: no CERTIFICATE block in the PEM");
        assert_eq!(
            err(TlsMaterial {
                require_client_cert: true,
                ..m
            }),
            TlsConfigError::RequireWithoutCa
        );
    }
}
