//! `cairn plugin new|build|test|push|replay`, run as a developer runs them:
//! the real `cairn` binary, real nested cargo builds, a real server.
//!
//! - the README's flow: a new action crate is built, passes its fixtures in
//!   the sandbox (with fuel and memory shown against their limits), is pushed
//!   and installed, and a workflow using it tags a contact;
//! - every kind's generated crate passes its own `cargo test`, builds to
//!   wasm32-wasip2 and passes `plugin test` as generated;
//! - a fixture whose `expect` differs fails `plugin test`, naming it;
//! - `plugin replay --input` runs a recorded call again and shows the
//!   recorded outcome next to the new one;
//! - `plugin new` refuses bad names, existing folders and missing SDKs.
//!
//! Build time: every nested cargo shares one target directory
//! (`target/plugin-cli-tests`), so the SDK's dependencies are built once per
//! profile and target, and runs `--offline` against the copied Cargo.lock.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cairn::demo::{Client, wait_for};
use cairn::store::testing::TempSqlite;
use common::{ADMIN_KEY, PATIENCE, World};
use reqwest::Method;
use serde_json::{Value, json};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// The one target directory of every nested build.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("plugin-cli-tests")
}

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("cairn-{label}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command with the outer `cargo test`'s per-package variables removed
/// (they describe *this* crate, not the one being built) and the shared,
/// offline build settings.
fn command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" {
            cmd.env_remove(key.as_ref());
        }
    }
    // Plain error messages (no anyhow backtraces) in the asserted output.
    cmd.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    cmd.env("CARGO_TARGET_DIR", target_dir()).env("CARGO_NET_OFFLINE", "true").kill_on_drop(true);
    cmd
}

