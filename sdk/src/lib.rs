//! # cairn-sdk: write Cairn plugins in Rust
//!
//! A Cairn plugin is one WebAssembly component that implements one or more
//! kinds: [`Trigger`], [`Action`], [`Scorer`], [`Channel`]. Implement
//! [`Plugin`] (name, version, config type) plus the trait of each kind, then
//! register the type once:
//!
//! ```ignore
//! use cairn_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Config { tag: String }
//!
//! struct Tagger;
//! impl Plugin for Tagger {
//!     type Config = Config;
//!     fn describe() -> Description {
//!         Description::new("tagger", "0.1.0").kind(Kind::Action).capability(Capability::StoreWrite)
//!     }
//! }
//! impl Action for Tagger {
//!     fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
//!         ctx.add_tag(&input.contact.id, &config.tag)?;
//!         Ok(Outputs::new())
//!     }
//! }
//! cairn_sdk::register_plugin!(Tagger: action);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and upload the
//! `.wasm` file. Test it natively with [`testkit`], against an in-memory store.
//!
//! ## Layout
//! - [`types`]: contacts, events, values, descriptions, errors: plain Rust
//!   types, no generated code.
//! - [`context`]: [`Context`], the handle to host services (store, state, log,
//!   HTTP) that every call receives, and the [`Host`] trait behind it, so the
//!   same plugin code runs inside Cairn and under `cargo test`.
//! - [`kinds`]: one trait per plugin kind.
//! - `glue` (hidden): the generated WIT bindings and the conversions between
//!   them and [`types`]; the bindings never leak into the public API.
//! - [`testkit`]: an in-memory [`Host`] and helpers that run a plugin natively.
//! - `alloc` (wasm, feature `bump-alloc`, default): a bump allocator; every
//!   call runs in a fresh instance, so memory is never reused and allocating
//!   the call's input costs a few instructions per string. Turn the feature
//!   off to bring your own `#[global_allocator]`.

#[cfg(all(target_family = "wasm", feature = "bump-alloc"))]
mod alloc;
pub mod context;
#[doc(hidden)]
pub mod glue;
pub mod kinds;
pub mod testkit;
pub mod types;

pub use context::{Context, Host, HttpRequest, HttpResponse, LogLevel, NewTask};
pub use kinds::{Action, Channel, Plugin, Scorer, Trigger};
pub use types::*;

/// The version of the `cairn:plugin` WIT package this SDK builds against.
/// It is embedded in every component the SDK builds: the component's
/// imports and exports name it (`cairn:plugin/meta@0.1.0`), and Cairn shows
/// it per uploaded version (`wit` in `GET /v1/plugins/{id}`).
pub const WIT_VERSION: &str = "0.1.0";

/// The version of the optional `cairn:health` package (the `self-test`
/// export) the SDK builds against.
pub const HEALTH_WIT_VERSION: &str = "0.1.0";

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::context::{Context, HttpRequest, HttpResponse, LogLevel, NewTask};
    pub use crate::kinds::{Action, Channel, Plugin, Scorer, Trigger};
    pub use crate::types::*;
}

/// Exports a type as a Cairn plugin component.
///
/// `register_plugin!(MyPlugin: scorer)` or, for a component that implements
/// several kinds, `register_plugin!(MyPlugin: channel, action)`. The type
/// implements [`Plugin`] and the trait of each listed kind. Kinds that are not
/// listed answer with a non-retryable error if the host ever calls them.
#[macro_export]
macro_rules! register_plugin {
    ($ty:ty : $($kind:ident),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __CairnExports;

        impl $crate::glue::wit::exports::cairn::plugin::meta::Guest for __CairnExports {
            fn describe() -> $crate::glue::wit::cairn::plugin::types::Description {
                $crate::glue::describe::<$ty>()
            }
        }
        impl $crate::glue::wit::exports::cairn::health::self_test::Guest for __CairnExports {
            fn run() -> Vec<$crate::glue::wit::exports::cairn::health::self_test::Check> {
                $crate::glue::self_test::<$ty>()
            }
        }
        $crate::__cairn_kind!(@scorer $ty; $($kind),+);
        $crate::__cairn_kind!(@action $ty; $($kind),+);
        $crate::__cairn_kind!(@trigger $ty; $($kind),+);
        $crate::__cairn_kind!(@channel $ty; $($kind),+);

        // Native builds (unit tests, rlib users) must not export the WIT
        // symbols: their names contain `:`, which native cdylib links reject.
        #[cfg(target_family = "wasm")]
        $crate::glue::wit::__export_cairn_plugin!(__CairnExports with_types_in $crate::glue::wit);
    };
}

