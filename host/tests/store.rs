//! The customer store, on both backends: every test below runs once on a
//! fresh SQLite file and once on a fresh PostgreSQL database (see
//! `on_both_backends!`). PostgreSQL must be reachable (see
//! `cairn::store::testing`); when it is not, the PostgreSQL half fails with a
//! message saying so.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod backends;

use anyhow::Context;
use backends::settle;
use cairn::clock::Clock;
use cairn::store::testing::{TempPostgres, TempSqlite};
use cairn::store::{
    ContactFilter, ContactPatch, ContactUpdate, InputStatus, InstallPatch, InvocationFilter, InvocationRecord,
    MAX_INPUT_JSON, NewCompany, NewContact, NewDeal, NewEvent, NewInstall, NewTask, Principal, Properties, Store,
    StoreError, TaskFilter, TaskPatch, TimelineEntry, Value, new_id, now_ms,
};
use sqlx::Row;

on_both_backends!(
    tenants_are_created_and_read_back,
    api_keys_authenticate_and_only_their_hash_is_stored,
    contacts_are_created_read_patched_and_deleted,
    contact_emails_are_unique_per_tenant_and_case_insensitive,
    contacts_are_listed_by_filter_and_paged_by_cursor,
    property_patches_merge_and_null_deletes,
    set_properties_writes_core_fields_by_name,
    tags_are_added_and_removed_idempotently,
    a_tenant_cannot_reach_another_tenants_records,
    an_event_batch_is_stored_in_order_and_deduplicated_by_key,
    an_email_only_event_creates_its_contact_once,
    an_event_naming_an_unknown_contact_fails_and_stores_nothing,
    a_bad_request_in_a_group_commit_fails_alone,
    claimed_events_are_not_claimed_again_until_released_or_expired,
    concurrent_claims_get_disjoint_events,
    a_batch_finished_twice_lands_once,
    a_batch_moves_each_contacts_last_activity_forward_only,
    a_batch_lands_each_contacts_score_with_its_history,
    concurrent_requests_with_one_key_store_one_event,
    recent_and_counted_events_respect_kind_time_and_tenant,
    the_timeline_merges_a_contacts_history_newest_first,
    score_changes_and_stages_are_recorded,
    tasks_with_the_same_idempotency_key_are_created_once,
    companies_and_deals_reference_only_their_tenants_records,
    a_plugin_version_is_immutable_once_uploaded,
    installs_are_created_patched_listed_and_deleted,
    plugin_state_belongs_to_one_install_of_one_tenant,
    invocations_are_recorded_listed_and_counted,
    an_invocation_keeps_its_input_for_its_own_tenant_and_lists_leave_it_out,
    inputs_past_their_retention_are_erased_and_their_records_kept,
    lifecycle_thresholds_are_set_listed_and_removed,
);

// ---- helpers ----

async fn tenant(store: &Store, name: &str) -> anyhow::Result<String> {
    Ok(store.create_tenant(name).await?.id)
}

