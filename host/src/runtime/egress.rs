//! Outbound HTTP for plugins: only to granted hosts, never to loopback or
//! private networks unless the operator allows it, with size and time caps.
//!
//! Why the address check: a tenant can grant any host name, including one
//! that resolves to 127.0.0.1 or 10.0.0.5; without it a plugin could reach the
//! server's own admin API, the database, or the cloud metadata service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::runtime::grants::Grants;

/// Largest request or response body: stops a plugin from moving large data
/// in or out through the host.
pub const MAX_BODY: usize = 1 << 20;

/// An outbound request refused or failed; the message is shown to the plugin.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The URL or method is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The host was not granted or resolves to a refused address.
    #[error("{0}")]
    Denied(String),
    /// Network failure or timeout.
    #[error("{0}")]
    Unavailable(String),
}

/// The HTTP client plus the operator's policy.
#[derive(Debug, Clone)]
pub struct Egress {
    client: reqwest::Client,
    /// Allow loopback and private addresses (development and the demo).
    pub allow_private: bool,
}

/// A response as the plugin sees it.
pub struct EgressResponse {
    /// Status code.
    pub status: u16,
    /// Headers (values that are not UTF-8 are dropped).
    pub headers: Vec<(String, String)>,
    /// Body, truncated to [`MAX_BODY`].
    pub body: Vec<u8>,
}

impl Egress {
    /// A client with a connect timeout and no redirects (a redirect could
    /// lead to a host that was not granted).
    pub fn new(allow_private: bool) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("cairn-plugin/0.1")
            .build()?;
        Ok(Egress { client, allow_private })
    }

    /// Send a request on behalf of a plugin with `grants`, within `timeout`.
    pub async fn send(
        &self,
        grants: &Grants,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<EgressResponse, EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| EgressError::Invalid(format!("bad url `{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EgressError::Invalid(format!("scheme `{}` is not http or https", parsed.scheme())));
        }
        let host =
            parsed.host_str().ok_or_else(|| EgressError::Invalid("url has no host".into()))?.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if !grants.http_hosts.contains(&host) {
            return Err(EgressError::Denied(format!("host `{host}` was not granted to this install")));
        }
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|m| matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE"))
            .ok_or_else(|| EgressError::Invalid(format!("method `{method}` is not allowed")))?;
        if body.len() > MAX_BODY {
            return Err(EgressError::Invalid(format!("request body over {MAX_BODY} bytes")));
        }
        if !self.allow_private {
            let port = parsed.port_or_known_default().unwrap_or(80);
            self.check_addresses(&host, port).await?;
        }
        let mut request = self.client.request(method, parsed).timeout(timeout).body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response =
            request.send().await.map_err(|e| EgressError::Unavailable(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| EgressError::Unavailable(format!("reading response: {e}")))?
        {
            let room = MAX_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Ok(EgressResponse { status, headers, body })
    }

    async fn check_addresses(&self, host: &str, port: u16) -> Result<(), EgressError> {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| EgressError::Unavailable(format!("cannot resolve `{host}`: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        match addrs.iter().find(|ip| is_internal(ip)) {
            Some(ip) => Err(EgressError::Denied(format!(
                "host `{host}` resolves to {ip}, a loopback or private address the operator has not allowed"
            ))),
            None => Ok(()),
        }
    }
}

/// Loopback, private, link-local, CGNAT, unspecified, multicast or other
/// non-public addresses.
pub fn is_internal(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(&v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || *v6 == Ipv6Addr::LOCALHOST
        }
    }
}

fn is_internal_v4(v4: &Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_internal(&ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_internal(&ip.parse().unwrap()), "{ip} should be public");
        }
    }
}
