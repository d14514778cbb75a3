//! Bearer-key authentication as axum extractors.
//!
//! `TenantAuth` resolves a tenant key to its tenant id; `AdminAuth` accepts
//! only the admin key. Keys are stored hashed; positive lookups are cached in
//! memory by hash (keys never change owner), so the hot path does not pay a
//! database query per request.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::store::{Principal, Store};

/// Entries kept before the cache is cleared: bounds memory if someone sprays
/// many valid keys.
const CACHE_CAP: usize = 10_000;

/// Key hash → principal, for keys that authenticated.
#[derive(Default)]
pub struct AuthCache {
    known: Mutex<HashMap<[u8; 32], Principal>>,
}

impl AuthCache {
    /// Who `key` speaks for.
    pub async fn principal(&self, store: &Store, key: &str) -> Result<Option<Principal>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(p) = self.known.lock().ok().and_then(|m| m.get(&digest).cloned()) {
            return Ok(Some(p));
        }
        let found = store.authenticate(key).await?;
        if let Some(p) = &found
            && let Ok(mut m) = self.known.lock()
        {
            if m.len() >= CACHE_CAP {
                m.clear();
            }
            m.insert(digest, p.clone());
        }
        Ok(found)
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_key(&parts.headers)
}

/// The key of an `Authorization: Bearer …` header.
pub(crate) fn bearer_key(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(axum::http::header::AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(ApiError::Unauthorized)?;
    Ok(key.trim())
}

/// The tenant a request acts for.
pub struct TenantAuth(pub String);

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        match state.auth.principal(&state.store, key).await? {
            Some(Principal::Tenant(t)) => Ok(TenantAuth(t)),
            Some(Principal::Admin) => {
                Err(ApiError::Forbidden("this is an admin key; tenant resources need a tenant's API key".into()))
            }
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// A request made with the admin key.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        match state.auth.principal(&state.store, key).await? {
            Some(Principal::Admin) => Ok(AdminAuth),
            Some(Principal::Tenant(_)) => Err(ApiError::Forbidden("this needs the admin key".into())),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// Either key: the admin (acting on the global catalog) or a tenant.
pub struct AnyAuth(pub Principal);

impl FromRequestParts<AppState> for AnyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        state.auth.principal(&state.store, key).await?.map(AnyAuth).ok_or(ApiError::Unauthorized)
    }
}