fn props(pairs: &[(&str, Value)]) -> Properties {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

async fn contact(store: &Store, tenant: &str, email: &str) -> anyhow::Result<String> {
    let c = store.create_contact(tenant, NewContact { email: Some(email.into()), ..Default::default() }).await?;
    Ok(c.id)
}

fn event(contact_id: &str, kind: &str) -> NewEvent {
    NewEvent { contact_id: Some(contact_id.into()), kind: kind.into(), ..Default::default() }
}

fn event_at(contact_id: &str, kind: &str, at: i64) -> NewEvent {
    NewEvent { occurred_at: Some(at), ..event(contact_id, kind) }
}

async fn plugin(
    store: &Store,
    tenant: Option<&str>,
    name: &str,
    version: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let hash = sha256_hex(bytes);
    Ok(store.put_plugin_version(tenant, name, version, &hash, bytes, "{}").await?.id)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn install(store: &Store, tenant: &str, version_id: &str) -> anyhow::Result<String> {
    let new = NewInstall {
        plugin_version_id: version_id.into(),
        config: serde_json::json!({}),
        grants: vec!["store-read".into()],
        enabled: None,
        auto_upgrade: None,
    };
    Ok(store.create_install(tenant, new).await?.id)
}

// ---- tenants and keys ----

async fn tenants_are_created_and_read_back(store: Store) -> anyhow::Result<()> {
    let t = store.create_tenant("  Acme  ").await?;
    assert_eq!(t.name, "Acme");
    assert_eq!(store.get_tenant(&t.id).await?, Some(t.clone()));
    assert_eq!(store.get_tenant("nope").await?, None);
    assert!(store.list_tenants().await?.contains(&t));
    assert!(matches!(store.create_tenant(" ").await, Err(StoreError::Invalid(_))));
    Ok(())
}

async fn api_keys_authenticate_and_only_their_hash_is_stored(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    assert!(!store.admin_key_exists().await?);
    let admin = store.create_api_key(&Principal::Admin).await?;
    let key = store.create_api_key(&Principal::Tenant(t.clone())).await?;
    assert!(key.starts_with("cairn_") && key.len() == 6 + 64);
    assert!(store.admin_key_exists().await?);
    assert_eq!(store.authenticate(&admin).await?, Some(Principal::Admin));
    assert_eq!(store.authenticate(&key).await?, Some(Principal::Tenant(t.clone())));
    assert_eq!(store.authenticate("cairn_0000").await?, None);
    assert_eq!(store.authenticate("").await?, None);

    // The table holds hashes, never the keys.
    let rows = sqlx::query("SELECT key_hash FROM api_keys").fetch_all(store.pool()).await?;
    let hashes: Vec<String> = rows.iter().map(|r| r.try_get("key_hash")).collect::<Result<_, _>>()?;
    assert_eq!(hashes.len(), 2);
    assert!(hashes.contains(&sha256_hex(key.as_bytes())));
    assert!(!hashes.iter().any(|h| h == &key || h == &admin));

    // A key chosen elsewhere (CAIRN_ADMIN_KEY) registers idempotently.
    store.register_api_key(&Principal::Admin, "an-admin-key-from-the-env").await?;
    store.register_api_key(&Principal::Admin, "an-admin-key-from-the-env").await?;
    assert_eq!(store.authenticate("an-admin-key-from-the-env").await?, Some(Principal::Admin));
    assert!(store.register_api_key(&Principal::Tenant(t), "an-admin-key-from-the-env").await.is_err());
    assert!(matches!(store.create_api_key(&Principal::Tenant("nope".into())).await, Err(StoreError::UnknownTenant(_))));
    Ok(())
}

// ---- contacts ----

async fn contacts_are_created_read_patched_and_deleted(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let new = NewContact {
        email: Some(" Ann@Example.COM ".into()),
        first_name: Some("Ann".into()),
        tags: vec!["vip".into(), "vip".into(), "beta".into()],
        properties: props(&[("region", text("emea")), ("seats", Value::Number(5.0))]),
        ..Default::default()
    };
    let c = store.create_contact(&t, new).await?;
    assert_eq!(c.email.as_deref(), Some("ann@example.com"));
    assert_eq!(c.lifecycle_stage, "lead");
    assert_eq!(c.tags, ["beta", "vip"]);
    assert_eq!(c.score, 0.0);

    let read = store.get_contact(&t, &c.id).await?.context("contact")?;
    assert_eq!(read, c);
    assert_eq!(store.find_contact_by_email(&t, "ANN@example.com").await?.map(|c| c.id), Some(c.id.clone()));

    let patch: ContactPatch = serde_json::from_value(serde_json::json!({
        "first_name": null,
        "last_name": "Lee",
        "lifecycle_stage": "mql",
        "tags": ["customer"],
    }))?;
    let patched = store.patch_contact(&t, &c.id, patch).await?.context("patched")?;
    assert_eq!(patched.first_name, None);
    assert_eq!(patched.last_name.as_deref(), Some("Lee"));
    assert_eq!(patched.lifecycle_stage, "mql");
    assert_eq!(patched.tags, ["customer"]);
    assert_eq!(patched.email, c.email, "absent fields are left alone");
    assert_eq!(store.get_contact(&t, &c.id).await?, Some(patched));

    assert!(store.touch_activity(&t, &c.id, 5_000).await?);
    assert!(store.touch_activity(&t, &c.id, 4_000).await?, "an older time is accepted but does not win");
    assert_eq!(store.get_contact(&t, &c.id).await?.and_then(|c| c.last_activity_at), Some(5_000));

    assert!(store.delete_contact(&t, &c.id).await?);
    assert!(!store.delete_contact(&t, &c.id).await?);
    assert_eq!(store.get_contact(&t, &c.id).await?, None);
    assert_eq!(store.patch_contact(&t, &c.id, ContactPatch::default()).await?, None);

    // Unknown fields are refused, not ignored.
    assert!(serde_json::from_value::<NewContact>(serde_json::json!({"emial": "x@y.z"})).is_err());
    assert!(serde_json::from_value::<ContactPatch>(serde_json::json!({"score": 3})).is_err());
    assert!(matches!(
        store.create_contact(&t, NewContact { email: Some("not-an-email".into()), ..Default::default() }).await,
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

async fn contact_emails_are_unique_per_tenant_and_case_insensitive(store: Store) -> anyhow::Result<()> {
    let a = tenant(&store, "A").await?;
    let b = tenant(&store, "B").await?;
    contact(&store, &a, "ann@example.com").await?;
    let dup =
        store.create_contact(&a, NewContact { email: Some("ANN@example.com".into()), ..Default::default() }).await;
    assert!(matches!(dup, Err(StoreError::DuplicateEmail(_))), "{dup:?}");
    // Another tenant may have the same person.
    contact(&store, &b, "ann@example.com").await?;
    // Two contacts without email are fine.
    store.create_contact(&a, NewContact::default()).await?;
    store.create_contact(&a, NewContact::default()).await?;
    // Patching onto a taken email is refused too.
    let other = contact(&store, &a, "bob@example.com").await?;
    let patch = ContactPatch { email: Some(Some("ann@example.com".into())), ..Default::default() };
    assert!(matches!(store.patch_contact(&a, &other, patch).await, Err(StoreError::DuplicateEmail(_))));
    Ok(())
}

async fn contacts_are_listed_by_filter_and_paged_by_cursor(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let mut ids = Vec::new();
    for i in 0..25 {
        let new = NewContact {
            email: Some(format!("c{i}@example.com")),
            owner: Some(if i % 2 == 0 { "olga" } else { "pete" }.into()),
            lifecycle_stage: Some(if i < 5 { "mql" } else { "lead" }.into()),
            tags: if i % 5 == 0 { vec!["vip".into()] } else { vec![] },
            ..Default::default()
        };
        ids.push(store.create_contact(&t, new).await?.id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_contacts(&t, &ContactFilter::default(), cursor.as_deref(), 10).await?;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|c| c.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages cover every contact once, in creation order");

    let count = |f: ContactFilter| {
        let store = store.clone();
        let t = t.clone();
        async move { anyhow::Ok(store.list_contacts(&t, &f, None, 100).await?.items) }
    };
    assert_eq!(count(ContactFilter { owner: Some("olga".into()), ..Default::default() }).await?.len(), 13);
    assert_eq!(count(ContactFilter { lifecycle_stage: Some("mql".into()), ..Default::default() }).await?.len(), 5);
    let vip = count(ContactFilter { tag: Some("vip".into()), ..Default::default() }).await?;
    assert_eq!(vip.len(), 5);
    assert!(vip.iter().all(|c| c.tags == ["vip"]));
    let by_email = count(ContactFilter { email: Some("C7@example.com".into()), ..Default::default() }).await?;
    assert_eq!(by_email.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), [ids[7].clone()]);
    let both = ContactFilter {
        tag: Some("vip".into()),
        owner: Some("olga".into()),
        lifecycle_stage: Some("mql".into()),
        ..Default::default()
    };
    assert_eq!(count(both).await?.len(), 1, "only c0 is a vip mql owned by olga");
    Ok(())
}

async fn property_patches_merge_and_null_deletes(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let new = NewContact {
        properties: props(&[("a", Value::Number(1.0)), ("b", text("x")), ("gone", Value::Null)]),
        ..Default::default()
    };
    let c = store.create_contact(&t, new).await?;
    assert_eq!(c.properties, props(&[("a", Value::Number(1.0)), ("b", text("x"))]), "null on create is dropped");
    let patch: ContactPatch = serde_json::from_value(serde_json::json!({
        "properties": {
            "a": null,
            "c": ["x", "y"],
            "d": true,
            "e": {"$timestamp": 1_700_000_000_000i64},
        }
    }))?;
    let patched = store.patch_contact(&t, &c.id, patch).await?.context("patched")?;
    let expected = props(&[
        ("b", text("x")),
        ("c", Value::TextList(vec!["x".into(), "y".into()])),
        ("d", Value::Bool(true)),
        ("e", Value::Timestamp(1_700_000_000_000)),
    ]);
    assert_eq!(patched.properties, expected);
    assert_eq!(store.get_contact(&t, &c.id).await?.map(|c| c.properties), Some(expected));

    // Objects other than timestamps and lists of non-strings are refused in plain words.
    let bad = serde_json::from_value::<ContactPatch>(serde_json::json!({"properties": {"x": {"y": 1}}}));
    assert!(bad.is_err());
    let bad = serde_json::from_value::<ContactPatch>(serde_json::json!({"properties": {"x": [1, 2]}}));
    assert!(bad.is_err());
    // Property names have a size limit.
    let long = "n".repeat(200);
    let patch = ContactPatch { properties: Some(props(&[(&long, Value::Bool(true))])), ..Default::default() };
    assert!(matches!(store.patch_contact(&t, &c.id, patch).await, Err(StoreError::Invalid(_))));
    Ok(())
}

async fn set_properties_writes_core_fields_by_name(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let changes = props(&[
        ("owner", text("olga")),
        ("first_name", text("Ann")),
        ("last_name", text("Lee")),
        ("phone", text("+44 20 1234")),
        ("email", text("ANN.LEE@example.com")),
        ("lifecycle_stage", text("sql")),
        ("region", text("emea")),
    ]);
    assert!(store.set_properties(&t, &id, &changes).await?);
    let c = store.get_contact(&t, &id).await?.context("contact")?;
    assert_eq!(c.owner.as_deref(), Some("olga"));
    assert_eq!(c.first_name.as_deref(), Some("Ann"));
    assert_eq!(c.last_name.as_deref(), Some("Lee"));
    assert_eq!(c.phone.as_deref(), Some("+44 20 1234"));
    assert_eq!(c.email.as_deref(), Some("ann.lee@example.com"));
    assert_eq!(c.lifecycle_stage, "sql");
    assert_eq!(c.properties, props(&[("region", text("emea"))]), "core fields are not copied into properties");

    assert!(store.set_properties(&t, &id, &props(&[("owner", Value::Null), ("region", Value::Null)])).await?);
    let c = store.get_contact(&t, &id).await?.context("contact")?;
    assert_eq!(c.owner, None);
    assert!(c.properties.is_empty());

    let wrong_type = store.set_properties(&t, &id, &props(&[("owner", Value::Number(3.0))])).await;
    assert!(matches!(wrong_type, Err(StoreError::Invalid(_))));
    assert!(!store.set_properties(&t, "missing", &props(&[("x", Value::Bool(true))])).await?);
    Ok(())
}

async fn tags_are_added_and_removed_idempotently(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    assert!(store.add_tag(&t, &id, "vip").await?);
    assert!(store.add_tag(&t, &id, "vip").await?);
    assert!(store.add_tag(&t, &id, " beta ").await?);
    assert_eq!(store.get_contact(&t, &id).await?.map(|c| c.tags), Some(vec!["beta".into(), "vip".into()]));
    assert!(store.remove_tag(&t, &id, "vip").await?);
    assert!(store.remove_tag(&t, &id, "vip").await?);
    assert_eq!(store.get_contact(&t, &id).await?.map(|c| c.tags), Some(vec!["beta".into()]));
    assert!(!store.add_tag(&t, "missing", "vip").await?);
    assert!(!store.remove_tag(&t, "missing", "vip").await?);
    assert!(matches!(store.add_tag(&t, &id, "  ").await, Err(StoreError::Invalid(_))));
    Ok(())
}

async fn a_tenant_cannot_reach_another_tenants_records(store: Store) -> anyhow::Result<()> {
    let a = tenant(&store, "A").await?;
    let b = tenant(&store, "B").await?;
    let id = contact(&store, &a, "ann@example.com").await?;
    store.add_tag(&a, &id, "vip").await?;
    store.insert_events(&a, vec![event(&id, "page_viewed")]).await?;

    // Tenant B sees nothing, changes nothing: the id behaves like a missing one.
    assert_eq!(store.get_contact(&b, &id).await?, None);
    assert_eq!(store.find_contact_by_email(&b, "ann@example.com").await?, None);
    let patch = ContactPatch { owner: Some(Some("mallory".into())), ..Default::default() };
    assert_eq!(store.patch_contact(&b, &id, patch).await?, None);
    assert!(!store.set_properties(&b, &id, &props(&[("owner", text("mallory"))])).await?);
    assert!(!store.add_tag(&b, &id, "hacked").await?);
    assert!(!store.remove_tag(&b, &id, "vip").await?);
    assert_eq!(store.set_score(&b, &id, 99.0, &[]).await?, None);
    assert_eq!(store.set_lifecycle_stage(&b, &id, "customer").await?, None);
    assert!(!store.touch_activity(&b, &id, 1).await?);
    assert!(!store.delete_contact(&b, &id).await?);
    assert!(store.list_contacts(&b, &ContactFilter::default(), None, 100).await?.items.is_empty());
    let tagged = ContactFilter { tag: Some("vip".into()), ..Default::default() };
    assert!(store.list_contacts(&b, &tagged, None, 100).await?.items.is_empty());
    assert!(matches!(
        store.insert_events(&b, vec![event(&id, "page_viewed")]).await,
        Err(StoreError::UnknownContact(_))
    ));
    assert!(store.recent_events(&b, &id, &[], 0, 100).await?.is_empty());
    assert_eq!(store.count_events(&b, &id, "", 0).await?, 0);
    assert_eq!(store.timeline(&b, &id, 100).await?, None);
    assert_eq!(store.add_note(&b, &id, "hi").await?, None);
    let task = NewTask { contact_id: Some(id.clone()), title: "call".into(), ..Default::default() };
    assert_eq!(store.create_task(&b, task, "api").await?, None);
    let deal = NewDeal { name: "d".into(), contact_id: Some(id.clone()), ..Default::default() };
    assert!(matches!(store.create_deal(&b, deal).await, Err(StoreError::UnknownReference { .. })));

    // And tenant A still has it untouched.
    let c = store.get_contact(&a, &id).await?.context("contact")?;
    assert_eq!(c.owner, None);
    assert_eq!(c.tags, ["vip"]);
    assert_eq!(store.count_events(&a, &id, "", 0).await?, 2, "contact_created and page_viewed");
    Ok(())
}

// ---- events ----

async fn an_event_batch_is_stored_in_order_and_deduplicated_by_key(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let mut batch: Vec<NewEvent> = (0..300).map(|i| event_at(&id, "page_viewed", 1_000 + i)).collect();
    batch[10].idempotency_key = Some("k-10".into());
    batch[11].idempotency_key = Some("k-10".into()); // a repeat inside the batch
    batch[12].properties = props(&[("url", text("/pricing"))]);
    let stored = store.insert_events(&t, batch).await?;
    assert_eq!(stored.len(), 300);
    assert_eq!(stored[0].occurred_at, 1_000);
    assert_eq!(stored[299].occurred_at, 1_299);
    assert_eq!(stored[11], stored[10], "the repeat returns the first event");
    assert_eq!(stored[12].properties, props(&[("url", text("/pricing"))]));
    assert!(stored.iter().all(|e| e.contact_id == id && !e.processed));
    assert_eq!(store.count_events(&t, &id, "page_viewed", 0).await?, 299);
    assert_eq!(store.get_event(&t, &stored[12].id).await?, Some(stored[12].clone()));

    // A later request with the same key gets the stored event back.
    let again = NewEvent { idempotency_key: Some("k-10".into()), ..event(&id, "other_kind") };
    let again = store.insert_events(&t, vec![again, event(&id, "clicked")]).await?;
    assert_eq!(again[0], stored[10]);
    assert_eq!(again[1].kind, "clicked");
    assert_eq!(store.count_events(&t, &id, "", 0).await?, 301, "300 and the contact's contact_created");

    // The same key in another tenant is another event.
    let other = tenant(&store, "Other").await?;
    let other_contact = contact(&store, &other, "x@example.com").await?;
    let theirs = NewEvent { idempotency_key: Some("k-10".into()), ..event(&other_contact, "page_viewed") };
    let theirs = store.insert_events(&other, vec![theirs]).await?;
    assert_ne!(theirs[0].id, stored[10].id);

    // Limits and malformed events.
    let too_many: Vec<NewEvent> = (0..1001).map(|_| event(&id, "x")).collect();
    assert!(matches!(store.insert_events(&t, too_many).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.insert_events(&t, vec![event(&id, " ")]).await, Err(StoreError::Invalid(_))));
    let nobody = NewEvent { kind: "x".into(), ..Default::default() };
    assert!(matches!(store.insert_events(&t, vec![nobody]).await, Err(StoreError::Invalid(_))));
    assert!(store.insert_events(&t, vec![]).await?.is_empty());
    assert!(serde_json::from_value::<NewEvent>(serde_json::json!({"kind": "x", "contact": "y"})).is_err());
    Ok(())
}

async fn an_email_only_event_creates_its_contact_once(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let known = contact(&store, &t, "known@example.com").await?;
    let by_email =
        |email: &str, kind: &str| NewEvent { email: Some(email.into()), kind: kind.into(), ..Default::default() };
    let stored = store
        .insert_events(
            &t,
            vec![
                by_email("New@Example.com", "form_submitted"),
                by_email("new@example.com", "page_viewed"),
                by_email("known@example.com", "page_viewed"),
            ],
        )
        .await?;
    let created = store.find_contact_by_email(&t, "new@example.com").await?.context("created contact")?;
    assert_eq!(created.lifecycle_stage, "lead");
    assert_eq!(stored[0].contact_id, created.id);
    assert_eq!(stored[1].contact_id, created.id, "one contact for both events");
    assert_eq!(stored[2].contact_id, known);
    // A later event by email finds it.
    let later = store.insert_events(&t, vec![by_email("new@example.com", "clicked")]).await?;
    assert_eq!(later[0].contact_id, created.id);
    assert_eq!(store.list_contacts(&t, &ContactFilter::default(), None, 100).await?.items.len(), 2);
    Ok(())
}

async fn an_event_naming_an_unknown_contact_fails_and_stores_nothing(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let batch = vec![
        event(&id, "page_viewed"),
        NewEvent { email: Some("fresh@example.com".into()), kind: "x".into(), ..Default::default() },
        event("no-such-contact", "page_viewed"),
    ];
    match store.insert_events(&t, batch).await {
        Err(StoreError::UnknownContact(missing)) => assert_eq!(missing, "no-such-contact"),
        other => anyhow::bail!("expected UnknownContact, got {other:?}"),
    }
    assert_eq!(store.count_events(&t, &id, "", 0).await?, 1, "the batch is all or nothing (contact_created is all)");
    assert_eq!(store.find_contact_by_email(&t, "fresh@example.com").await?, None);
    Ok(())
}

async fn a_bad_request_in_a_group_commit_fails_alone(store: Store) -> anyhow::Result<()> {
    let a = tenant(&store, "A").await?;
    let b = tenant(&store, "B").await?;
    let ca = contact(&store, &a, "ann@example.com").await?;
    let cb = contact(&store, &b, "bob@example.com").await?;
    let results = store
        .insert_events_many(vec![
            (a.clone(), vec![event(&ca, "one")]),
            (b.clone(), vec![event(&ca, "cross-tenant")]), // A's contact, named by B
            (b.clone(), vec![event(&cb, "two"), event(&cb, "three")]),
            (a.clone(), vec![event(&ca, "")]), // malformed
            (
                "no-such-tenant".into(),
                vec![NewEvent { email: Some("x@example.com".into()), kind: "x".into(), ..Default::default() }],
            ),
            (
                a.clone(),
                vec![NewEvent { email: Some("new@example.com".into()), kind: "four".into(), ..Default::default() }],
            ),
        ])
        .await?;
    assert_eq!(results.len(), 6);
    assert_eq!(results[0].as_ref().map(|e| e.len()).ok(), Some(1));
    assert!(matches!(results[1], Err(StoreError::UnknownContact(_))));
    assert_eq!(results[2].as_ref().map(|e| e.len()).ok(), Some(2));
    assert!(matches!(results[3], Err(StoreError::Invalid(_))));
    assert!(matches!(results[4], Err(StoreError::UnknownTenant(_))));
    assert_eq!(results[5].as_ref().map(|e| e[0].kind.clone()).ok(), Some("four".into()));
    // Each contact also has its contact_created event.
    assert_eq!(store.count_events(&a, &ca, "", 0).await?, 2);
    assert_eq!(store.count_events(&b, &cb, "", 0).await?, 3);
    assert!(store.find_contact_by_email(&a, "new@example.com").await?.is_some());
    Ok(())
}

async fn claimed_events_are_not_claimed_again_until_released_or_expired(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    settle(&store).await?;
    let stored = store.insert_events(&t, (0..5).map(|i| event(&id, &format!("k{i}"))).collect()).await?;

    let first = store.claim_unprocessed_events(3).await?;
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|(tenant, _)| tenant == &t));
    let kinds: Vec<&str> = first.iter().map(|(_, e)| e.kind.as_str()).collect();
    assert_eq!(kinds, ["k0", "k1", "k2"], "oldest first");

    let second = store.claim_unprocessed_events(10).await?;
    assert_eq!(second.iter().map(|(_, e)| e.kind.as_str()).collect::<Vec<_>>(), ["k3", "k4"]);
    assert!(store.claim_unprocessed_events(10).await?.is_empty(), "everything is leased");

    let done: Vec<String> = first.iter().map(|(_, e)| e.id.clone()).collect();
    store.mark_events_processed(&done).await?;
    assert_eq!(store.get_event(&t, &stored[0].id).await?.map(|e| e.processed), Some(true));
    store.release_events(&[second[0].1.id.clone()]).await?;
    let again = store.claim_unprocessed_events(10).await?;
    assert_eq!(again.iter().map(|(_, e)| e.kind.as_str()).collect::<Vec<_>>(), ["k3"]);

    // A lease that ran out (its worker died) makes the event claimable again.
    sqlx::query("UPDATE events SET lease_until = 1 WHERE processed = 0").execute(store.pool()).await?;
    let expired = store.claim_unprocessed_events(10).await?;
    assert_eq!(expired.iter().map(|(_, e)| e.kind.as_str()).collect::<Vec<_>>(), ["k3", "k4"]);
    let rest: Vec<String> = expired.iter().map(|(_, e)| e.id.clone()).collect();
    store.mark_events_processed(&rest).await?;
    sqlx::query("UPDATE events SET lease_until = 1").execute(store.pool()).await?;
    assert!(store.claim_unprocessed_events(10).await?.is_empty(), "processed events never come back");
    Ok(())
}

async fn concurrent_claims_get_disjoint_events(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    settle(&store).await?;
    store.insert_events(&t, (0..200).map(|i| event(&id, &format!("k{i}"))).collect()).await?;
    let claims = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_unprocessed_events(60).await })
    });
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for c in claims {
        for (_, e) in c.await?? {
            total += 1;
            assert!(seen.insert(e.id), "an event was claimed twice");
        }
    }
    assert_eq!(total, 200);
    Ok(())
}

