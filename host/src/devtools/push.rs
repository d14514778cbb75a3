//! `cairn plugin push`: upload the component to a server (`POST
//! /v1/plugins`), and with `--install` install it for the tenant (`POST
//! /v1/installs`) with a config and the capabilities it asks for.
//!
//! Only the public HTTP API is used, with the tenant's key, so pushing is
//! exactly what a CI job or `curl` could do. The server's answer to a
//! refusal (`{"error": {"code", "message"}}`, a 422 naming the config
//! field that breaks the plugin's schema, ...) is shown as it came.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use super::build::{human_size, resolve_wasm};

/// Longest time one request may take (a large component on a slow link).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What to push and where.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The crate whose release build is pushed (unless `plugin`).
    pub crate_dir: PathBuf,
    /// A `.wasm` file to push instead.
    pub plugin: Option<PathBuf>,
    /// Server base URL.
    pub server: String,
    /// The tenant's API key.
    pub key: String,
    /// Also install it.
    pub install: bool,
    /// The install's config: JSON text, or `@file.json`.
    pub config: Option<String>,
    /// Grants; `None`: what the plugin asks for.
    pub grants: Option<Vec<String>>,
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The plugin version (`GET /v1/plugins/{id}` shape).
    pub version: Json,
    /// Whether the upload made a new version (201) or found these exact
    /// bytes already there (200).
    pub created: bool,
    /// The install, with `--install`.
    pub install: Option<Json>,
}

/// An HTTP client for the CLI's calls.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().context("building the HTTP client")
}

/// `server` without a trailing slash, checked to be an http(s) URL.
pub fn base_url(server: &str) -> anyhow::Result<String> {
    let base = server.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--server `{server}` is not a URL: give it like http://127.0.0.1:7700 (or set CAIRN_URL)");
    }
    Ok(base.to_string())
}

/// Send a request; a non-2xx answer becomes an error quoting the server's
/// body as it came.
pub async fn send(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<(u16, Json)> {
    let response = request.send().await.with_context(|| format!("{what}: the server could not be reached"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("{what}: reading the answer"))?;
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 => " (check --key / CAIRN_API_KEY: it must be the tenant's API key)",
            403 => " (this key may not do that: use the tenant's API key)",
            _ => "",
        };
        bail!("{what} answered {status}{hint}: {text}");
    }
    let body =
        if text.trim().is_empty() { Json::Null } else { serde_json::from_str(&text).unwrap_or(Json::String(text)) };
    Ok((status.as_u16(), body))
}

/// The install's config from `--config`: JSON text or `@file`.
fn parse_config(config: Option<&str>) -> anyhow::Result<Json> {
    let Some(text) = config else { return Ok(json!({})) };
    let (text, from) = match text.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(Path::new(path)).with_context(|| format!("--config: reading {path}"))?,
            format!(" (in {path})"),
        ),
        None => (text.to_string(), String::new()),
    };
    let value: Json = serde_json::from_str(&text).with_context(|| format!("--config{from} is not JSON"))?;
    if !value.is_object() {
        bail!("--config{from} must be a JSON object, like {{\"tag\": \"vip\"}}");
    }
    Ok(value)
}

/// Upload (and install).
pub async fn push(request: &PushRequest) -> anyhow::Result<Pushed> {
    let base = base_url(&request.server)?;
    if request.key.trim().is_empty() {
        bail!("no API key: pass --key <tenant key> or set CAIRN_API_KEY");
    }
    // Check the config before uploading, so a typo does not leave an
    // uploaded but uninstalled version behind.
    let config = if request.install { Some(parse_config(request.config.as_deref())?) } else { None };
    if !request.install && (request.config.is_some() || request.grants.is_some()) {
        bail!("--config and --grant only apply with --install");
    }
    let wasm = resolve_wasm(&request.crate_dir, request.plugin.as_deref())?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    eprintln!("uploading {} ({}) to {base}", wasm.display(), human_size(bytes.len() as u64));
    let http = client()?;
    let upload = http
        .post(format!("{base}/v1/plugins"))
        .bearer_auth(request.key.trim())
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes);
    let (status, version) = send(upload, "POST /v1/plugins").await?;
    let Some(version_id) = version["id"].as_str().map(str::to_string) else {
        bail!("POST /v1/plugins answered without a plugin version id: {version}");
    };
    let mut pushed = Pushed { version, created: status == 201, install: None };
    let Some(config) = config else { return Ok(pushed) };

    let grants: Vec<String> = match &request.grants {
        Some(g) => g.clone(),
        None => pushed.version["description"]["capabilities"]
            .as_array()
            .map(|caps| caps.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    };
    let body = json!({"plugin_version_id": version_id, "config": config, "grants": grants});
    let install = http.post(format!("{base}/v1/installs")).bearer_auth(request.key.trim()).json(&body);
    let (_, installed) = send(install, "POST /v1/installs").await?;
    pushed.install = Some(installed);
    Ok(pushed)
}

/// `cairn plugin push`: push and print the ids.
pub async fn run(request: &PushRequest) -> anyhow::Result<()> {
    let pushed = push(request).await?;
    let v = &pushed.version;
    let text = |j: &Json| j.as_str().unwrap_or("?").to_string();
    let already = if pushed.created { "" } else { " (these exact bytes were already there)" };
    println!("uploaded {} {}{already}", text(&v["name"]), text(&v["version"]));
    println!("  plugin_version_id: {}", text(&v["id"]));
    // Installs that follow the plugin (auto-upgrade) moved or stayed: say which.
    if let Some(upgrades) = v["upgrades"].as_array().filter(|u| !u.is_empty()) {
        println!("  auto-upgrades: {}", Json::Array(upgrades.clone()));
    }
    if let Some(install) = &pushed.install {
        println!("installed with grants {} and config {}", install["grants"], install["config"]);
        println!("  install_id: {}", text(&install["id"]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_and_configs_are_checked() {
        assert_eq!(base_url("http://127.0.0.1:7700/").unwrap(), "http://127.0.0.1:7700");
        assert!(base_url("127.0.0.1:7700").is_err());
        assert_eq!(parse_config(None).unwrap(), json!({}));
        assert_eq!(parse_config(Some(r#"{"tag": "vip"}"#)).unwrap(), json!({"tag": "vip"}));
        assert!(parse_config(Some("{tag: vip}")).is_err());
        assert!(parse_config(Some("[1]")).is_err());
    }
}
