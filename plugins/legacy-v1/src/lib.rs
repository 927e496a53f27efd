//! A connector built against `ebb:connector@0.1.0`, as every connector was before
//! 0.2.0: the host must keep loading it and adapt it (no `validate`, no `inventory`).
//! Grants nothing downstream, like `noop`; tests use it to prove the adaptation.

#[allow(clippy::all, reason = "bindgen-generated code")]
mod wit {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ebb:connector/plugin@0.1.0",
        generate_all,
    });
}

use wit::ebb::connector0_1_0::types::{
    ActionInfo, Capabilities, ConnectorInfo, Credential, Error, Grant, Issued, Residue, Secret,
    Subject, Verdict,
};
use wit::exports::ebb::connector0_1_0::connector::Guest;

struct Legacy;

impl Guest for Legacy {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            name: "legacy".into(),
            version: "0.1.0".into(),
            system: "none".into(),
            description: "Grants nothing; built against ebb:connector@0.1.0".into(),
            actions: vec![ActionInfo {
                name: "use".into(),
                description: "does nothing".into(),
                resource_syntax: "any string".into(),
            }],
            capabilities: Capabilities::REVOCABLE | Capabilities::CAN_VERIFY,
        }
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        // What a 0.2.0 connector's `validate` would refuse up front, this one can only
        // refuse here, after approval.
        if let Some(p) = grant
            .permissions
            .iter()
            .find(|p| p.resource.starts_with('!'))
        {
            return Err(Error::Invalid(format!(
                "`{}` is not a resource",
                p.resource
            )));
        }
        Ok(Issued {
            handle: grant.id,
            credential: Credential {
                fields: vec![Secret {
                    name: "token".into(),
                    value: "legacy".into(),
                }],
            },
            expires_at: None,
        })
    }

    fn revoke(_: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        Ok(())
    }

    fn verify_revoked(
        _: Grant,
        _: Option<String>,
        _: Option<Credential>,
    ) -> Result<Verdict, Error> {
        Ok(Verdict::Revoked)
    }

    fn verify_issued(_: Grant, _: String, _: Credential) -> Result<(), Error> {
        Err(Error::Unsupported("verify-issued".into()))
    }

    fn standing_access(_: Subject) -> Result<Vec<Residue>, Error> {
        Err(Error::Unsupported("standing-access".into()))
    }
}

wit::export!(Legacy with_types_in wit);