/// Two nodes finishing the same events (one's claim outlived its lease):
/// the second finish is refused whole, so its score never lands.
async fn a_batch_finished_twice_lands_once(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    settle(&store).await?;
    store.insert_events(&t, vec![event(&id, "page_viewed"), event(&id, "clicked")]).await?;
    let ids: Vec<String> = store.claim_unprocessed_events(10).await?.into_iter().map(|(_, e)| e.id).collect();
    assert_eq!(ids.len(), 2);
    let scored = |score: f64| ContactUpdate {
        tenant_id: t.clone(),
        contact_id: id.clone(),
        last_activity_at: None,
        score: Some((0.0, score, vec![format!("scored {score}")])),
        stage_change: None,
        enrollments: Vec::new(),
    };
    store.finish_batch(&[scored(10.0)], &ids).await?;
    let again = store.finish_batch(&[scored(99.0)], &ids).await;
    assert!(matches!(again, Err(StoreError::ClaimLost(2))), "{again:?}");
    let contact = store.get_contact(&t, &id).await?.context("the contact")?;
    assert_eq!(contact.score, 10.0, "the discarded batch wrote nothing");
    // Events gone with their contact are not a lost claim.
    store.insert_events(&t, vec![event(&id, "opened")]).await?;
    let ids: Vec<String> = store.claim_unprocessed_events(10).await?.into_iter().map(|(_, e)| e.id).collect();
    assert!(store.delete_contact(&t, &id).await?);
    store.finish_batch(&[], &ids).await?;
    Ok(())
}

