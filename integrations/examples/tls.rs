//! The reference server over HTTPS: TLS handshakes in progress when the drain
//! starts complete, and their requests are served.
//!
//! ```text
//! cargo run --release -p tower-drain-integrations --features rustls --example tls -- \
//!     [--addr ADDR] [--reuse-port] [--handoff PATH] [--grace SECS] [--lame-duck SECS] [--upgrade-on SIGNAL] [--cert CERT.pem --key KEY.pem]
//! ```
//!
//! Without `--cert`/`--key` it makes a self-signed certificate for
//! `localhost` at start-up, writes it to a temporary file, and prints the
//! `curl` command that trusts it. Routes, signals and exit codes are those of
//! `examples/server.rs`; a missing or invalid certificate or key exits 2.

#[path = "../../examples/logging/mod.rs"]
mod logging;
#[path = "../../examples/reference/mod.rs"]
mod reference;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use tokio_rustls::rustls::{
    crypto::ring,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};
use tower_drain::TlsAccept;

#[tokio::main]
async fn main() -> ExitCode {
    let usage = reference::usage("tls", true, 3443);
    let options = match reference::parse_args(&usage, true, 3443) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let ((certs, key), self_signed_pem) = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => match load_pem(cert, key) {
            Ok(pair) => (pair, None),
            Err(message) => return reference::usage_error(&usage, &message),
        },
        (None, None) => match self_signed() {
            Ok((pair, pem)) => (pair, Some(pem)),
            Err(message) => return reference::fail(message),
        },
        _ => return reference::usage_error(&usage, "--cert and --key go together"),
    };
    let config = match server_config(certs, key) {
        Ok(config) => config,
        Err(message) => return reference::usage_error(&usage, &message),
    };
    logging::init("info");
    let watch = match reference::watch(&options) {
        Ok(watch) => watch,
        Err(code) => return code,
    };
    let listener = match reference::listen(&options, &watch).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    if let (Some(pem), Ok(addr)) = (self_signed_pem, listener.local_addr()) {
        eprintln!(
            "self-signed certificate for localhost in {pem}; call it with\n  curl --cacert {pem} https://localhost:{port}/",
            pem = pem.display(),
            port = addr.port(),
        );
    }
    let listener = TlsAccept::new(listener, config);
    reference::serve(listener, watch).await
}

type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_pem(cert: &Path, key: &Path) -> Result<CertAndKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--key {}: {e}", key.display()))?;
    Ok((certs, key))
}

/// A self-signed certificate for localhost, also written as PEM to a
/// temporary file for `curl --cacert`.
fn self_signed() -> Result<(CertAndKey, PathBuf), String> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let path = std::env::temp_dir().join(format!("tower-drain-{}.pem", std::process::id()));
    std::fs::write(&path, cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    Ok(((vec![cert.der().clone()], key), path))
}

/// A rustls config with the ring provider (see the README for why).
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .map_err(|e| format!("invalid certificate or key: {e}"))
}
