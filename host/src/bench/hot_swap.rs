//! `hot_swap`: what swapping a plugin version costs the events flowing
//! through the server. A paced load of single events (below capacity, so
//! latency measures the swap and not a queue) runs twice: once steady, once
//! while an install is switched between two versions every 100 ms. Event
//! latency is accepted (`202`) to processed, from the pipeline's
//! millisecond histogram; failed calls are counted from the install's
//! stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use crate::bench::{client_key, emit, start_in};
use crate::catalog::guest_bytes;
use crate::demo::Client;

/// Events per second offered, across all clients.
const RATE: u64 = 800;
const CLIENTS: u64 = 8;

/// Offer `RATE` events/s for `duration`; returns how many were accepted.
async fn paced_load(url: &str, key: &str, contacts: &Arc<Vec<String>>, duration: Duration) -> anyhow::Result<u64> {
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..CLIENTS {
        let (c, contacts) = (Client::new(url, key), contacts.clone());
        clients.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * CLIENTS / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                let contact = &contacts[((w + sent * CLIENTS) as usize) % contacts.len()];
                let (status, body) = c
                    .call(Method::POST, "/v1/events", Some(json!({"contact_id": contact, "kind": "page_viewed"})))
                    .await?;
                anyhow::ensure!(status == 202, "unexpected {status}: {body}");
                sent += 1;
            }
            Ok::<_, anyhow::Error>(sent)
        });
    }
    let mut sent = 0;
    while let Some(r) = clients.join_next().await {
        sent += r??;
    }
    Ok(sent)
}

/// Run the steady and the swapping phase and print their latencies.
pub async fn run(dir: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let server = start_in(dir).await?;
    let admin = Client::new(&server.url(), "bench-admin-key-0123456789");
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "swap"}))).await?;
    let key = client_key(&created);
    let client = Client::new(&server.url(), &key);
    let mut versions = Vec::new();
    // Two versions that score alike: the swap is the only thing that moves.
    for guest in ["guest-versioned-1", "guest-versioned-101"] {
        let bytes = guest_bytes(guest).with_context(|| format!("{guest}: build the test guests first"))?;
        let (status, uploaded) = client.upload(bytes).await?;
        anyhow::ensure!(status == 201 || status == 200, "upload {guest}: {uploaded}");
        versions.push(uploaded["id"].clone());
    }
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    let rules = plugins["items"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "rules-scorer"))
        .map(|p| p["id"].clone());
    client
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": rules, "config": crate::bench::scorer_config()})),
        )
        .await?;
    let install =
        client.ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": versions[0], "config": {}}))).await?;
    let install_id = install["id"].as_str().context("install id")?.to_string();
    let mut contacts = Vec::new();
    for i in 0..100 {
        let c = client.ok(Method::POST, "/v1/contacts", Some(json!({"email": format!("swap{i}@example.com")}))).await?;
        contacts.push(c["id"].as_str().context("id")?.to_string());
    }
    let contacts = Arc::new(contacts);
    let phase = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let stats = &server.state.pipeline.stats;
    let drained = || async {
        // Let the queue empty so each phase starts alike.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Warm-up, then the steady phase.
    paced_load(&server.url(), &key, &contacts, Duration::from_secs(1)).await?;
    drained().await;
    stats.latency.reset();
    let steady_sent = paced_load(&server.url(), &key, &contacts, phase).await?;
    drained().await;
    let steady = (stats.latency.quantile_ms(0.5), stats.latency.quantile_ms(0.99), stats.latency.count());

    // The same load while the install swaps version every 100 ms.
    stats.latency.reset();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (c, stop, path) = (Client::new(&server.url(), &key), stop.clone(), format!("/v1/installs/{install_id}"));
        let versions = versions.clone();
        tokio::spawn(async move {
            let mut swaps = 0usize;
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                c.ok(Method::PATCH, &path, Some(json!({"plugin_version_id": versions[(swaps + 1) % 2]}))).await?;
                worst = worst.max(started.elapsed());
                swaps += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>((swaps, worst))
        })
    };
    let swapping_sent = paced_load(&server.url(), &key, &contacts, phase).await?;
    stop.store(true, Ordering::Relaxed);
    let (swaps, worst_swap) = swapper.await??;
    drained().await;
    let swapping = (stats.latency.quantile_ms(0.5), stats.latency.quantile_ms(0.99), stats.latency.count());
    let install = client.ok(Method::GET, &format!("/v1/installs/{install_id}"), None).await?;
    let failed: u64 =
        install["stats"]["failed"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
    let ratio = match (steady.1, swapping.1) {
        (Some(a), Some(b)) if a > 0 => (b as f64 / a as f64 * 100.0).round() / 100.0,
        _ => f64::NAN,
    };
    emit(json!({
        "bench": "hot_swap",
        "what": format!("{RATE} single events/s offered for {} s, steady vs an install swapped between two versions every 100 ms; latency accepted → processed", phase.as_secs()),
        "steady": {"sent": steady_sent, "processed": steady.2, "p50_ms": steady.0, "p99_ms": steady.1},
        "swapping": {"sent": swapping_sent, "processed": swapping.2, "p50_ms": swapping.0, "p99_ms": swapping.1, "swaps": swaps, "slowest_swap_ms": worst_swap.as_millis() as u64},
        "p99_ratio": ratio,
        "failed_calls": failed,
    }));
    server.shutdown().await;
    Ok(())
}
