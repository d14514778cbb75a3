//! Capabilities granted to one install, parsed once when it is loaded.
//!
//! Grants are stored as strings (`store-read`, `store-write`, `state`,
//! `http:hooks.example.com`) so they read well in the API and the database.

use std::collections::BTreeSet;

/// What an install may do through host imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Read contacts and events beyond the call's input.
    pub store_read: bool,
    /// Write to the store.
    pub store_write: bool,
    /// Use its own key-value state.
    pub state: bool,
    /// Host names reachable over outbound HTTP (exact, lowercase).
    pub http_hosts: BTreeSet<String>,
}

/// A grant string that is not one of the known forms.
#[derive(Debug, thiserror::Error)]
#[error("unknown capability `{0}` (expected store-read, store-write, state or http:<host>)")]
pub struct UnknownCapability(pub String);

impl Grants {
    /// Parse grant strings.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Grants, UnknownCapability> {
        let mut out = Grants::default();
        for grant in grants {
            let grant = grant.as_ref().trim();
            match grant {
                "store-read" => out.store_read = true,
                "store-write" => out.store_write = true,
                "state" => out.state = true,
                _ => match grant.strip_prefix("http:") {
                    // A wildcard would let a plugin reach anything; the admin
                    // names each host.
                    Some(host) if !host.is_empty() && !host.contains('*') && !host.contains('/') => {
                        out.http_hosts.insert(host.to_ascii_lowercase());
                    }
                    _ => return Err(UnknownCapability(grant.to_string())),
                },
            }
        }
        Ok(out)
    }

    /// Everything: for prebuilt plugins in the demo and for tests.
    pub fn all_store() -> Grants {
        Grants { store_read: true, store_write: true, state: true, http_hosts: BTreeSet::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_known_forms_and_refuse_wildcards() {
        let g = Grants::parse(&["store-read", "http:Hooks.Example.com", "state"]).unwrap();
        assert!(g.store_read && g.state && !g.store_write);
        assert!(g.http_hosts.contains("hooks.example.com"));
        assert!(Grants::parse(&["http:*"]).is_err());
        assert!(Grants::parse(&["filesystem"]).is_err());
    }
}