/// A batch's activity times land per contact (one statement for all of
/// them on SQLite), only ever forward, and only on the batch's tenant.
async fn a_batch_moves_each_contacts_last_activity_forward_only(store: Store) -> anyhow::Result<()> {
    let (t, other) = (tenant(&store, "Acme").await?, tenant(&store, "Other").await?);
    let ann = contact(&store, &t, "ann@example.com").await?;
    let bob = contact(&store, &t, "bob@example.com").await?;
    let theirs = contact(&store, &other, "cat@example.com").await?;
    settle(&store).await?;
    assert!(store.touch_activity(&t, &ann, 5_000).await?);
    let active = |contact: &str, at: i64| ContactUpdate {
        tenant_id: t.clone(),
        contact_id: contact.to_string(),
        last_activity_at: Some(at),
        score: None,
        stage_change: None,
        enrollments: Vec::new(),
    };
    // Ann's is older than what she has; the other tenant's contact is
    // named under this tenant.
    store.finish_batch(&[active(&ann, 4_000), active(&bob, 7_000), active(&theirs, 9_000)], &[]).await?;
    let activity = |tenant: String, id: String| {
        let store = store.clone();
        async move { anyhow::Ok(store.get_contact(&tenant, &id).await?.context("contact")?.last_activity_at) }
    };
    assert_eq!(activity(t.clone(), ann.clone()).await?, Some(5_000), "an older time does not win");
    assert_eq!(activity(t.clone(), bob.clone()).await?, Some(7_000));
    assert_eq!(activity(other.clone(), theirs.clone()).await?, None, "another tenant's contact is untouched");
    store.finish_batch(&[active(&ann, 6_000)], &[]).await?;
    assert_eq!(activity(t, ann).await?, Some(6_000), "a newer time wins");
    Ok(())
}

/// A batch's scores land per contact with a history entry each (two
/// statements for all of them on SQLite): reasons as given, old and new
/// score, only on the batch's tenant, and nothing for a contact gone.
async fn a_batch_lands_each_contacts_score_with_its_history(store: Store) -> anyhow::Result<()> {
    let (t, other) = (tenant(&store, "Acme").await?, tenant(&store, "Other").await?);
    let ann = contact(&store, &t, "ann@example.com").await?;
    let bob = contact(&store, &t, "bob@example.com").await?;
    let gone = contact(&store, &t, "gone@example.com").await?;
    let theirs = contact(&store, &other, "cat@example.com").await?;
    settle(&store).await?;
    assert!(store.delete_contact(&t, &gone).await?);
    let scored = |contact: &str, old: f64, new: f64, reasons: &[&str]| ContactUpdate {
        tenant_id: t.clone(),
        contact_id: contact.to_string(),
        last_activity_at: None,
        score: Some((old, new, reasons.iter().map(|r| r.to_string()).collect())),
        stage_change: None,
        enrollments: Vec::new(),
    };
    let batch = [
        scored(&ann, 0.0, 12.5, &["opened \"Pricing\"", "+10 visit"]),
        scored(&bob, 0.0, -3.0, &[]),
        scored(&gone, 0.0, 50.0, &["gone"]),
        // Another tenant's contact, named under this tenant.
        scored(&theirs, 0.0, 77.0, &["not theirs"]),
    ];
    store.finish_batch(&batch, &[]).await?;
    let score = |tenant: String, id: String| {
        let store = store.clone();
        async move { anyhow::Ok(store.get_contact(&tenant, &id).await?.context("contact")?.score) }
    };
    assert_eq!(score(t.clone(), ann.clone()).await?, 12.5);
    assert_eq!(score(t.clone(), bob.clone()).await?, -3.0);
    assert_eq!(score(other.clone(), theirs.clone()).await?, 0.0, "another tenant's contact is untouched");
    let history = store.score_history(&t, &ann, 10).await?;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!((history[0].old_score, history[0].new_score), (0.0, 12.5));
    assert_eq!(history[0].reasons, ["opened \"Pricing\"", "+10 visit"]);
    assert_eq!(store.score_history(&t, &bob, 10).await?.len(), 1);
    assert!(store.score_history(&t, &gone, 10).await?.is_empty(), "a contact gone gets no history");
    assert!(store.score_history(&other, &theirs, 10).await?.is_empty());
    assert!(store.score_history(&t, &theirs, 10).await?.is_empty());
    Ok(())
}

