// Shared by the hostile scorer guests (`include!`d, not a crate: each guest
// stays one self-contained component). Declares a scorer named `$name`,
// with no config, whose `score` runs `$body`; the guest's own docs and
// helpers say what the attack is.
macro_rules! hostile_scorer {
    ($name:literal, $body:block) => {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Config {}

        struct Guest;

        impl Plugin for Guest {
            type Config = Config;

            fn describe() -> Description {
                Description::new($name, "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
            }
        }

        impl Scorer for Guest {
            fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> $body
        }

        cairn_sdk::register_plugin!(Guest: scorer);
    };
}
