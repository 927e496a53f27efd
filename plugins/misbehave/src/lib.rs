//! A hostile connector for testing the runtime's guarantees. The operator's config
//! setting `mode` picks how `issue` misbehaves:
//!
//! - `trap`: panics (a trap in the host's eyes)
//! - `loop`: spins forever
//! - `grow`: allocates memory without bound
//! - `http`: calls the URL in the `url` setting (meant to be off its allow-list)
//! - `huge`: returns a handle of `size` bytes (default 8 MiB)
//! - anything else: behaves.
//!
//! `describe`, `revoke` and `verify-revoked` always behave, so the host can load it.

use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, Issued, Verdict, config,
    export_connector, http,
};

struct Misbehave;

impl Connector for Misbehave {
    fn describe() -> ConnectorInfo {
        ConnectorInfo::new("misbehave", env!("CARGO_PKG_VERSION"), "none")
            .with_description("Misbehaves on purpose, to test the host's sandbox")
            .with_capabilities(Capabilities::REVOCABLE)
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        match config::get_or("mode", "behave").as_str() {
            "trap" => {
                #[expect(clippy::panic, reason = "trapping is this mode's purpose")]
                {
                    panic!("misbehave: trapping on purpose")
                }
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            "http" => {
                let url = config::require("url")?;
                let response = http::Request::get(&url).send()?;
                Ok(Issued::new(
                    format!("status {}", response.status),
                    Credential::default(),
                ))
            }
            "huge" => {
                let size: usize = config::get_or("size", "8388608")
                    .parse()
                    .map_err(|_| Error::Invalid("size must be a number".into()))?;
                Ok(Issued::new("x".repeat(size), Credential::default()))
            }
            _ => Ok(Issued::new(grant.id, Credential::default())),
        }
    }

    fn revoke(_grant: Grant, _handle: Option<String>) -> Result<(), Error> {
        Ok(())
    }

    fn verify_revoked(
        _grant: Grant,
        _handle: Option<String>,
        _credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        Ok(Verdict::Revoked)
    }
}

export_connector!(Misbehave);