async fn concurrent_requests_with_one_key_store_one_event(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let requests = (0..8).map(|i| {
        let store = store.clone();
        let (t, id) = (t.clone(), id.clone());
        tokio::spawn(async move {
            let keyed = NewEvent { idempotency_key: Some("once".into()), ..event(&id, "form_submitted") };
            let fresh =
                NewEvent { email: Some(format!("new{}@example.com", i % 2)), kind: "x".into(), ..Default::default() };
            store.insert_events(&t, vec![fresh, keyed]).await
        })
    });
    let mut ids = std::collections::HashSet::new();
    for r in requests {
        ids.insert(r.await??[1].id.clone());
    }
    assert_eq!(ids.len(), 1, "every request got the one stored event");
    assert_eq!(store.count_events(&t, &id, "form_submitted", 0).await?, 1);
    assert_eq!(store.list_contacts(&t, &ContactFilter::default(), None, 10).await?.items.len(), 3);
    Ok(())
}

async fn recent_and_counted_events_respect_kind_time_and_tenant(store: Store) -> anyhow::Result<()> {
    // Business time 0, so the contacts' contact_created events are older than the events below.
    let store = store.with_clock(Clock::manual(0));
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let other = contact(&store, &t, "bob@example.com").await?;
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(event_at(&id, if i % 2 == 0 { "page_viewed" } else { "email_opened" }, 1_000 * i));
    }
    batch.push(event_at(&other, "page_viewed", 500));
    store.insert_events(&t, batch).await?;

    let recent = store.recent_events(&t, &id, &[], 0, 3).await?;
    assert_eq!(recent.iter().map(|e| e.occurred_at).collect::<Vec<_>>(), [9_000, 8_000, 7_000], "newest first");
    let pages = store.recent_events(&t, &id, &["page_viewed".into()], 4_000, 100).await?;
    assert_eq!(pages.iter().map(|e| e.occurred_at).collect::<Vec<_>>(), [8_000, 6_000, 4_000]);
    let kinds = ["page_viewed".to_string(), "email_opened".to_string()];
    assert_eq!(store.recent_events(&t, &id, &kinds, 0, 100).await?.len(), 10);
    assert!(store.recent_events(&t, &id, &[], 0, 0).await?.is_empty());

    assert_eq!(store.count_events(&t, &id, "page_viewed", 0).await?, 5);
    assert_eq!(store.count_events(&t, &id, "page_viewed", 5_000).await?, 2);
    assert_eq!(store.count_events(&t, &id, "", 0).await?, 11, "and contact_created");
    assert_eq!(store.count_events(&t, &other, "page_viewed", 0).await?, 1);
    Ok(())
}

async fn the_timeline_merges_a_contacts_history_newest_first(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let now = now_ms();
    store.insert_events(&t, vec![event_at(&id, "page_viewed", now - 60_000)]).await?;
    store.add_note(&t, &id, "met at the fair").await?.context("note")?;
    let task = NewTask { contact_id: Some(id.clone()), title: "call".into(), ..Default::default() };
    store.create_task(&t, task, "api").await?.context("task")?;
    store.set_score(&t, &id, 42.0, &["visited pricing".into()]).await?.context("score")?;
    let action = InvocationRecord {
        id: new_id(),
        tenant_id: t.clone(),
        install_id: "inst".into(),
        kind: "execute".into(),
        contact_id: Some(id.clone()),
        event_id: None,
        ok: true,
        error_cause: None,
        error_message: None,
        fuel_used: Some(10),
        duration_us: 120,
        idempotency_key: Some("k".into()),
        output_json: Some("{}".into()),
        at: now + 60_000,
        plugin_version_id: None,
        input_json: None,
        input_status: None,
    };
    store.record_invocation(&action).await?;
    store.record_invocation(&InvocationRecord { id: new_id(), kind: "score".into(), ..action.clone() }).await?;
    // A workflow step's call is on the timeline as the step, not twice.
    let step_call = InvocationRecord { id: new_id(), idempotency_key: Some("run:r1:s1".into()), ..action.clone() };
    store.record_invocation(&step_call).await?;

    let timeline = store.timeline(&t, &id, 100).await?.context("timeline")?;
    let types: Vec<&str> = timeline
        .iter()
        .map(|e| match e {
            TimelineEntry::Event(_) => "event",
            TimelineEntry::Note(_) => "note",
            TimelineEntry::Task(_) => "task",
            TimelineEntry::ScoreChange(_) => "score_change",
            TimelineEntry::ActionRun(_) => "action_run",
            TimelineEntry::WorkflowStep(_) => "workflow_step",
        })
        .collect();
    assert_eq!(types.len(), 6, "scorer calls and workflow step calls are not action runs: {types:?}");
    assert_eq!(types[0], "action_run");
    assert_eq!(types[5], "event");
    assert!(timeline.windows(2).all(|w| w[0].at() >= w[1].at()), "newest first");
    let json = serde_json::to_value(&timeline[0])?;
    assert_eq!(json["type"], "action_run");
    assert_eq!(serde_json::to_value(&timeline[5])?["kind"], "page_viewed");
    assert_eq!(store.timeline(&t, &id, 2).await?.map(|t| t.len()), Some(2));
    assert_eq!(store.timeline(&t, "missing", 10).await?, None);
    Ok(())
}

async fn score_changes_and_stages_are_recorded(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let change = store.set_score(&t, &id, 30.0, &["opened 3 emails".into()]).await?.context("change")?;
    assert_eq!((change.old_score, change.new_score), (0.0, 30.0));
    let change = store.set_score(&t, &id, 55.5, &["pricing page".into()]).await?.context("change")?;
    assert_eq!((change.old_score, change.new_score), (30.0, 55.5));
    assert_eq!(store.get_contact(&t, &id).await?.map(|c| c.score), Some(55.5));
    let history = store.score_history(&t, &id, 10).await?;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].reasons, ["pricing page"]);
    assert!(matches!(store.set_score(&t, &id, f64::NAN, &[]).await, Err(StoreError::Invalid(_))));

    assert_eq!(store.set_lifecycle_stage(&t, &id, "mql").await?.as_deref(), Some("lead"));
    assert_eq!(store.set_lifecycle_stage(&t, &id, "sql").await?.as_deref(), Some("mql"));
    assert_eq!(store.get_contact(&t, &id).await?.map(|c| c.lifecycle_stage), Some("sql".into()));
    Ok(())
}

// ---- CRM records ----

async fn tasks_with_the_same_idempotency_key_are_created_once(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    let new = NewTask {
        contact_id: Some(id.clone()),
        title: "Call now".into(),
        assignee: Some("olga".into()),
        due_at: Some(10),
        idempotency_key: Some("run-1:step-3".into()),
    };
    let (first, created) = store.create_task(&t, new.clone(), "install-1").await?.context("task")?;
    assert!(created);
    assert_eq!(first.created_by, "install-1");
    assert_eq!(first.status, "open");
    let (second, created) = store.create_task(&t, new.clone(), "install-1").await?.context("task")?;
    assert!(!created);
    assert_eq!(second, first);
    let unkeyed = NewTask { idempotency_key: None, ..new };
    let (third, created) = store.create_task(&t, unkeyed, "api").await?.context("task")?;
    assert!(created);
    assert_ne!(third.id, first.id);

    let patch = TaskPatch { status: Some("done".into()), due_at: Some(None), ..Default::default() };
    let done = store.patch_task(&t, &first.id, patch).await?.context("patched")?;
    assert_eq!((done.status.as_str(), done.due_at), ("done", None));
    let bad = TaskPatch { status: Some("maybe".into()), ..Default::default() };
    assert!(matches!(store.patch_task(&t, &first.id, bad).await, Err(StoreError::Invalid(_))));

    let open = TaskFilter { contact_id: Some(id.clone()), status: Some("open".into()) };
    assert_eq!(store.list_tasks(&t, &open, None, 100).await?.items, vec![third.clone()]);
    let all = TaskFilter { contact_id: Some(id.clone()), status: None };
    assert_eq!(store.list_tasks(&t, &all, None, 100).await?.items.len(), 2);
    assert_eq!(store.get_task(&t, &third.id).await?, Some(third.clone()));
    assert!(store.delete_task(&t, &third.id).await?);
    assert_eq!(store.get_task(&t, &third.id).await?, None);
    let orphan = NewTask { contact_id: Some("missing".into()), title: "x".into(), ..Default::default() };
    assert_eq!(store.create_task(&t, orphan, "api").await?, None);
    Ok(())
}

