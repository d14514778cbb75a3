//! The workflow definition: the JSON document a tenant saves, its parsing,
//! and the checks that need nothing but the document.
//!
//! A definition is data, versioned by the store; a run pins the version it
//! enrolled on. Parsing collects every problem it can find and names each by
//! a JSON pointer to the step and field (`/steps/2/then/0/duration`), so a
//! builder fixes a definition in one round instead of one error at a time.
//! Checks that need the tenant's installs (does `install_id` exist, is the
//! step's config valid for that plugin) live in [`super::validate`].
//!
//! ```json
//! {
//!   "name": "Welcome new leads",
//!   "trigger": {"type": "event", "kind": "contact_created"},
//!   "enrollment": {"reenroll": false},
//!   "goals": [{"id": "deal", "condition": {"type": "event", "kind": "deal_created"}}],
//!   "steps": [
//!     {"id": "assign", "type": "action", "install_id": "…"},
//!     {"id": "wait", "type": "delay", "duration": "1d", "until": "09:00"},
//!     {"id": "clicked", "type": "if", "condition": {"type": "event", "kind": "email_clicked"},
//!      "then": [{"id": "call", "type": "action", "install_id": "…", "config": {"title": "Call now"}}]}
//!   ]
//! }
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::time::{self, DelaySpec, ScheduleSpec};
use crate::store::{Properties, Value};

/// Most steps in one definition (nested steps count): a bound on the work
/// one enrollment can cause and on the size of a run's record.
pub const MAX_STEPS: usize = 200;
/// Deepest nesting of `if` and `split` steps.
pub const MAX_DEPTH: usize = 8;
/// Deepest nesting of conditions (`all`, `any`, `not`).
pub const MAX_CONDITION_DEPTH: usize = 8;
/// Most attempts of one action step: retries of a broken plugin are bounded.
pub const MAX_ATTEMPTS: u32 = 20;
/// Attempts when the definition does not say.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Backoff before the first retry when the definition does not say.
pub const DEFAULT_BACKOFF: &str = "30s";
/// Enrollments of one contact in one workflow per 24 hours, whatever the
/// enrollment rules say: the guard against a workflow that re-triggers
/// itself through its own actions.
pub const DEFAULT_MAX_ENROLLMENTS_PER_DAY: u32 = 10;

/// A saved workflow definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Display name.
    pub name: String,
    /// What it is for (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What enrolls a contact.
    pub trigger: Trigger,
    /// Who may enroll, and how often.
    #[serde(default)]
    pub enrollment: EnrollmentRules,
    /// Conditions that end a run early when met (e.g. a deal was created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub goals: Vec<Goal>,
    /// How failed action steps are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What a run does, in order.
    pub steps: Vec<Step>,
}

/// What enrolls a contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// An event of `kind` whose properties equal every value in `where`.
    Event {
        /// Event kind, e.g. `page_viewed`.
        kind: String,
        /// Property values the event must have.
        #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
        filter: Properties,
    },
    /// A contact property changed: to `to` when given; across a number when
    /// `crosses_above`/`crosses_below` is given.
    PropertyChanged {
        /// Property name (core fields such as `owner` or `lifecycle_stage` too).
        name: String,
        /// The new value that enrolls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Value>,
        /// Enroll when the value rises from below this number to at least it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crosses_above: Option<f64>,
        /// Enroll when the value falls from at least this number to below it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crosses_below: Option<f64>,
    },
    /// The contact's score crossed a number.
    Score {
        /// Enroll when the score rises from below this to at least it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crosses_above: Option<f64>,
        /// Enroll when the score falls from at least this to below it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crosses_below: Option<f64>,
    },
    /// At a time of day in the tenant's time zone, every contact that
    /// matches `segment` enrolls.
    Schedule {
        /// Wall time, "09:00".
        at: String,
        /// Only on these days ("mon".."sun"); every day when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        weekdays: Vec<String>,
        /// Which contacts enroll.
        segment: Condition,
    },
    /// A trigger plugin install decides (its `on-event` export).
    Plugin {
        /// The trigger install.
        install_id: String,
    },
}

