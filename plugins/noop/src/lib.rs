//! A connector that grants nothing: the smallest complete connector, used to measure
//! the host's per-call overhead and to exercise the lifecycle without a downstream.

use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Verdict, export_connector,
};

struct Noop;

impl Connector for Noop {
    fn describe() -> ConnectorInfo {
        ConnectorInfo::new("noop", env!("CARGO_PKG_VERSION"), "none")
            .with_description("Grants nothing; for benchmarks and tests")
            .with_action("use", "does nothing", "any string")
            .with_capabilities(Capabilities::REVOCABLE | Capabilities::CAN_VERIFY)
    }

    /// Nothing is ever created downstream, so nothing can be left there.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        Ok(Vec::new())
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        Ok(Issued::new(grant.id, Credential::new([("token", "noop")])))
    }

    fn revoke(_: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
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

export_connector!(Noop);
