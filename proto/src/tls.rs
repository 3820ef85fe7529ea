//! TLS on every gRPC hop: the cluster CA derived from the secret, node certificates issued
//! from it, and operator-supplied certificates.
//!
//! The CA's Ed25519 key is derived from the cluster secret, and its certificate is built
//! deterministically (fixed serial, validity and names), so every holder of the secret
//! computes the same CA: a node started by hand with nothing but `--secret-file` issues itself
//! a certificate at start-up (a fresh key that never leaves memory) and every other node
//! trusts it. Clients without the secret verify with the CA certificate, which `redcloud ca`
//! prints and `redcloud dev` writes next to its secret.
//!
//! Servers are verified against one fixed name, [`SERVER_NAME`], not their address: nodes
//! move between addresses (containers, DHCP) and a client dials whatever address the
//! controller handed out. An operator who brings certificates (`--tls-cert`, `--tls-key`,
//! `--ca-file`) issues them for that name.
//!
//! Peers authenticate with the credentials of [`crate::trust`]; TLS gives them a private,
//! server-authenticated channel, so neither passwords, tokens, grants nor chunk bytes cross
//! the network in the clear.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ED25519, SerialNumber,
};
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::transport::Transport;
use crate::trust::ClusterSecret;

/// The name every redcloud server's certificate carries and every client verifies.
pub const SERVER_NAME: &str = "redcloud";

/// Largest certificate or key file read (a chain of a few certificates).
const MAX_PEM_FILE: u64 = 256 << 10;

/// Why TLS material could not be made or read.
#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError(format!("{what}: {e}"))
}

/// The cluster CA: derived from the secret, the same on every node.
pub struct ClusterCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterCa(..)")
    }
}

impl ClusterCa {
    pub fn from_secret(secret: &ClusterSecret) -> Result<ClusterCa, TlsError> {
        // PKCS#8 v1 of an Ed25519 key (RFC 8410): a fixed prefix and the 32-byte seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&secret.derive("tls ca key"));
        let key =
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_ED25519)
                .map_err(err("deriving the cluster CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "redcloud cluster CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(4096, 1, 1);
        params.serial_number = Some(SerialNumber::from_slice(
            &secret.derive("tls ca serial")[..16],
        ));
        let cert = params
            .self_signed(&key)
            .map_err(err("building the cluster CA certificate"))?;
        Ok(ClusterCa { key, cert })
    }

    /// The CA certificate in PEM: what clients verify servers with.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for [`SERVER_NAME`] with a fresh key, signed by this CA.
    pub fn issue(&self) -> Result<ServerIdentity, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(err("generating a node key"))?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(err("node certificate"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, SERVER_NAME);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(err("signing the node certificate"))?;
        Ok(ServerIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A server's certificate chain and key, in PEM. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ServerIdentity {
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerIdentity(..)")
    }
}

impl ServerIdentity {
    pub fn to_tonic(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The certificate chain (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Certificate files an operator brings instead of the derived CA; every field optional.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA that signed every node's certificate (clients and nodes verify with it).
    pub ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), issued for [`SERVER_NAME`].
    pub cert: Option<PathBuf>,
    /// Its private key (PEM; readable by its owner only).
    pub key: Option<PathBuf>,
}

/// What a node needs for TLS: how it dials other nodes and what it serves with.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// How this node dials other nodes.
    pub client: Transport,
    /// What its servers present; `None` serves plaintext (only without a secret).
    pub server: Option<ServerIdentity>,
}

impl NodeTls {
    /// TLS from operator files where given, else from the CA derived from `secret`. With
    /// neither (a node started `--insecure`), plaintext.
    pub fn new(secret: Option<&ClusterSecret>, files: &TlsFiles) -> Result<NodeTls, TlsError> {
        let derived = secret.map(ClusterCa::from_secret).transpose()?;
        let server = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(ServerIdentity {
                cert_pem: read_pem(cert, false)?,
                key_pem: read_pem(key, true)?,
            }),
            (None, None) => derived.as_ref().map(ClusterCa::issue).transpose()?,
            _ => {
                return Err(TlsError(
                    "--tls-cert and --tls-key go together: give both or neither".into(),
                ));
            }
        };
        let client = match (&files.ca, &derived) {
            (Some(ca), _) => Transport::tls(read_pem(ca, false)?.as_bytes()),
            (None, Some(ca)) => Transport::tls(ca.cert_pem().as_bytes()),
            (None, None) if server.is_some() => {
                return Err(TlsError(
                    "a node with its own certificate needs --ca-file (or a cluster secret) to \
                     verify the others"
                        .into(),
                ));
            }
            (None, None) => Transport::plaintext(),
        };
        Ok(NodeTls { client, server })
    }
}

/// Reads a PEM file (a key only if its owner alone can read it).
pub fn read_pem(path: &Path, private: bool) -> Result<String, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?;
    if private && meta.permissions().mode() & 0o077 != 0 {
        return Err(TlsError(format!(
            "key file {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(TlsError(format!(
            "{} is too large for a certificate or key",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(TlsError(format!("{} is not a PEM file", path.display())));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_a_function_of_the_secret() {
        let a = ClusterSecret::from_bytes([1; 32]);
        let b = ClusterSecret::from_bytes([2; 32]);
        let pem = ClusterCa::from_secret(&a).unwrap().cert_pem();
        assert_eq!(pem, ClusterCa::from_secret(&a).unwrap().cert_pem());
        assert_ne!(pem, ClusterCa::from_secret(&b).unwrap().cert_pem());
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn half_an_operator_identity_is_refused() {
        let files = TlsFiles {
            cert: Some("/nonexistent/cert.pem".into()),
            ..TlsFiles::default()
        };
        let e = NodeTls::new(None, &files).unwrap_err();
        assert!(e.0.contains("go together"), "{e}");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_pem(&key, true).unwrap_err();
        assert!(e.0.contains("readable by others"), "{e}");
    }
}