/// Who may enroll, and how often.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRules {
    /// May a contact enroll again after an earlier run ended? (Never while
    /// one is in flight.)
    #[serde(default)]
    pub reenroll: bool,
    /// At least this long between two enrollments of one contact, e.g. "30d".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
    /// Contacts that match this never enroll (e.g. tagged `unsubscribed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_if: Option<Condition>,
    /// Hard cap per contact per 24 hours (default and maximum
    /// [`DEFAULT_MAX_ENROLLMENTS_PER_DAY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_day: Option<u32>,
}

/// A condition that ends a run early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// Goal id, recorded as the run's exit reason.
    pub id: String,
    /// When met, the run ends with status `exited`.
    pub condition: Condition,
}

/// How failed action steps are retried: only errors the plugin (or the
/// host) marks retryable; the wait doubles after each attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per step, the first included (1 = no retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, e.g. "30s".
    #[serde(default = "default_backoff")]
    pub backoff: String,
}

fn default_attempts() -> u32 {
    DEFAULT_ATTEMPTS
}

fn default_backoff() -> String {
    DEFAULT_BACKOFF.to_string()
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: DEFAULT_ATTEMPTS, backoff: default_backoff() }
    }
}

/// One step of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Call an action or channel install.
    Action {
        /// Step id, unique in the definition.
        id: String,
        /// The install to call.
        install_id: String,
        /// Settings for this step, merged over the install's config (top-level keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<serde_json::Value>,
        /// For a channel install: the message to send.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageTemplate>,
    },
    /// Wait.
    Delay {
        /// Step id.
        id: String,
        /// A time span, e.g. "5d" or "2h30m" (whole days are calendar days).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Working days (Mon–Fri) to wait.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        business_days: Option<u32>,
        /// Then until this wall time, "09:00", in the tenant's time zone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        /// Never end on a Saturday or Sunday.
        #[serde(default)]
        weekdays_only: bool,
    },
    /// Branch on a condition.
    If {
        /// Step id.
        id: String,
        /// The condition.
        condition: Condition,
        /// Steps when it holds.
        #[serde(default)]
        then: Vec<Step>,
        /// Steps when it does not.
        #[serde(default, rename = "else")]
        otherwise: Vec<Step>,
    },
    /// A/B split: each run takes one variant, at random by weight, recorded on the run.
    Split {
        /// Step id.
        id: String,
        /// The variants.
        variants: Vec<Variant>,
    },
}

/// One branch of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Name recorded on the run, e.g. "A".
    pub name: String,
    /// Relative weight (> 0).
    pub weight: u32,
    /// Steps of this variant.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// What a channel step sends. `{{first_name}}`, `{{email}}`, `{{owner}}` and
/// `{{<property>}}` are replaced from the contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTemplate {
    /// Subject (email) or title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Body.
    #[serde(default)]
    pub body: String,
}

/// A condition on a contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// A property (or a core field: email, owner, first_name, …) compared with a value.
    Property {
        /// Name.
        name: String,
        /// Comparison.
        op: Op,
        /// The value compared with (not for `exists`/`not_exists`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
    /// The contact has the tag.
    Tag {
        /// Tag.
        tag: String,
    },
    /// The score compared with a number.
    Score {
        /// Comparison (`eq`, `ne`, `gt`, `gte`, `lt`, `lte`).
        op: Op,
        /// Number.
        value: f64,
    },
    /// The lifecycle stage is `is`, or at least `at_least`.
    Stage {
        /// Exactly this stage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is: Option<String>,
        /// This stage or a later one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<String>,
    },
    /// An event of `kind` happened since the run enrolled (or within `within`,
    /// e.g. "7d"), at least `min_count` times.
    Event {
        /// Event kind.
        kind: String,
        /// Property values it must have.
        #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
        filter: Properties,
        /// A window instead of "since enrollment".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
        /// How many (default 1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        min_count: u32,
    },
    /// No activity for `days` days (since creation when never active).
    Inactive {
        /// Days.
        days: u32,
    },
    /// Every condition holds.
    All {
        /// Conditions.
        of: Vec<Condition>,
    },
    /// At least one holds.
    Any {
        /// Conditions.
        of: Vec<Condition>,
    },
    /// The condition does not hold.
    Not {
        /// Condition.
        condition: Box<Condition>,
    },
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater than (numbers, timestamps, text).
    Gt,
    /// Greater or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less or equal.
    Lte,
    /// Text contains, or a list holds, the value.
    Contains,
    /// The value is one of a list of texts.
    In,
    /// The property is set.
    Exists,
    /// The property is not set.
    NotExists,
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::Action { id, .. } | Step::Delay { id, .. } | Step::If { id, .. } | Step::Split { id, .. } => id,
        }
    }

    /// The step's type as written in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Action { .. } => "action",
            Step::Delay { .. } => "delay",
            Step::If { .. } => "if",
            Step::Split { .. } => "split",
        }
    }
}

