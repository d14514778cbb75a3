//! [`StoreError`]: everything the store can fail with.
//!
//! Variants are split by what the caller should do about them: input the
//! caller can fix (`Invalid`, `UnknownContact`, `UnknownReference`,
//! `UnknownTenant`, `DuplicateEmail`, `VersionConflict`), and trouble with the
//! database itself (`Database`, `Migrate`, `Corrupt`), whose details belong in
//! the host log, never in an HTTP answer. Missing ids of the caller's own
//! tenant are not errors: lookups return `None` and mutations `false`/`None`,
//! so an id of another tenant behaves exactly like one that does not exist.

/// An error from the customer store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The input breaks a rule of the store (the message says which, in plain words).
    #[error("{0}")]
    Invalid(String),
    /// An event names a contact id that does not exist in the event's tenant
    /// (the API answers 422; a plugin gets "not found").
    #[error("contact `{0}` does not exist")]
    UnknownContact(String),
    /// A new or patched record refers to another record that does not exist
    /// in the tenant (a deal's company, an install's plugin version, ...).
    #[error("{entity} `{id}` does not exist")]
    UnknownReference {
        /// What kind of record was named, e.g. `company`.
        entity: &'static str,
        /// The id that was not found.
        id: String,
    },
    /// The tenant itself does not exist (e.g. it was removed while a request was in flight).
    #[error("tenant `{0}` does not exist")]
    UnknownTenant(String),
    /// Another contact of the tenant already has this email.
    #[error("a contact with email `{0}` already exists")]
    DuplicateEmail(String),
    /// This plugin name and version were already uploaded with different bytes;
    /// a version is immutable once published, so upload under a new version.
    #[error("plugin `{name}` version `{version}` already exists with different contents")]
    VersionConflict {
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
    /// Some events of a batch were processed by another node meanwhile (its
    /// claim outlived the lease and the events were claimed again): the
    /// batch's transaction was rolled back, so each event counts once.
    #[error("{0} events of this batch were already processed by another node; the batch was discarded")]
    ClaimLost(u64),
    /// Another program held the SQLite file's write lock past the busy
    /// timeout while this write waited its turn (see `Store::write_gate`);
    /// retry later.
    #[error("the SQLite database is locked by another program")]
    Locked,
    /// The database URL names no supported backend.
    #[error("unsupported database URL `{0}`: use a SQLite file path, sqlite:..., or postgres://...")]
    UnsupportedUrl(String),
    /// A stored value could not be read back (e.g. JSON text that no longer parses).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database failed or refused a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True for errors the caller caused and can fix by changing the request
    /// (as opposed to database trouble).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid(_)
                | StoreError::UnknownContact(_)
                | StoreError::UnknownReference { .. }
                | StoreError::UnknownTenant(_)
                | StoreError::DuplicateEmail(_)
                | StoreError::VersionConflict { .. }
        )
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// True when `e` is a unique-constraint violation (on either backend).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