async fn companies_and_deals_reference_only_their_tenants_records(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let new = NewCompany { name: "Initech".into(), domain: Some("Initech.COM".into()), ..Default::default() };
    let co = store.create_company(&t, new).await?;
    assert_eq!(co.domain.as_deref(), Some("initech.com"));
    let theirs = store.create_company(&other, NewCompany { name: "Theirs".into(), ..Default::default() }).await?;
    let ann = store.create_contact(&t, NewContact { company_id: Some(co.id.clone()), ..Default::default() }).await?;
    assert_eq!(ann.company_id.as_deref(), Some(co.id.as_str()));
    let foreign = NewContact { company_id: Some(theirs.id.clone()), ..Default::default() };
    assert!(matches!(store.create_contact(&t, foreign).await, Err(StoreError::UnknownReference { .. })));

    let deal = NewDeal {
        name: "Renewal".into(),
        amount: Some(1200.0),
        contact_id: Some(ann.id.clone()),
        company_id: Some(co.id.clone()),
        ..Default::default()
    };
    let deal = store.create_deal(&t, deal).await?;
    assert_eq!(deal.stage, "new");
    let patch = serde_json::from_value(serde_json::json!({"stage": "won", "amount": null}))?;
    let won = store.patch_deal(&t, &deal.id, patch).await?.context("deal")?;
    assert_eq!((won.stage.as_str(), won.amount), ("won", None));
    let bad = serde_json::from_value(serde_json::json!({"company_id": theirs.id}))?;
    assert!(matches!(store.patch_deal(&t, &deal.id, bad).await, Err(StoreError::UnknownReference { .. })));
    let filter = cairn::store::DealFilter { stage: Some("won".into()), ..Default::default() };
    assert_eq!(store.list_deals(&t, &filter, None, 10).await?.items, vec![won.clone()]);
    assert!(store.list_deals(&other, &Default::default(), None, 10).await?.items.is_empty());

    let patch = serde_json::from_value(serde_json::json!({"properties": {"tier": "gold"}, "domain": null}))?;
    let co2 = store.patch_company(&t, &co.id, patch).await?.context("company")?;
    assert_eq!(co2.domain, None);
    assert_eq!(co2.properties, props(&[("tier", text("gold"))]));
    assert_eq!(store.list_companies(&t, None, 10).await?.items, vec![co2]);
    assert_eq!(store.get_company(&other, &co.id).await?, None);

    // Deleting the company keeps the contact and deal, without it.
    assert!(store.delete_company(&t, &co.id).await?);
    assert_eq!(store.get_contact(&t, &ann.id).await?.and_then(|c| c.company_id), None);
    assert_eq!(store.get_deal(&t, &deal.id).await?.and_then(|d| d.company_id), None);
    assert!(store.delete_deal(&t, &deal.id).await?);
    assert_eq!(store.get_deal(&t, &deal.id).await?, None);
    Ok(())
}

// ---- plugins ----

async fn a_plugin_version_is_immutable_once_uploaded(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let bytes = b"\0asm component bytes".to_vec();
    let hash = sha256_hex(&bytes);
    let v1 = store.put_plugin_version(Some(&t), "scorer", "1.0.0", &hash, &bytes, r#"{"name":"scorer"}"#).await?;
    assert_eq!((v1.size, v1.hash.as_str()), (bytes.len() as i64, hash.as_str()));
    let again = store.put_plugin_version(Some(&t), "scorer", "1.0.0", &hash, &bytes, "{}").await?;
    assert_eq!(again, v1, "the same bytes again return the stored version");
    let changed = b"\0asm other bytes".to_vec();
    let conflict = store.put_plugin_version(Some(&t), "scorer", "1.0.0", &sha256_hex(&changed), &changed, "{}").await;
    assert!(matches!(conflict, Err(StoreError::VersionConflict { .. })), "{conflict:?}");
    let wrong_hash = store.put_plugin_version(Some(&t), "scorer", "1.0.1", &hash, &changed, "{}").await;
    assert!(matches!(wrong_hash, Err(StoreError::Invalid(_))));

    // Another tenant may use the same name and version; the bytes are stored once.
    let theirs = store.put_plugin_version(Some(&other), "scorer", "1.0.0", &hash, &bytes, "{}").await?;
    assert_ne!(theirs.id, v1.id);
    let global = store.put_plugin_version(None, "mailer", "2.0.0", &sha256_hex(&changed), &changed, "{}").await?;
    assert_eq!(global.tenant_id, None);
    assert_eq!(store.plugin_bytes(&hash).await?, Some(bytes));
    assert_eq!(store.plugin_bytes("0000").await?, None);

    // Visibility: own and global versions only.
    assert_eq!(store.get_plugin_version(Some(&t), &v1.id).await?, Some(v1.clone()));
    assert_eq!(store.get_plugin_version(Some(&t), &global.id).await?, Some(global.clone()));
    assert_eq!(store.get_plugin_version(Some(&t), &theirs.id).await?, None);
    assert_eq!(store.get_plugin_version(None, &v1.id).await?, None);
    let listed: Vec<String> = store.list_plugin_versions(Some(&t)).await?.into_iter().map(|v| v.id).collect();
    assert_eq!(listed, [global.id.clone(), v1.id.clone()], "by name: mailer, scorer");
    assert_eq!(store.list_plugin_versions(None).await?, vec![global.clone()]);
    assert_eq!(store.find_plugin_version(Some(&t), "scorer", "1.0.0").await?.map(|v| v.id), Some(v1.id));
    assert_eq!(store.find_plugin_version(Some(&t), "mailer", "2.0.0").await?.map(|v| v.id), Some(global.id));
    Ok(())
}

async fn installs_are_created_patched_listed_and_deleted(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let v1 = plugin(&store, Some(&t), "scorer", "1.0.0", b"v1").await?;
    let v2 = plugin(&store, Some(&t), "scorer", "1.1.0", b"v2").await?;
    let theirs = plugin(&store, Some(&other), "scorer", "9.0.0", b"v9").await?;

    let new = NewInstall {
        plugin_version_id: v1.clone(),
        config: serde_json::json!({"weight": 2}),
        grants: vec!["store-read".into(), "http:hooks.example.com".into(), "store-read".into()],
        enabled: None,
        auto_upgrade: None,
    };
    let inst = store.create_install(&t, new).await?;
    assert_eq!(inst.plugin_name, "scorer");
    assert_eq!(inst.plugin_version, "1.0.0");
    assert_eq!(inst.grants, ["http:hooks.example.com", "store-read"]);
    assert!(inst.enabled);
    assert_eq!(store.get_install(&t, &inst.id).await?, Some(inst.clone()));
    assert_eq!(store.get_install(&other, &inst.id).await?, None);

    let foreign = NewInstall {
        plugin_version_id: theirs,
        config: serde_json::json!({}),
        grants: vec![],
        enabled: None,
        auto_upgrade: None,
    };
    assert!(matches!(store.create_install(&t, foreign).await, Err(StoreError::UnknownReference { .. })));
    let not_object = NewInstall {
        plugin_version_id: v1.clone(),
        config: serde_json::json!([1]),
        grants: vec![],
        enabled: None,
        auto_upgrade: None,
    };
    assert!(matches!(store.create_install(&t, not_object).await, Err(StoreError::Invalid(_))));

    let patch = InstallPatch {
        plugin_version_id: Some(v2),
        config: Some(serde_json::json!({"weight": 3})),
        grants: Some(vec!["state".into()]),
        enabled: Some(false),
        auto_upgrade: Some(true),
    };
    let patched = store.patch_install(&t, &inst.id, patch).await?.context("patched")?;
    assert_eq!(patched.plugin_version, "1.1.0");
    assert_eq!(patched.config, serde_json::json!({"weight": 3}));
    assert_eq!(patched.grants, ["state"]);
    assert!(patched.auto_upgrade && !inst.auto_upgrade);
    assert_eq!(store.auto_upgrade_installs(&t, "scorer").await?.len(), 1);
    assert!(store.auto_upgrade_installs(&t, "other").await?.is_empty());
    let change = cairn::store::InstallChange {
        id: cairn::store::new_id(),
        tenant_id: t.clone(),
        install_id: inst.id.clone(),
        action: "refused".into(),
        from_version_id: Some(patched.plugin_version_id.clone()),
        to_version_id: None,
        from_version: Some("1.1.0".into()),
        to_version: Some("2.0.0".into()),
        reason: Some("self-test failed".into()),
        checks: Some(serde_json::json!([{"name": "x", "passed": false, "detail": "y"}])),
        at: 5,
    };
    store.record_install_change(&change).await?;
    assert_eq!(store.install_history(&t, &inst.id, 10).await?, vec![change]);
    assert!(store.install_history(&other, &inst.id, 10).await?.is_empty());
    assert!(!patched.enabled);
    assert_eq!(store.patch_install(&other, &inst.id, InstallPatch::default()).await?, None);

    let second = install(&store, &t, &v1).await?;
    assert_eq!(store.list_installs(&t).await?.len(), 2);
    assert!(store.list_installs(&other).await?.is_empty());
    let enabled: Vec<String> = store.list_all_enabled_installs().await?.into_iter().map(|i| i.id).collect();
    assert_eq!(enabled, [second]);

    assert!(!store.delete_install(&other, &inst.id).await?);
    assert!(store.delete_install(&t, &inst.id).await?);
    assert_eq!(store.get_install(&t, &inst.id).await?, None);
    Ok(())
}

async fn plugin_state_belongs_to_one_install_of_one_tenant(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let v = plugin(&store, None, "counter", "1.0.0", b"counter").await?;
    let mine = install(&store, &t, &v).await?;
    let sibling = install(&store, &t, &v).await?;
    let theirs = install(&store, &other, &v).await?;

    assert_eq!(store.state_get(&t, &mine, "n").await?, None);
    store.state_set(&t, &mine, "n", b"1").await?;
    store.state_set(&t, &mine, "n", b"2").await?;
    assert_eq!(store.state_get(&t, &mine, "n").await?, Some(b"2".to_vec()));
    assert_eq!(store.state_get(&t, &sibling, "n").await?, None, "each install has its own state");
    assert_eq!(store.state_get(&other, &mine, "n").await?, None, "another tenant cannot read it");
    assert!(matches!(store.state_set(&other, &mine, "n", b"9").await, Err(StoreError::UnknownReference { .. })));
    store.state_set(&other, &theirs, "n", b"7").await?;
    assert_eq!(store.state_get(&t, &mine, "n").await?, Some(b"2".to_vec()));

    assert!(!store.state_delete(&other, &mine, "n").await?);
    assert!(store.state_delete(&t, &mine, "n").await?);
    assert!(!store.state_delete(&t, &mine, "n").await?);
    assert_eq!(store.state_get(&t, &mine, "n").await?, None);

    // State goes with its install.
    store.state_set(&t, &sibling, "k", b"v").await?;
    store.delete_install(&t, &sibling).await?;
    let rows = sqlx::query("SELECT COUNT(*) AS n FROM plugin_state WHERE install_id = $1")
        .bind(&sibling)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows.try_get::<i64, _>("n")?, 0);
    Ok(())
}