/// One problem in a definition, at a JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where, e.g. `/steps/2/duration`.
    pub pointer: String,
    /// What is wrong, e.g. "`5x` is not a duration".
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", if self.pointer.is_empty() { "/" } else { &self.pointer }, self.message)
    }
}

/// Parse and check a definition. Every problem found is returned.
pub fn parse(json: &serde_json::Value) -> Result<Definition, Vec<Problem>> {
    parse_and(json, |_| Vec::new())
}

/// [`parse`], with `more` checks (those against the tenant's installs) run
/// on every document that deserializes, also when it has problems of its
/// own: every problem comes back in one answer. A problem `more` finds at a
/// pointer the document's checks already named is left out (one message per
/// field is enough: an empty `install_id` need not also be "not installed").
pub fn parse_and(
    json: &serde_json::Value,
    more: impl FnOnce(&Definition) -> Vec<Problem>,
) -> Result<Definition, Vec<Problem>> {
    let definition: Definition = match serde_path_to_error::deserialize(json) {
        Ok(d) => d,
        Err(e) => {
            let pointer = pointer_of(e.path());
            return Err(vec![Problem { pointer, message: e.into_inner().to_string() }]);
        }
    };
    let mut problems = check(&definition);
    let named: HashSet<String> = problems.iter().map(|p| p.pointer.clone()).collect();
    problems.extend(more(&definition).into_iter().filter(|p| !named.contains(&p.pointer)));
    if problems.is_empty() { Ok(definition) } else { Err(problems) }
}

/// serde_path_to_error's `steps[2].then[0].duration` as a JSON pointer.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1"))),
            Segment::Enum { variant } => out.push_str(&format!("/{variant}")),
            Segment::Unknown => {}
        }
    }
    out
}

/// Checks that need only the document.
fn check(d: &Definition) -> Vec<Problem> {
    let mut c = Checker { problems: Vec::new(), ids: HashSet::new(), steps: 0 };
    if d.name.trim().is_empty() || d.name.len() > 200 {
        c.add("/name", "a workflow name is 1 to 200 bytes");
    }
    c.trigger(&d.trigger);
    c.enrollment(&d.enrollment);
    let mut goal_ids = HashSet::new();
    for (i, goal) in d.goals.iter().enumerate() {
        let at = format!("/goals/{i}");
        if !valid_id(&goal.id) {
            c.add(&format!("{at}/id"), ID_RULE);
        } else if !goal_ids.insert(goal.id.as_str()) {
            c.add(&format!("{at}/id"), &format!("goal id `{}` is used twice", goal.id));
        }
        c.condition(&format!("{at}/condition"), &goal.condition, 0);
    }
    if d.retry.max_attempts == 0 || d.retry.max_attempts > MAX_ATTEMPTS {
        c.add("/retry/max_attempts", &format!("attempts are 1 to {MAX_ATTEMPTS}"));
    }
    if let Err(m) = time::parse_duration(&d.retry.backoff) {
        c.add("/retry/backoff", &m);
    }
    if d.steps.is_empty() {
        c.add("/steps", "a workflow has at least one step");
    }
    c.steps("/steps", &d.steps, 0);
    if c.steps > MAX_STEPS {
        c.add("/steps", &format!("a workflow has at most {MAX_STEPS} steps (this one has {})", c.steps));
    }
    c.problems
}

const ID_RULE: &str = "an id is 1 to 64 characters: lowercase letters, digits, `-` and `_`";

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

struct Checker<'a> {
    problems: Vec<Problem>,
    ids: HashSet<&'a str>,
    steps: usize,
}

impl<'a> Checker<'a> {
    fn add(&mut self, pointer: &str, message: &str) {
        self.problems.push(Problem { pointer: pointer.to_string(), message: message.to_string() });
    }

