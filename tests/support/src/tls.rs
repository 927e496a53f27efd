//! Certificates for TLS tests: a fresh CA per test and server certificates it
//! signs (rcgen; nothing from outside the test).

/// A certificate authority that exists for one test.
#[expect(
    missing_debug_implementations,
    reason = "holds a private key; nothing to show"
)]
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ebb test CA");
        let cert = params.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (host names or IP addresses) and its key,
    /// both PEM.
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes the certificate of a CA that signed nothing to a temporary PEM file: a
/// trust anchor that must not make any test server's certificate verify.
pub fn unrelated_ca_file(tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let path =
        std::env::temp_dir().join(format!("ebb-unrelated-ca-{tag}-{}.pem", std::process::id()));
    std::fs::write(&path, TestCa::new()?.pem())?;
    Ok(path)
}
