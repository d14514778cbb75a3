//! `cairn plugin upgrade|rollback|history`: move an install between
//! versions of its plugin from the command line, the same explicit act as
//! `PATCH /v1/installs/{id}` and `POST /v1/installs/{id}/rollback`, and read
//! why an install runs the version it runs.

use serde_json::{Value as Json, json};

use super::push::{base_url, client, send};

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server base URL.
    pub server: String,
    /// The tenant's API key.
    pub key: String,
    /// The install.
    pub install: String,
}

fn url(target: &Target, suffix: &str) -> anyhow::Result<String> {
    Ok(format!("{}/v1/installs/{}{suffix}", base_url(&target.server)?, target.install))
}

/// One line for an install's version, as the server reports it.
fn describe(install: &Json) -> String {
    format!(
        "install {} now runs {} {} ({})",
        install["id"].as_str().unwrap_or("?"),
        install["plugin"].as_str().unwrap_or(""),
        install["plugin_version"].as_str().unwrap_or("?"),
        install["plugin_version_id"].as_str().unwrap_or("?"),
    )
}

/// Move the install to `version` (health-checked by the server; refused
/// with its reason when the version fails).
pub async fn upgrade(target: &Target, version: &str) -> anyhow::Result<Json> {
    let request =
        client()?.patch(url(target, "")?).bearer_auth(&target.key).json(&json!({"plugin_version_id": version}));
    let (_, install) = send(request, "upgrading the install").await?;
    println!("{}", describe(&install));
    Ok(install)
}

/// Put the install back on `version`, or on the version before its latest change.
pub async fn rollback(target: &Target, version: Option<&str>) -> anyhow::Result<Json> {
    let mut request = client()?.post(url(target, "/rollback")?).bearer_auth(&target.key);
    if let Some(v) = version {
        request = request.json(&json!({"plugin_version_id": v}));
    }
    let (_, install) = send(request, "rolling the install back").await?;
    println!(
        "install {} rolled back to {} ({})",
        target.install,
        install["plugin_version"].as_str().unwrap_or("?"),
        install["plugin_version_id"].as_str().unwrap_or("?")
    );
    Ok(install)
}

/// Print the install's version changes, newest first.
pub async fn history(target: &Target) -> anyhow::Result<()> {
    let request = client()?.get(url(target, "/history")?).bearer_auth(&target.key);
    let (_, body) = send(request, "reading the install's history").await?;
    for change in body["items"].as_array().into_iter().flatten() {
        println!(
            "{}  {:<16} {} -> {}  {}",
            change["at"],
            change["action"].as_str().unwrap_or(""),
            change["from_version"].as_str().unwrap_or("-"),
            change["to_version"].as_str().unwrap_or("-"),
            change["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