    fn nonempty(&mut self, pointer: &str, text: &str, what: &str) {
        if text.trim().is_empty() || text.len() > 200 {
            self.add(pointer, &format!("{what} is 1 to 200 bytes"));
        }
    }

    fn trigger(&mut self, t: &Trigger) {
        match t {
            Trigger::Event { kind, .. } => self.nonempty("/trigger/kind", kind, "an event kind"),
            Trigger::PropertyChanged { name, to, crosses_above, crosses_below } => {
                self.nonempty("/trigger/name", name, "a property name");
                let set = [to.is_some(), crosses_above.is_some(), crosses_below.is_some()];
                if set.iter().filter(|s| **s).count() > 1 {
                    self.add("/trigger", "give at most one of `to`, `crosses_above` and `crosses_below`");
                }
                self.finite("/trigger/crosses_above", *crosses_above);
                self.finite("/trigger/crosses_below", *crosses_below);
            }
            Trigger::Score { crosses_above, crosses_below } => {
                if crosses_above.is_some() == crosses_below.is_some() {
                    self.add("/trigger", "a score trigger has exactly one of `crosses_above` and `crosses_below`");
                }
                self.finite("/trigger/crosses_above", *crosses_above);
                self.finite("/trigger/crosses_below", *crosses_below);
            }
            Trigger::Schedule { .. } => {
                if let Err(p) = schedule_of(t) {
                    self.problems.push(p);
                }
                if let Trigger::Schedule { segment, .. } = t {
                    self.condition("/trigger/segment", segment, 0);
                }
            }
            Trigger::Plugin { install_id } => self.nonempty("/trigger/install_id", install_id, "an install id"),
        }
    }

    fn finite(&mut self, pointer: &str, n: Option<f64>) {
        if n.is_some_and(|n| !n.is_finite()) {
            self.add(pointer, "must be a finite number");
        }
    }

    fn enrollment(&mut self, e: &EnrollmentRules) {
        if let Some(interval) = &e.min_interval
            && let Err(m) = time::parse_duration(interval)
        {
            self.add("/enrollment/min_interval", &m);
        }
        if let Some(n) = e.max_per_day
            && (n == 0 || n > DEFAULT_MAX_ENROLLMENTS_PER_DAY)
        {
            self.add("/enrollment/max_per_day", &format!("is 1 to {DEFAULT_MAX_ENROLLMENTS_PER_DAY}"));
        }
        if let Some(c) = &e.suppress_if {
            self.condition("/enrollment/suppress_if", c, 0);
        }
    }

    fn steps(&mut self, at: &str, steps: &'a [Step], depth: usize) {
        if depth > MAX_DEPTH {
            self.add(at, &format!("steps nest at most {MAX_DEPTH} deep"));
            return;
        }
        for (i, step) in steps.iter().enumerate() {
            self.steps += 1;
            let at = format!("{at}/{i}");
            let id = step.id();
            if !valid_id(id) {
                self.add(&format!("{at}/id"), ID_RULE);
            } else if !self.ids.insert(id) {
                self.add(&format!("{at}/id"), &format!("step id `{id}` is used twice"));
            }
            match step {
                Step::Action { install_id, config, message, .. } => {
                    self.nonempty(&format!("{at}/install_id"), install_id, "an install id");
                    if config.as_ref().is_some_and(|c| !c.is_object()) {
                        self.add(&format!("{at}/config"), "a step's config is a JSON object");
                    }
                    if let Some(m) = message
                        && (m.body.len() > 64 << 10 || m.subject.as_ref().is_some_and(|s| s.len() > 1000))
                    {
                        self.add(&format!("{at}/message"), "a subject is at most 1000 bytes, a body 64 KiB");
                    }
                }
                Step::Delay { .. } => {
                    if let Err(p) = delay_of(step) {
                        self.problems.push(Problem { pointer: format!("{at}{}", p.pointer), message: p.message });
                    }
                }
                Step::If { condition, then, otherwise, .. } => {
                    self.condition(&format!("{at}/condition"), condition, 0);
                    self.steps(&format!("{at}/then"), then, depth + 1);
                    self.steps(&format!("{at}/else"), otherwise, depth + 1);
                }
                Step::Split { variants, .. } => {
                    if variants.len() < 2 || variants.len() > 10 {
                        self.add(&format!("{at}/variants"), "a split has 2 to 10 variants");
                    }
                    let mut names = HashSet::new();
                    for (j, v) in variants.iter().enumerate() {
                        let vat = format!("{at}/variants/{j}");
                        self.nonempty(&format!("{vat}/name"), &v.name, "a variant name");
                        if !names.insert(v.name.as_str()) {
                            self.add(&format!("{vat}/name"), &format!("variant `{}` is named twice", v.name));
                        }
                        if v.weight == 0 || v.weight > 10_000 {
                            self.add(&format!("{vat}/weight"), "a weight is 1 to 10000");
                        }
                        self.steps(&format!("{vat}/steps"), &v.steps, depth + 1);
                    }
                }
            }
        }
    }

