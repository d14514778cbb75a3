//! Checks of a definition against the tenant's installs, run when a
//! definition is saved and again when a version is activated (an install
//! may have been removed in between).

use std::collections::HashMap;

use super::definition::{Definition, InstallUse, Problem, installs_named};
use crate::engine::actions::merged_config;
use crate::registry::{Registry, config};
use crate::runtime::Kind;

/// Every problem with the installs `definition` names in `tenant`.
/// `disabled` maps the tenant's disabled installs to their plugin's name:
/// the registry loads enabled installs only, and "disabled" is a clearer
/// answer than "not installed" for those.
pub fn against_installs(
    definition: &Definition,
    registry: &Registry,
    tenant: &str,
    disabled: &HashMap<String, String>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut add = |pointer: String, message: String| problems.push(Problem { pointer, message });
    for (pointer, install_id, usage) in installs_named(definition) {
        let Some(active) = registry.get(tenant, install_id) else {
            match disabled.get(install_id) {
                Some(plugin) => add(pointer, format!("install `{install_id}` ({plugin}) is disabled; enable it first")),
                None => add(pointer, format!("install `{install_id}` is not installed in this tenant")),
            }
            continue;
        };
        let name = &active.plugin.description.name;
        match usage {
            InstallUse::Trigger => {
                if !active.is(Kind::Trigger) {
                    add(pointer, format!("install `{install_id}` ({name}) is not a trigger plugin"));
                }
            }
            InstallUse::Step { config: step_config, message, pointer: step } => {
                let (action, channel) = (active.is(Kind::Action), active.is(Kind::Channel));
                if !action && !channel {
                    add(pointer, format!("install `{install_id}` ({name}) is neither an action nor a channel plugin"));
                    continue;
                }
                if message.is_some() && !channel {
                    add(
                        format!("{step}/message"),
                        format!("install `{install_id}` ({name}) is not a channel: it cannot send a message"),
                    );
                }
                if message.is_none() && !action {
                    add(
                        format!("{step}/message"),
                        format!("install `{install_id}` ({name}) is a channel: the step needs a `message`"),
                    );
                }
                if step_config.is_some() {
                    let merged = merged_config(&active.config_text, step_config);
                    let value: serde_json::Value = serde_json::from_str(&merged).unwrap_or_default();
                    if let Err(errors) = config::validate(&active.plugin.description.config_schema, &value) {
                        for e in errors {
                            add(format!("{step}/config{}", e.field), e.message);
                        }
                    }
                }
            }
        }
    }
    problems
}
