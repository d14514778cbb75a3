//! Attack: a trigger that enrolls the contact of every event 5 000 times.
//!
//! The host must de-duplicate the enrollments (they share the event that
//! caused them) so the contact gets at most one run, not 5 000.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-enroll-flood", "0.1.0").summary("test guest").kind(Kind::Trigger)
    }
}

impl Trigger for Guest {
    fn on_event(
        _: &Context,
        _: &Config,
        contact: &Contact,
        _: &Event,
        _: &[Event],
    ) -> Result<Vec<Enrollment>, PluginError> {
        let one = Enrollment { contact_id: contact.id.clone(), reason: String::new() };
        Ok(vec![one; 5_000])
    }
}

cairn_sdk::register_plugin!(Guest: trigger);