    fn condition(&mut self, at: &str, c: &Condition, depth: usize) {
        if depth > MAX_CONDITION_DEPTH {
            self.add(at, &format!("conditions nest at most {MAX_CONDITION_DEPTH} deep"));
            return;
        }
        match c {
            Condition::Property { name, op, value } => {
                self.nonempty(&format!("{at}/name"), name, "a property name");
                match (op, value) {
                    (Op::Exists | Op::NotExists, _) => {}
                    (_, None) => self.add(&format!("{at}/value"), "this comparison needs a `value`"),
                    (Op::In, Some(Value::TextList(_))) => {}
                    (Op::In, Some(_)) => self.add(&format!("{at}/value"), "`in` takes a list of texts"),
                    _ => {}
                }
            }
            Condition::Tag { tag } => self.nonempty(&format!("{at}/tag"), tag, "a tag"),
            Condition::Score { op, value } => {
                if !matches!(op, Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte) {
                    self.add(&format!("{at}/op"), "a score compares with eq, ne, gt, gte, lt or lte");
                }
                self.finite(&format!("{at}/value"), Some(*value));
            }
            Condition::Stage { is, at_least } => {
                if is.is_some() == at_least.is_some() {
                    self.add(at, "a stage condition has exactly one of `is` and `at_least`");
                }
                for (field, stage) in [("is", is), ("at_least", at_least)] {
                    if let Some(s) = stage
                        && !crate::engine::pipeline::STAGES.contains(&s.as_str())
                    {
                        let known = crate::engine::pipeline::STAGES.join(", ");
                        self.add(&format!("{at}/{field}"), &format!("`{s}` is not a stage ({known})"));
                    }
                }
            }
            Condition::Event { kind, within, min_count, .. } => {
                self.nonempty(&format!("{at}/kind"), kind, "an event kind");
                if let Some(w) = within
                    && let Err(m) = time::parse_duration(w)
                {
                    self.add(&format!("{at}/within"), &m);
                }
                if *min_count == 0 || *min_count > 1000 {
                    self.add(&format!("{at}/min_count"), "is 1 to 1000");
                }
            }
            Condition::Inactive { days } => {
                if *days == 0 || *days > 3660 {
                    self.add(&format!("{at}/days"), "is 1 to 3660");
                }
            }
            Condition::All { of } | Condition::Any { of } => {
                if of.is_empty() {
                    self.add(&format!("{at}/of"), "lists at least one condition");
                }
                for (i, inner) in of.iter().enumerate() {
                    self.condition(&format!("{at}/of/{i}"), inner, depth + 1);
                }
            }
            Condition::Not { condition } => self.condition(&format!("{at}/condition"), condition, depth + 1),
        }
    }
}

/// The calendar form of a delay step (pointer relative to the step).
pub fn delay_of(step: &Step) -> Result<DelaySpec, Problem> {
    let Step::Delay { duration, business_days, until, weekdays_only, .. } = step else {
        return Err(Problem { pointer: String::new(), message: "not a delay step".into() });
    };
    let problem = |field: &str, message: String| Problem { pointer: format!("/{field}"), message };
    if duration.is_none() && business_days.is_none() && until.is_none() {
        return Err(problem("duration", "a delay needs `duration`, `business_days` or `until`".into()));
    }
    let span = match duration {
        Some(d) => time::parse_span(d).map_err(|m| problem("duration", m))?,
        None => time::Span::default(),
    };
    if business_days.is_some_and(|n| n > 260) {
        return Err(problem("business_days", "is at most 260 (a year)".into()));
    }
    let until = match until {
        Some(u) => Some(time::parse_time_of_day(u).map_err(|m| problem("until", m))?),
        None => None,
    };
    Ok(DelaySpec { span, business_days: business_days.unwrap_or(0), until, weekdays_only: *weekdays_only })
}