async fn invocations_are_recorded_listed_and_counted(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let base = InvocationRecord {
        id: String::new(),
        tenant_id: t.clone(),
        install_id: "a".into(),
        kind: "score".into(),
        contact_id: None,
        event_id: None,
        ok: true,
        error_cause: None,
        error_message: None,
        fuel_used: Some(1_000),
        duration_us: 50,
        idempotency_key: None,
        output_json: None,
        at: 1_000,
        plugin_version_id: None,
        input_json: None,
        input_status: None,
    };
    for i in 0..4 {
        store.record_invocation(&InvocationRecord { id: new_id(), at: 1_000 + i, ..base.clone() }).await?;
    }
    let failure = InvocationRecord {
        id: new_id(),
        ok: false,
        error_cause: Some("fuel".into()),
        error_message: Some("x".repeat(10_000)),
        at: 2_000,
        ..base.clone()
    };
    store.record_invocation(&failure).await?;
    store.record_invocation(&InvocationRecord { id: new_id(), install_id: "b".into(), ..base.clone() }).await?;

    let listed = store.list_invocations(&t, Some("a"), 10).await?;
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].id, failure.id, "newest first");
    assert_eq!(listed[0].error_cause.as_deref(), Some("fuel"));
    assert_eq!(listed[0].error_message.as_ref().map(|m| m.len()), Some(4096), "long messages are cut");
    assert_eq!(store.list_invocations(&t, None, 10).await?.len(), 6);
    assert_eq!(store.list_invocations(&t, None, 2).await?.len(), 2);
    assert!(store.list_invocations("other", None, 10).await?.is_empty());
    let counts = store.invocation_counts(&t, "a", 0).await?;
    assert_eq!((counts.ok, counts.failed), (4, 1));
    assert_eq!(store.invocation_counts(&t, "a", 1_500).await?.failed, 1);
    Ok(())
}

/// A recorded call with input `input` (JSON text), about `contact`, at `at`.
fn call_with_input(tenant: &str, contact: &str, ok: bool, input: Option<String>, at: i64) -> InvocationRecord {
    InvocationRecord {
        id: new_id(),
        tenant_id: tenant.into(),
        install_id: "hook".into(),
        kind: "execute".into(),
        contact_id: Some(contact.into()),
        event_id: None,
        ok,
        error_cause: (!ok).then(|| "plugin".into()),
        error_message: (!ok).then(|| "upstream said no".into()),
        fuel_used: Some(1_000),
        duration_us: 50,
        idempotency_key: Some("run:r:s".into()),
        output_json: None,
        at,
        plugin_version_id: Some("version-1".into()),
        input_json: input,
        input_status: None,
    }
}

async fn an_invocation_keeps_its_input_for_its_own_tenant_and_lists_leave_it_out(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let input = serde_json::json!({"export": "execute", "contact": {"id": "c1"}, "idempotency_key": "run:r:s"});
    let failed = call_with_input(&t, "c1", false, Some(input.to_string()), 1_000);
    store.record_invocation(&failed).await?;

    let got = store.get_invocation(&t, &failed.id).await?.context("invocation")?;
    assert_eq!(got.input_status, Some(InputStatus::Kept));
    assert_eq!(serde_json::from_str::<serde_json::Value>(got.input_json.as_deref().context("input")?)?, input);
    assert_eq!(got.plugin_version_id.as_deref(), Some("version-1"));
    assert_eq!(InvocationRecord { input_status: None, ..got.clone() }, failed, "round trip");
    assert_eq!(store.get_invocation(&other, &failed.id).await?, None, "another tenant's id is unknown");
    assert_eq!(store.get_invocation(&t, "missing").await?, None);

    // Lists are light: the status, never the input itself.
    let listed = store.list_invocations(&t, None, 10).await?;
    assert_eq!((listed[0].input_json.as_deref(), listed[0].input_status), (None, Some(InputStatus::Kept)));

    // An input over the cap is not kept, and the record says so.
    let huge = format!("{{\"export\": \"execute\", \"pad\": \"{}\"}}", "x".repeat(MAX_INPUT_JSON));
    let dropped = call_with_input(&t, "c2", true, Some(huge), 2_000);
    store.record_invocation(&dropped).await?;
    let got = store.get_invocation(&t, &dropped.id).await?.context("invocation")?;
    assert_eq!((got.input_json, got.input_status), (None, Some(InputStatus::TooLarge)));
    // A call recorded without input says nothing about one.
    let bare = call_with_input(&t, "c1", true, None, 3_000);
    store.record_invocation(&bare).await?;
    let got = store.get_invocation(&t, &bare.id).await?.context("invocation")?;
    assert_eq!((got.input_json, got.input_status), (None, None));

    // Filters: by contact, by outcome, both.
    let ids = |items: Vec<InvocationRecord>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let by = |contact: Option<&str>, ok: Option<bool>| InvocationFilter {
        contact_id: contact.map(str::to_string),
        ok,
        ..InvocationFilter::default()
    };
    assert_eq!(
        ids(store.list_invocations_where(&t, &by(Some("c1"), None), 10).await?),
        [bare.id.as_str(), failed.id.as_str()]
    );
    assert_eq!(ids(store.list_invocations_where(&t, &by(None, Some(false)), 10).await?), [failed.id.as_str()]);
    assert_eq!(ids(store.list_invocations_where(&t, &by(Some("c2"), Some(true)), 10).await?), [dropped.id.as_str()]);
    assert!(store.list_invocations_where(&t, &by(Some("c2"), Some(false)), 10).await?.is_empty());
    assert!(store.list_invocations_where(&other, &by(Some("c1"), None), 10).await?.is_empty());
    Ok(())
}