async fn run(cmd: &mut tokio::process::Command) -> Output {
    cmd.output().await.unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `cairn <args>`, which must succeed; its stdout.
async fn cairn_ok(args: &[&str]) -> String {
    let output = run(command(CAIRN).args(args)).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "cairn {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

/// `cairn <args>`, which must fail; (stdout, stderr).
async fn cairn_fails(args: &[&str]) -> (String, String) {
    let output = run(command(CAIRN).args(args)).await;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "cairn {args:?} should have failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// `cairn plugin new <kind> <name> --dir <parent>`; the crate's folder.
async fn new_plugin(kind: &str, name: &str, parent: &Path) -> PathBuf {
    let out = cairn_ok(&["plugin", "new", kind, name, "--dir", parent.to_str().unwrap()]).await;
    assert!(out.contains(&format!("created {kind} plugin `{name}`")), "{out}");
    parent.join(name)
}

/// `cairn plugin build <crate> --offline`; checks the reported component.
async fn build_plugin(dir: &Path) -> PathBuf {
    let out = cairn_ok(&["plugin", "build", dir.to_str().unwrap(), "--offline"]).await;
    let lib = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
    let wasm = target_dir().join("wasm32-wasip2").join("release").join(format!("{lib}.wasm"));
    assert!(out.contains(&wasm.display().to_string()) && out.contains("KiB"), "{out}");
    assert!(wasm.is_file(), "{} missing", wasm.display());
    wasm
}

/// A workflow JSON body: on event `kind`, run install `install`.
fn tag_workflow(kind: &str, install: &str) -> Value {
    json!({
        "name": "Tag VIP sign-ups",
        "trigger": {"type": "event", "kind": kind},
        "steps": [{"id": "tag", "type": "action", "install_id": install}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_action_goes_from_scaffold_to_tagging_contacts_in_a_workflow() {
    let tmp = TempDir::new("plugin-flow");
    let dir = new_plugin("action", "cli-flow-tagger", &tmp.0).await;
    for file in ["Cargo.toml", "Cargo.lock", "README.md", "src/lib.rs", "fixtures/tags-the-contact.json"] {
        assert!(dir.join(file).is_file(), "{file} generated");
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]") && manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"), "{manifest}");
    build_plugin(&dir).await;

    // A call recorded on a server (it failed there), replayed against this
    // build and kept as a fixture.
    let record = tmp.0.join("invocation.json");
    let invocation = json!({
        "id": "inv-1", "install_id": "ins-1", "kind": "execute", "ok": false,
        "error_cause": "trap", "error_message": "wasm trap: unreachable", "output_json": null,
        "at": 1_767_225_600_000_i64,
        "input": {"export": "execute", "config": {"tag": "vip"}, "contact": {"id": "c9", "first_name": "Grace"}}
    });
    std::fs::write(&record, invocation.to_string()).unwrap();
    let saved = dir.join("fixtures").join("replayed.json");
    let out = cairn_ok(&[
        "plugin",
        "replay",
        "--input",
        record.to_str().unwrap(),
        "--crate-dir",
        dir.to_str().unwrap(),
        "--save",
        saved.to_str().unwrap(),
    ])
    .await;
    assert!(out.contains("recorded: failed trap: wasm trap: unreachable"), "{out}");
    assert!(out.contains(r#"now:      ok {"changed":true,"tag":"vip"}"#), "{out}");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(fixture["call"]["contact"]["id"], "c9", "{fixture}");
    assert_eq!(fixture["now"], 1_767_225_600_000_i64, "{fixture}");

    // The generated fixtures and the replayed one pass in the sandbox, each
    // line showing what the call used against its limits.
    let out = cairn_ok(&["plugin", "test", dir.to_str().unwrap()]).await;
    assert!(out.contains("plugin  cli-flow-tagger 0.1.0 (action)"), "{out}");
    assert!(out.contains("4 fixtures: 4 passed, 0 failed"), "{out}");
    let line = out.lines().find(|l| l.starts_with("PASS  tags-the-contact.json")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(r#"ok {"changed":true,"tag":"vip"}"#), "{line}");
    assert!(line.contains("/50,000,000") && line.contains("/64.0 MiB") && line.contains("/500 ms"), "{line}");
    assert!(out.contains("failed plugin: invalid config: tag must have"), "{out}");

    // Push it to a server as a tenant, installed with its config, and use it
    // in a workflow.
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let url = world.server.url();
    let admin = Client::new(&url, ADMIN_KEY);
    let tenant = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "Plugin Dev"}))).await.unwrap();
    let key = tenant["api_key"].as_str().unwrap().to_string();
    let client = Client::new(&url, &key);

    let (_, err) =
        cairn_fails(&["plugin", "push", dir.to_str().unwrap(), "--server", &url, "--key", "wrong-key"]).await;
    assert!(err.contains("401") && err.contains("\"error\""), "{err}");

    let out = cairn_ok(&[
        "plugin",
        "push",
        dir.to_str().unwrap(),
        "--server",
        &url,
        "--key",
        &key,
        "--install",
        "--config",
        r#"{"tag": "vip"}"#,
    ])
    .await;
    assert!(out.contains("uploaded cli-flow-tagger 0.1.0"), "{out}");
    let install = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("install_id: "))
        .unwrap_or_else(|| panic!("no install id in:\n{out}"))
        .to_string();
    let installed = client.ok(Method::GET, &format!("/v1/installs/{install}"), None).await.unwrap();
    assert_eq!(installed["grants"], json!(["store-write"]), "granted what describe() asks for: {installed}");

    client.ok(Method::POST, "/v1/workflows?activate=true", Some(tag_workflow("vip_signup", &install))).await.unwrap();
    let contact = client.ok(Method::POST, "/v1/contacts", Some(json!({"email": "ada@example.com"}))).await.unwrap();
    let contact_id = contact["id"].as_str().unwrap().to_string();
    let event = json!({"contact_id": contact_id, "kind": "vip_signup"});
    client.ok(Method::POST, "/v1/events", Some(event)).await.unwrap();
    let tags = wait_for(PATIENCE, || async {
        let c = client.ok(Method::GET, &format!("/v1/contacts/{contact_id}"), None).await?;
        let tags = c["tags"].clone();
        Ok(tags.as_array().is_some_and(|t| t.iter().any(|t| t == "vip")).then_some(tags))
    })
    .await
    .unwrap_or_else(|e| panic!("the workflow never tagged the contact: {e}"));
    assert_eq!(tags, json!(["vip"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_passes_its_own_tests_builds_and_passes_its_fixtures_as_generated() {
    let tmp = TempDir::new("plugin-kinds");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for kind in ["scorer", "action", "trigger", "channel"] {
        let dir = new_plugin(kind, &format!("cli-kind-{kind}"), &tmp.0).await;
        let output = run(command(&cargo).current_dir(&dir).args(["test", "--offline", "--quiet"])).await;
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "cargo test of the {kind} crate failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("test result: ok."), "{stdout}");

        build_plugin(&dir).await;
        let out = cairn_ok(&["plugin", "test", dir.to_str().unwrap()]).await;
        assert!(out.contains(&format!("plugin  cli-kind-{kind} 0.1.0 ({kind})")), "{out}");
        assert!(out.contains("passed, 0 failed") && !out.contains("FAIL"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_whose_expect_differs_fails_the_run_and_is_named() {
    let tmp = TempDir::new("plugin-expect");
    let dir = new_plugin("scorer", "cli-expect-scorer", &tmp.0).await;
    build_plugin(&dir).await;
    let wrong = json!({
        "description": "expects the wrong score on purpose",
        "call": {"export": "score", "config": {"points": {"page_viewed": 5}}, "contact": {"id": "c1"},
                 "events": [{"kind": "page_viewed"}]},
        "expect": {"score": 999, "reasons": ["+5 page_viewed x1"]}
    });
    std::fs::write(dir.join("fixtures").join("wrong-score.json"), wrong.to_string()).unwrap();

    let (out, err) = cairn_fails(&["plugin", "test", dir.to_str().unwrap()]).await;
    let line = out.lines().find(|l| l.contains("wrong-score.json")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("FAIL") && line.contains(r#""score":5.0"#), "{line}");
    assert!(out.contains(r#"expected {"reasons":["+5 page_viewed x1"],"score":999}"#), "{out}");
    assert!(out.contains("PASS  points-per-event.json"), "the others still pass: {out}");
    assert!(err.contains("1 of 3 fixtures failed: wrong-score.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_call_that_still_fails_shows_both_outcomes_and_exits_non_zero() {
    let tmp = TempDir::new("plugin-replay");
    let record = tmp.0.join("invocation.json");
    let invocation = json!({
        "id": "inv-2", "install_id": "ins-2", "ok": false, "error_cause": "trap", "error_message": "panicked",
        "input": {"export": "score", "contact": {"id": "c1"}, "events": [{"kind": "page_viewed"}]}
    });
    std::fs::write(&record, invocation.to_string()).unwrap();
    let panics = Path::new(cairn::catalog::GUEST_DIR).join("guest_panic.wasm");
    let (out, err) =
        cairn_fails(&["plugin", "replay", "--input", record.to_str().unwrap(), "--plugin", panics.to_str().unwrap()])
            .await;
    assert!(out.contains("call      score of invocation inv-2 (install ins-2)"), "{out}");
    assert!(out.contains("recorded: failed trap: panicked"), "{out}");
    assert!(out.contains("now:      failed trap:") && out.contains("deliberate panic"), "{out}");
    assert!(err.contains("still fails"), "{err}");

    // A record whose input was not kept says so.
    std::fs::write(&record, json!({"id": "inv-3", "ok": false, "input": null}).to_string()).unwrap();
    let (_, err) =
        cairn_fails(&["plugin", "replay", "--input", record.to_str().unwrap(), "--plugin", panics.to_str().unwrap()])
            .await;
    assert!(err.contains("inv-3 has no recorded input"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_refuses_bad_names_existing_folders_and_missing_sdks() {
    let tmp = TempDir::new("plugin-refusals");
    let parent = tmp.0.to_str().unwrap();
    let (_, err) = cairn_fails(&["plugin", "new", "action", "My_Tagger", "--dir", parent]).await;
    assert!(err.contains("not a valid plugin name") && err.contains("a-z"), "{err}");
    let (_, err) = cairn_fails(&["plugin", "new", "action", "ok-name", "--dir", parent, "--sdk", parent]).await;
    assert!(err.contains("no Cargo.toml") && err.contains("--sdk"), "{err}");
    assert!(!tmp.0.join("ok-name").exists(), "nothing is created when refused");

    let dir = new_plugin("trigger", "cli-refusals", &tmp.0).await;
    let (_, err) = cairn_fails(&["plugin", "new", "action", "cli-refusals", "--dir", parent]).await;
    assert!(err.contains("already exists"), "{err}");
    // Not built yet: `plugin test` says what to run.
    let (_, err) = cairn_fails(&["plugin", "test", dir.to_str().unwrap()]).await;
    assert!(err.contains("cairn plugin build"), "{err}");
}

/// A free loopback port (bound, read, released: the server takes it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_watch_rebuilds_a_changed_plugin_and_hot_reloads_its_install() {
    let tmp = TempDir::new("watch");
    let dir = new_plugin("scorer", "watched-scorer", &tmp.0).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = command(CAIRN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--watch", dir.to_str().unwrap(), "--data-dir"])
        .arg(tmp.0.join("data"))
        .env("CAIRN_ADMIN_KEY", ADMIN_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A first build may compile the SDK's dependencies: be patient.
    let slow = std::time::Duration::from_secs(600);
    wait_for(slow, || async { Ok(reqwest::get(format!("{url}/healthz")).await.ok().map(|_| ())) }).await.unwrap();
    let admin = Client::new(&url, ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "dev"}))).await.unwrap();
    let client = Client::new(&url, created["api_key"].as_str().unwrap());

    // The watcher built the crate at start and stored it as a dev version.
    let version = wait_for(slow, || async {
        let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
        Ok(plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "watched-scorer").cloned())
    })
    .await
    .expect("the first build is uploaded");
    assert!(version["version"].as_str().unwrap().starts_with("0.1.0-dev."), "{version}");
    let install = client
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": version["id"], "config": {"points": {"page_viewed": 5}}})),
        )
        .await
        .unwrap();
    let install = install["id"].as_str().unwrap().to_string();
    let contact = client.ok(Method::POST, "/v1/contacts", Some(json!({"email": "w@example.com"}))).await.unwrap();
    let contact = contact["id"].as_str().unwrap().to_string();
    let scored = |n: f64| {
        let (client, contact) = (&client, &contact);
        async move {
            client
                .ok(Method::POST, "/v1/events", Some(json!({"contact_id": contact, "kind": "page_viewed"})))
                .await
                .unwrap();
            wait_for(slow, || async {
                let c = client.ok(Method::GET, &format!("/v1/contacts/{contact}"), None).await?;
                Ok((c["score"] == json!(n)).then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("never scored {n}: {e}"));
        }
    };
    scored(5.0).await;

    // Change the source: the watcher rebuilds and moves the install to it.
    let lib = dir.join("src").join("lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("let mut value = 0.0;"), "the template changed: update this test");
    std::fs::write(&lib, source.replace("let mut value = 0.0;", "let mut value = 100.0;")).unwrap();
    let history = wait_for(slow, || async {
        let h = client.ok(Method::GET, &format!("/v1/installs/{install}/history"), None).await?;
        Ok((h["items"][0]["action"] == "reloaded").then_some(h))
    })
    .await
    .expect("the install is reloaded from the new build");
    assert_eq!(history["items"][0]["reason"], "rebuilt from source (serve --watch)", "{history}");
    // Two page views at 5 points, plus the new base of 100.
    scored(110.0).await;
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_rollback_and_history_from_the_command_line() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let url = world.server.url();
    let admin = Client::new(&url, ADMIN_KEY);
    let tenant = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "Ops"}))).await.unwrap();
    let key = tenant["api_key"].as_str().unwrap().to_string();
    let client = Client::new(&url, &key);
    let mut versions = Vec::new();
    for guest in ["guest-versioned-1", "guest-versioned-2", "guest-versioned-3"] {
        let (_, uploaded) = client.upload(cairn::catalog::guest_bytes(guest).unwrap()).await.unwrap();
        versions.push(uploaded["id"].as_str().unwrap().to_string());
    }
    let install = client
        .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": versions[0], "config": {}})))
        .await
        .unwrap();
    let install = install["id"].as_str().unwrap().to_string();
    let server = ["--server", url.as_str(), "--key", key.as_str()];
    let with_server = |args: &[&str]| args.iter().chain(server.iter()).map(|s| s.to_string()).collect::<Vec<_>>();
    let call = |args: Vec<String>| async move { cairn_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await };

    let out = call(with_server(&["plugin", "upgrade", &install, &versions[1]])).await;
    assert!(out.contains("now runs versioned-scorer 2.0.0"), "{out}");
    // 3.0.0 fails its self-test: refused with the reason, nothing changes.
    let args = with_server(&["plugin", "upgrade", &install, &versions[2]]);
    let (_, err) = cairn_fails(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(err.contains("422") && err.contains("failed its health check"), "{err}");
    let out = call(with_server(&["plugin", "rollback", &install])).await;
    assert!(out.contains("rolled back to 1.0.0"), "{out}");
    let out = call(with_server(&["plugin", "history", &install])).await;
    let actions: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(actions, ["rolled-back", "refused", "upgraded"], "{out}");
}