/// The calendar form of a schedule trigger.
pub fn schedule_of(trigger: &Trigger) -> Result<ScheduleSpec, Problem> {
    let Trigger::Schedule { at, weekdays, .. } = trigger else {
        return Err(Problem { pointer: "/trigger".into(), message: "not a schedule trigger".into() });
    };
    let at = time::parse_time_of_day(at).map_err(|message| Problem { pointer: "/trigger/at".into(), message })?;
    let mut days = Vec::new();
    for (i, d) in weekdays.iter().enumerate() {
        days.push(
            time::parse_weekday(d).map_err(|message| Problem { pointer: format!("/trigger/weekdays/{i}"), message })?,
        );
    }
    Ok(ScheduleSpec { at, weekdays: days })
}

/// Every install a definition names, with the pointer where it is named.
pub fn installs_named(d: &Definition) -> Vec<(String, &str, InstallUse<'_>)> {
    let mut out = Vec::new();
    if let Trigger::Plugin { install_id } = &d.trigger {
        out.push(("/trigger/install_id".to_string(), install_id.as_str(), InstallUse::Trigger));
    }
    fn walk<'a>(at: &str, steps: &'a [Step], out: &mut Vec<(String, &'a str, InstallUse<'a>)>) {
        for (i, step) in steps.iter().enumerate() {
            let at = format!("{at}/{i}");
            match step {
                Step::Action { install_id, config, message, .. } => out.push((
                    format!("{at}/install_id"),
                    install_id.as_str(),
                    InstallUse::Step { config: config.as_ref(), message: message.as_ref(), pointer: at.clone() },
                )),
                Step::If { then, otherwise, .. } => {
                    walk(&format!("{at}/then"), then, out);
                    walk(&format!("{at}/else"), otherwise, out);
                }
                Step::Split { variants, .. } => {
                    for (j, v) in variants.iter().enumerate() {
                        walk(&format!("{at}/variants/{j}/steps"), &v.steps, out);
                    }
                }
                Step::Delay { .. } => {}
            }
        }
    }
    walk("/steps", &d.steps, &mut out);
    out
}

