//! A definition compiled for running: every step by id, with where a run
//! goes after it.
//!
//! A run's cursor is a step id, not a position: ids are unique across the
//! whole definition (nested steps included), so "what comes next" is a map
//! lookup. Nested lists are flattened at compile time: the last step of an
//! `if` branch or a split variant continues with the step after the `if` or
//! split, and an empty branch goes straight there.

use std::collections::HashMap;

use super::definition::{Definition, Step};

/// Where a step leads.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The step.
    pub step: Step,
    /// The step after it (None: the run is done).
    pub next: Option<String>,
    /// For `if`: the first step when the condition holds, and when it does not.
    pub branches: Option<(Option<String>, Option<String>)>,
    /// For `split`: each variant's first step.
    pub variants: Vec<Option<String>>,
}

/// A compiled definition.
#[derive(Clone, Debug)]
pub struct Program {
    /// The definition it was compiled from.
    pub definition: Definition,
    /// The first step (None only for a definition without steps, which
    /// validation refuses).
    pub first: Option<String>,
    nodes: HashMap<String, Node>,
}

impl Program {
    /// Compile a checked definition.
    pub fn compile(definition: Definition) -> Program {
        let mut nodes = HashMap::new();
        let first = link(&definition.steps, None, &mut nodes);
        Program { definition, first, nodes }
    }

    /// The node of step `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }
}

/// Link `steps` so the last continues with `after`; returns the first id
/// (or `after` when the list is empty).
fn link(steps: &[Step], after: Option<String>, nodes: &mut HashMap<String, Node>) -> Option<String> {
    let mut next = after;
    for step in steps.iter().rev() {
        let mut node = Node { step: step.clone(), next: next.clone(), branches: None, variants: Vec::new() };
        match step {
            Step::If { then, otherwise, .. } => {
                node.branches = Some((link(then, next.clone(), nodes), link(otherwise, next.clone(), nodes)));
            }
            Step::Split { variants, .. } => {
                node.variants = variants.iter().map(|v| link(&v.steps, next.clone(), nodes)).collect();
            }
            Step::Action { .. } | Step::Delay { .. } => {}
        }
        next = Some(step.id().to_string());
        nodes.insert(step.id().to_string(), node);
    }
    next
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::workflows::definition::parse;

    #[test]
    fn nested_steps_continue_after_their_parent() {
        let d = parse(&json!({
            "name": "w", "trigger": {"type": "event", "kind": "k"},
            "steps": [
                {"id": "a", "type": "delay", "duration": "1d"},
                {"id": "b", "type": "if", "condition": {"type": "tag", "tag": "t"},
                 "then": [{"id": "c", "type": "delay", "duration": "1d"}], "else": []},
                {"id": "d", "type": "split", "variants": [
                    {"name": "A", "weight": 1, "steps": [{"id": "e", "type": "delay", "duration": "1d"}]},
                    {"name": "B", "weight": 1}]},
                {"id": "f", "type": "delay", "duration": "1d"}
            ]
        }))
        .unwrap();
        let p = Program::compile(d);
        assert_eq!(p.first.as_deref(), Some("a"));
        assert_eq!(p.node("a").unwrap().next.as_deref(), Some("b"));
        let b = p.node("b").unwrap();
        assert_eq!(b.branches, Some((Some("c".into()), Some("d".into()))));
        assert_eq!(p.node("c").unwrap().next.as_deref(), Some("d"));
        assert_eq!(p.node("d").unwrap().variants, vec![Some("e".into()), Some("f".into())]);
        assert_eq!(p.node("e").unwrap().next.as_deref(), Some("f"));
        assert_eq!(p.node("f").unwrap().next, None);
    }
}