/// Implements one kind's export for `register_plugin!`: the real trait when the
/// kind is listed, an "unsupported" answer otherwise. Matches the kind names
/// literally, one at a time.
#[doc(hidden)]
#[macro_export]
macro_rules! __cairn_kind {
    // scorer
    (@scorer $ty:ty; scorer $(, $rest:ident)*) => {
        impl $crate::glue::wit::exports::cairn::plugin::scorer::Guest for __CairnExports {
            fn score(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                contact: $crate::glue::wit::cairn::plugin::types::Contact,
                events: Vec<$crate::glue::wit::cairn::plugin::types::Event>,
            ) -> Result<$crate::glue::wit::exports::cairn::plugin::scorer::ScoreResult, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::score::<$ty>(ctx, config, contact, events)
            }
        }
    };
    (@scorer $ty:ty; $other:ident $(, $rest:ident)*) => { $crate::__cairn_kind!(@scorer $ty; $($rest),*); };
    (@scorer $ty:ty;) => {
        impl $crate::glue::wit::exports::cairn::plugin::scorer::Guest for __CairnExports {
            fn score(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: $crate::glue::wit::cairn::plugin::types::Contact,
                _: Vec<$crate::glue::wit::cairn::plugin::types::Event>,
            ) -> Result<$crate::glue::wit::exports::cairn::plugin::scorer::ScoreResult, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("scorer"))
            }
        }
    };
    // action
    (@action $ty:ty; action $(, $rest:ident)*) => {
        impl $crate::glue::wit::exports::cairn::plugin::action::Guest for __CairnExports {
            fn execute(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                input: $crate::glue::wit::exports::cairn::plugin::action::ActionInput,
            ) -> Result<Vec<$crate::glue::wit::cairn::plugin::types::Property>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::execute::<$ty>(ctx, config, input)
            }
        }
    };
    (@action $ty:ty; $other:ident $(, $rest:ident)*) => { $crate::__cairn_kind!(@action $ty; $($rest),*); };
    (@action $ty:ty;) => {
        impl $crate::glue::wit::exports::cairn::plugin::action::Guest for __CairnExports {
            fn execute(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: $crate::glue::wit::exports::cairn::plugin::action::ActionInput,
            ) -> Result<Vec<$crate::glue::wit::cairn::plugin::types::Property>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("action"))
            }
        }
    };
    // trigger
    (@trigger $ty:ty; trigger $(, $rest:ident)*) => {
        impl $crate::glue::wit::exports::cairn::plugin::trigger::Guest for __CairnExports {
            fn on_event(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                contact: $crate::glue::wit::cairn::plugin::types::Contact,
                event: $crate::glue::wit::cairn::plugin::types::Event,
                history: Vec<$crate::glue::wit::cairn::plugin::types::Event>,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::trigger::Enrollment>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::on_event::<$ty>(ctx, config, contact, event, history)
            }
            fn on_schedule(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                now: i64,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::trigger::Enrollment>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::on_schedule::<$ty>(ctx, config, now)
            }
        }
    };
    (@trigger $ty:ty; $other:ident $(, $rest:ident)*) => { $crate::__cairn_kind!(@trigger $ty; $($rest),*); };
    (@trigger $ty:ty;) => {
        impl $crate::glue::wit::exports::cairn::plugin::trigger::Guest for __CairnExports {
            fn on_event(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: $crate::glue::wit::cairn::plugin::types::Contact,
                _: $crate::glue::wit::cairn::plugin::types::Event,
                _: Vec<$crate::glue::wit::cairn::plugin::types::Event>,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::trigger::Enrollment>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("trigger"))
            }
            fn on_schedule(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: i64,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::trigger::Enrollment>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("trigger"))
            }
        }
    };
    // channel
    (@channel $ty:ty; channel $(, $rest:ident)*) => {
        impl $crate::glue::wit::exports::cairn::plugin::channel::Guest for __CairnExports {
            fn send(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                message: $crate::glue::wit::exports::cairn::plugin::channel::Message,
            ) -> Result<$crate::glue::wit::exports::cairn::plugin::channel::Receipt, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::send::<$ty>(ctx, config, message)
            }
            fn parse_inbound(
                ctx: $crate::glue::wit::cairn::plugin::types::CallContext,
                config: String,
                request: $crate::glue::wit::exports::cairn::plugin::channel::InboundRequest,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::channel::InboundEvent>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                $crate::glue::parse_inbound::<$ty>(ctx, config, request)
            }
        }
    };
    (@channel $ty:ty; $other:ident $(, $rest:ident)*) => { $crate::__cairn_kind!(@channel $ty; $($rest),*); };
    (@channel $ty:ty;) => {
        impl $crate::glue::wit::exports::cairn::plugin::channel::Guest for __CairnExports {
            fn send(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: $crate::glue::wit::exports::cairn::plugin::channel::Message,
            ) -> Result<$crate::glue::wit::exports::cairn::plugin::channel::Receipt, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("channel"))
            }
            fn parse_inbound(
                _: $crate::glue::wit::cairn::plugin::types::CallContext,
                _: String,
                _: $crate::glue::wit::exports::cairn::plugin::channel::InboundRequest,
            ) -> Result<Vec<$crate::glue::wit::exports::cairn::plugin::channel::InboundEvent>, $crate::glue::wit::cairn::plugin::types::PluginError> {
                Err($crate::glue::unsupported("channel"))
            }
        }
    };
}