/// How a definition uses an install.
#[derive(Debug)]
pub enum InstallUse<'a> {
    /// As its trigger.
    Trigger,
    /// In an action step.
    Step {
        /// The step's config override.
        config: Option<&'a serde_json::Value>,
        /// The step's message.
        message: Option<&'a MessageTemplate>,
        /// Pointer of the step.
        pointer: String,
    },
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(doc: serde_json::Value) -> Vec<Problem> {
        parse(&doc).err().unwrap_or_default()
    }

    fn minimal(steps: serde_json::Value) -> serde_json::Value {
        json!({"name": "w", "trigger": {"type": "event", "kind": "signed_up"}, "steps": steps})
    }

    #[test]
    fn a_complete_definition_parses_and_round_trips() {
        let doc = json!({
            "name": "Welcome",
            "trigger": {"type": "event", "kind": "contact_created", "where": {"source": "webform"}},
            "enrollment": {"reenroll": true, "min_interval": "30d", "suppress_if": {"type": "tag", "tag": "unsubscribed"}},
            "goals": [{"id": "deal", "condition": {"type": "event", "kind": "deal_created"}}],
            "retry": {"max_attempts": 5, "backoff": "1m"},
            "steps": [
                {"id": "assign", "type": "action", "install_id": "i1"},
                {"id": "wait", "type": "delay", "duration": "1d", "until": "09:00", "weekdays_only": true},
                {"id": "clicked", "type": "if",
                 "condition": {"type": "all", "of": [{"type": "event", "kind": "email_clicked"}, {"type": "score", "op": "gte", "value": 20}]},
                 "then": [{"id": "call", "type": "action", "install_id": "i2", "config": {"title": "Call now"}}],
                 "else": []},
                {"id": "ab", "type": "split", "variants": [
                    {"name": "A", "weight": 50, "steps": [{"id": "send-a", "type": "action", "install_id": "i3", "message": {"subject": "Hi", "body": "x"}}]},
                    {"name": "B", "weight": 50, "steps": []}]}
            ]
        });
        let d = parse(&doc).unwrap();
        assert_eq!(d.steps.len(), 4);
        assert_eq!(d.retry.max_attempts, 5);
        let again = parse(&serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(again, d);
        assert_eq!(installs_named(&d).len(), 3);
    }

    #[test]
    fn a_bad_duration_is_named_by_step_and_field() {
        let p = problems(minimal(json!([
            {"id": "a", "type": "delay", "duration": "1d"},
            {"id": "b", "type": "if", "condition": {"type": "tag", "tag": "x"},
             "then": [{"id": "c", "type": "delay", "duration": "5 parsecs"}]}
        ])));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].pointer, "/steps/1/then/0/duration");
    }

    #[test]
    fn type_errors_carry_the_path_serde_saw() {
        let p = problems(minimal(json!([{"id": "a", "type": "delay", "business_days": "two"}])));
        assert_eq!(p.len(), 1);
        assert!(p[0].pointer.starts_with("/steps/0"), "{p:?}");
    }

    #[test]
    fn unknown_fields_and_step_types_are_refused() {
        let p = problems(minimal(json!([{"id": "a", "type": "teleport"}])));
        assert!(p[0].message.contains("teleport"), "{p:?}");
        let p = problems(minimal(json!([{"id": "a", "type": "delay", "duration": "1d", "color": "red"}])));
        assert!(p[0].message.contains("color"), "{p:?}");
    }

    #[test]
    fn duplicate_and_malformed_step_ids_are_refused() {
        let p = problems(minimal(json!([
            {"id": "a", "type": "delay", "duration": "1d"},
            {"id": "a", "type": "delay", "duration": "1d"},
            {"id": "Bad Id", "type": "delay", "duration": "1d"}
        ])));
        let pointers: Vec<&str> = p.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(pointers, ["/steps/1/id", "/steps/2/id"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let doc = json!({
            "name": "",
            "trigger": {"type": "score"},
            "retry": {"max_attempts": 0},
            "steps": [{"id": "s", "type": "split", "variants": [{"name": "A", "weight": 0}]}]
        });
        let pointers: Vec<String> = problems(doc).into_iter().map(|p| p.pointer).collect();
        for expected in ["/name", "/trigger", "/retry/max_attempts", "/steps/0/variants", "/steps/0/variants/0/weight"]
        {
            assert!(pointers.iter().any(|p| p == expected), "{expected} missing from {pointers:?}");
        }
    }

    #[test]
    fn further_checks_run_on_a_document_with_problems_of_its_own() {
        let doc = minimal(json!([
            {"id": "a", "type": "delay", "duration": "5 parsecs"},
            {"id": "b", "type": "action", "install_id": ""},
            {"id": "c", "type": "action", "install_id": "gone"}
        ]));
        let installs = |d: &Definition| {
            installs_named(d)
                .into_iter()
                .map(|(pointer, id, _)| Problem { pointer, message: format!("`{id}` is not installed") })
                .collect()
        };
        let pointers: Vec<String> = parse_and(&doc, installs).unwrap_err().into_iter().map(|p| p.pointer).collect();
        assert_eq!(pointers, ["/steps/0/duration", "/steps/1/install_id", "/steps/2/install_id"]);
    }

    #[test]
    fn a_delay_needs_something_to_wait_for() {
        let p = problems(minimal(json!([{"id": "a", "type": "delay"}])));
        assert_eq!(p[0].pointer, "/steps/0/duration");
    }

    #[test]
    fn conditions_are_checked_where_they_appear() {
        let doc = json!({
            "name": "w",
            "trigger": {"type": "schedule", "at": "25:00", "segment": {"type": "inactive", "days": 0}},
            "goals": [{"id": "g", "condition": {"type": "stage", "is": "royalty"}}],
            "steps": [{"id": "a", "type": "if", "condition": {"type": "property", "name": "x", "op": "gt"}}]
        });
        let pointers: Vec<String> = problems(doc).into_iter().map(|p| p.pointer).collect();
        assert_eq!(
            pointers,
            ["/trigger/at", "/trigger/segment/days", "/goals/0/condition/is", "/steps/0/condition/value"]
        );
    }

    #[test]
    fn an_empty_workflow_is_refused() {
        let p = problems(minimal(json!([])));
        assert_eq!(p[0].pointer, "/steps");
    }
}
