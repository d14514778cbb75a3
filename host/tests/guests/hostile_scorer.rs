// Shared by the test scorer guests (`include!`d, not a crate: each guest
// stays one self-contained component). Declares a scorer named `$name`
// (version `$version`, default 0.1.0), with no config, whose `score` runs
// `$body` and whose self-test (when given) returns `$checks`; the guest's
// own docs say what it does to the host.
macro_rules! hostile_scorer {
    ($name:literal, $version:literal, $body:block, $checks:block) => {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Config {}

        struct Guest;

        impl Plugin for Guest {
            type Config = Config;

            fn describe() -> Description {
                Description::new($name, $version).summary("test guest").kind(Kind::Scorer)
            }

            fn self_test() -> Vec<SelfCheck> $checks
        }

        impl Scorer for Guest {
            fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> $body
        }

        cairn_sdk::register_plugin!(Guest: scorer);
    };
    ($name:literal, $version:literal, $body:block) => {
        hostile_scorer!($name, $version, $body, { Vec::new() });
    };
    ($name:literal, $body:block) => {
        hostile_scorer!($name, "0.1.0", $body);
    };
}
