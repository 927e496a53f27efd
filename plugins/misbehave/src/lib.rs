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
//! `describe` always behaves, so the host can load it. `revoke` follows the `revoke`
//! setting (`fail`: unavailable; `hang`: waits a minute without using the CPU, a
//! downstream system that does not answer; otherwise succeeds) and `verify-revoked` the
//! `verify` setting (`residual`: reports a session; `fail`: unavailable; otherwise
//! revoked), so tests can simulate outages and access that will not go away. With
//! `by-value = "yes"` it behaves like a connector that revokes by the credential's
//! value (an OAuth token): it declares `revokes-by-value`, `revoke` fails without the
//! credential and `verify-revoked` cannot say `revoked` without it.

use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, Issued, Residue, ResidueKind,
    Verdict, config, export_connector, http,
};

struct Misbehave;

fn by_value() -> bool {
    config::get("by-value").as_deref() == Some("yes")
}

impl Connector for Misbehave {
    fn describe() -> ConnectorInfo {
        let mut capabilities = Capabilities::REVOCABLE | Capabilities::CAN_VERIFY;
        if by_value() {
            capabilities |= Capabilities::REVOKES_BY_VALUE;
        }
        ConnectorInfo::new("misbehave", env!("CARGO_PKG_VERSION"), "none")
            .with_description("Misbehaves on purpose, to test the host's sandbox")
            .with_action("use", "does nothing, badly", "any string")
            .with_capabilities(capabilities)
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
            "fail" => Err(Error::Unavailable("misbehave: issue failed".into())),
            _ => Ok(Issued::new(
                grant.id,
                Credential::new([("token", "misbehave-secret")]),
            )),
        }
    }

    fn revoke(_: Grant, _: Option<String>, credential: Option<Credential>) -> Result<(), Error> {
        if by_value() && credential.is_none() {
            return Err(Error::Invalid(
                "misbehave: no credential to revoke by".into(),
            ));
        }
        match config::get_or("revoke", "ok").as_str() {
            "fail" => Err(Error::Unavailable("misbehave: downstream is down".into())),
            "hang" => {
                std::thread::sleep(std::time::Duration::from_secs(60));
                Err(Error::Unavailable(
                    "misbehave: downstream never answered".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    fn verify_revoked(
        grant: Grant,
        _handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        if by_value() && credential.is_none() {
            return Ok(Verdict::Residual(vec![Residue::new(
                ResidueKind::TokenActive,
                "misbehave: the token cannot be checked without its value",
            )]));
        }
        match config::get_or("verify", "revoked").as_str() {
            "residual" => Ok(Verdict::Residual(vec![Residue::new(
                ResidueKind::SessionOpen,
                format!("misbehave: a session of {} is still open", grant.id),
            )])),
            "fail" => Err(Error::Unavailable(
                "misbehave: cannot reach downstream".into(),
            )),
            _ => Ok(Verdict::Revoked),
        }
    }
}

export_connector!(Misbehave);