async fn inputs_past_their_retention_are_erased_and_their_records_kept(store: Store) -> anyhow::Result<()> {
    const DAY: i64 = 86_400_000;
    let t0 = 1_767_225_600_000;
    let clock = Clock::manual(t0);
    let store = store.with_clock(clock.clone());
    let t = tenant(&store, "Acme").await?;
    let input = || Some(r#"{"export": "score"}"#.to_string());
    // More than one batch of old inputs, and one recent.
    let mut old = Vec::new();
    for i in 0..1_003 {
        let call = call_with_input(&t, "c1", i % 2 == 0, input(), t0 - 10 * DAY + i);
        store.record_invocation(&call).await?;
        old.push(call.id);
    }
    let recent = call_with_input(&t, "c1", false, input(), t0 - DAY);
    store.record_invocation(&recent).await?;

    // By the store's clock: a week back from now erases the 10-day-old ones.
    let week = std::time::Duration::from_secs(7 * 86_400);
    assert_eq!(cairn::server::expire_invocation_inputs(&store, week).await?, 1_003);
    for id in [&old[0], &old[1_002]] {
        let got = store.get_invocation(&t, id).await?.context("the record stays")?;
        assert_eq!((got.input_json, got.input_status), (None, Some(InputStatus::Expired)));
    }
    let got = store.get_invocation(&t, &recent.id).await?.context("recent")?;
    assert_eq!(got.input_status, Some(InputStatus::Kept));
    assert!(got.input_json.is_some());
    assert_eq!(store.expire_invocation_inputs(t0 - 7 * DAY).await?, 0, "nothing old is left");
    assert_eq!(store.list_invocations(&t, None, 1000).await?.len(), 1000, "records are kept");

    // Time passes: the recent one expires in its turn.
    clock.advance(7 * DAY);
    assert_eq!(cairn::server::expire_invocation_inputs(&store, week).await?, 1);
    let got = store.get_invocation(&t, &recent.id).await?.context("recent")?;
    assert_eq!((got.input_json, got.input_status), (None, Some(InputStatus::Expired)));
    Ok(())
}

// ---- automation ----

async fn lifecycle_thresholds_are_set_listed_and_removed(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    store.set_lifecycle_threshold(&t, "sql", 80.0).await?;
    store.set_lifecycle_threshold(&t, "mql", 40.0).await?;
    store.set_lifecycle_threshold(&t, "mql", 50.0).await?;
    let listed = store.list_lifecycle_thresholds(&t).await?;
    let pairs: Vec<(String, f64)> = listed.into_iter().map(|l| (l.stage, l.min_score)).collect();
    assert_eq!(pairs, [("mql".to_string(), 50.0), ("sql".to_string(), 80.0)]);
    assert!(store.list_lifecycle_thresholds("other").await?.is_empty());
    assert!(matches!(store.set_lifecycle_threshold(&t, "mql", f64::INFINITY).await, Err(StoreError::Invalid(_))));
    assert!(store.delete_lifecycle_threshold(&t, "sql").await?);
    assert!(!store.delete_lifecycle_threshold(&t, "sql").await?);
    assert_eq!(store.list_lifecycle_thresholds(&t).await?.len(), 1);
    Ok(())
}

// ---- backend-specific ----

#[tokio::test]
async fn a_sqlite_file_is_created_on_first_open_and_keeps_its_data() -> anyhow::Result<()> {
    let db = TempSqlite::new();
    assert!(!db.path().exists());
    let store = db.open().await?;
    assert!(db.path().exists());
    let t = tenant(&store, "Acme").await?;
    let journal: String = sqlx::query("PRAGMA journal_mode").fetch_one(store.pool()).await?.try_get(0)?;
    assert_eq!(journal, "wal");
    store.close().await;
    // Reopening runs the migrations again (a no-op) and finds the data.
    let store = db.open().await?;
    assert_eq!(store.get_tenant(&t).await?.map(|t| t.name), Some("Acme".into()));
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn an_in_memory_sqlite_store_works_for_dry_runs() -> anyhow::Result<()> {
    let store = Store::open("sqlite::memory:").await?;
    let t = tenant(&store, "Acme").await?;
    let id = contact(&store, &t, "ann@example.com").await?;
    store.insert_events(&t, vec![event(&id, "x")]).await?;
    assert_eq!(store.count_events(&t, &id, "x", 0).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_temporary_postgres_database_is_dropped_with_its_guard() -> anyhow::Result<()> {
    let db = TempPostgres::create().await?;
    let name = db.name().to_owned();
    let store = db.open().await?;
    tenant(&store, "Acme").await?;
    drop(db); // with the pool still open: WITH (FORCE) ends its connections
    let url = std::env::var(cairn::store::testing::POSTGRES_URL_ENV)
        .unwrap_or_else(|_| cairn::store::testing::DEFAULT_POSTGRES_URL.to_owned());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    let found =
        sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1").bind(&name).fetch_optional(&mut conn).await?;
    assert!(found.is_none(), "database {name} should be gone");
    Ok(())
}

#[test]
fn values_read_plain_json_and_keep_timestamps() -> anyhow::Result<()> {
    let v: Properties = serde_json::from_str(
        r#"{"n": null, "b": false, "i": 3, "f": 2.5, "s": "x", "l": ["a"], "t": {"$timestamp": 7}}"#,
    )?;
    assert_eq!(v["n"], Value::Null);
    assert_eq!(v["b"], Value::Bool(false));
    assert_eq!(v["i"], Value::Number(3.0));
    assert_eq!(v["f"], Value::Number(2.5));
    assert_eq!(v["s"], text("x"));
    assert_eq!(v["l"], Value::TextList(vec!["a".into()]));
    assert_eq!(v["t"], Value::Timestamp(7));
    let round: Properties = serde_json::from_str(&serde_json::to_string(&v)?)?;
    assert_eq!(round, v);
    let err = serde_json::from_str::<Value>(r#"{"$timestamp": 1, "x": 2}"#);
    assert!(err.is_err());
    Ok(())
}

/// Ingest cost on SQLite: 100 batches of 1000 events. Prints the rate; run
/// with `cargo test -p cairn --test store -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn sqlite_ingest_rate_is_printed() -> anyhow::Result<()> {
    let db = TempSqlite::new();
    let store = db.open().await?;
    let t = tenant(&store, "Bench").await?;
    let contacts: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..100 {
            v.push(contact(&store, &t, &format!("c{i}@example.com")).await?);
        }
        v
    };
    let batches: Vec<Vec<NewEvent>> = (0..100)
        .map(|b| {
            (0..1000)
                .map(|i| NewEvent {
                    properties: props(&[("url", text("/pricing")), ("n", Value::Number(i as f64))]),
                    idempotency_key: if i % 10 == 0 { Some(format!("b{b}-e{i}")) } else { None },
                    ..event(&contacts[i % contacts.len()], "page_viewed")
                })
                .collect()
        })
        .collect();
    let started = std::time::Instant::now();
    for batch in batches {
        store.insert_events(&t, batch).await?;
    }
    let elapsed = started.elapsed();
    let rate = 100_000.0 / elapsed.as_secs_f64();
    println!("SQLite ingest: 100 x 1000 events in {elapsed:?}: {rate:.0} events/s, {:.1} µs/event", 1e6 / rate);

    let single = std::time::Instant::now();
    for i in 0..2000 {
        store.insert_events(&t, vec![event(&contacts[i % contacts.len()], "one")]).await?;
    }
    let per = single.elapsed() / 2000;
    println!("SQLite ingest, one event per transaction: {per:?} per event");

    let grouped = std::time::Instant::now();
    for _ in 0..20 {
        let reqs = (0..100).map(|i| (t.clone(), vec![event(&contacts[i], "grouped")])).collect();
        store.insert_events_many(reqs).await?;
    }
    let per = grouped.elapsed() / 2000;
    println!("SQLite ingest, group commit of 100 one-event requests: {per:?} per event");
    Ok(())
}
