//! `iptables-restore --noflush` input that installs or removes a plan in
//! one transaction, given the table as `iptables-save -t nat` printed it.
//! Pure: the state is text in, the payload text out.

use std::fmt;

use super::plan::{CHAINS, FamilyPlan, MARK};

/// The `nat` table as `iptables-save` printed it.
#[derive(Debug, Default)]
pub struct TableState {
    chains: Vec<String>,
    rules: Vec<String>,
}

impl TableState {
    /// Reads the `*nat` section of `iptables-save` output (other tables,
    /// comments and counters are ignored).
    pub fn parse(save: &str) -> Self {
        let mut state = Self::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if line == "COMMIT" {
                in_nat = false;
            } else if let Some(chain) = line.strip_prefix(':') {
                if let Some(name) = chain.split_whitespace().next() {
                    state.chains.push(name.to_owned());
                }
            } else if line.starts_with("-A ") {
                state.rules.push(line.to_owned());
            }
        }
        state
    }

    /// The table as it is right after `plan` was installed on an empty one
    /// (what `--cleanup --dry-run` shows the removal of).
    pub fn after(plan: &FamilyPlan) -> Self {
        let rules: Vec<String> = plan
            .rules
            .iter()
            .chain(&plan.jumps)
            .map(ToString::to_string)
            .collect();
        let chains = CHAINS
            .into_iter()
            .filter(|c| {
                rules
                    .iter()
                    .any(|r| chain_of(r) == *c || target_of(r) == Some(c))
            })
            .map(str::to_owned)
            .collect();
        Self { chains, rules }
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    /// Rules this tool added to chains it does not own (the marked jumps).
    fn marked(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(String::as_str)
            .filter(|r| !CHAINS.contains(&chain_of(r)) && is_marked(r))
    }

    /// A rule not written by this tool that enters one of its chains:
    /// Istio's own `istio-init` ran here, or someone else uses the names.
    fn foreign(&self) -> Option<&str> {
        self.rules.iter().map(String::as_str).find(|r| {
            !CHAINS.contains(&chain_of(r))
                && !is_marked(r)
                && target_of(r).is_some_and(|t| CHAINS.contains(&t))
        })
    }

    /// This tool's chains present in the table.
    fn own_chains(&self) -> impl Iterator<Item = &'static str> + '_ {
        CHAINS.into_iter().filter(|c| self.has_chain(c))
    }

    /// Whether anything this tool installs is present.
    pub fn installed(&self) -> bool {
        self.marked().next().is_some() || self.own_chains().next().is_some()
    }
}

fn chain_of(rule: &str) -> &str {
    rule.split_whitespace().nth(1).unwrap_or("")
}

fn target_of(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-j" || word == "-g" {
            return words.next();
        }
    }
    None
}

fn is_marked(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == MARK)
}

/// A rule that enters this tool's chains but was not installed by it.
#[derive(Debug, PartialEq, Eq)]
pub struct Foreign(pub String);

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the nat table already has `{}`, which tracemesh did not install (did Istio's istio-init run in this pod?); remove those rules first",
            self.0
        )
    }
}

/// `iptables-restore` input, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    lines: Vec<String>,
}

impl Payload {
    /// Line `n`, counted from 1 as `iptables-restore` counts in its errors.
    pub fn line(&self, n: usize) -> Option<&str> {
        self.lines.get(n.checked_sub(1)?).map(String::as_str)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Installs `plan` over `state`: jumps this tool added before are deleted,
/// its chains are flushed and refilled, chains it no longer needs are
/// removed, and the jumps are added again — so running it twice leaves the
/// same rules as running it once.
pub fn install(plan: &FamilyPlan, state: &TableState) -> Result<Payload, Foreign> {
    if let Some(rule) = state.foreign() {
        return Err(Foreign(rule.to_owned()));
    }
    let used: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| {
            plan.rules
                .iter()
                .chain(&plan.jumps)
                .any(|r| r.chain == *c || r.spec.last().is_some_and(|t| t == c))
        })
        .collect();
    let mut lines = vec!["*nat".to_owned()];
    lines.extend(state.marked().map(delete));
    let stale: Vec<&str> = state.own_chains().filter(|c| !used.contains(c)).collect();
    lines.extend(used.iter().chain(&stale).map(|c| format!(":{c} - [0:0]")));
    lines.extend(stale.iter().map(|c| format!("-X {c}")));
    lines.extend(
        plan.rules
            .iter()
            .chain(&plan.jumps)
            .map(ToString::to_string),
    );
    lines.push("COMMIT".to_owned());
    Ok(Payload { lines })
}

/// Removes what [`install`] added: the marked jumps, then this tool's
/// chains. `None` when nothing of it is there.
pub fn cleanup(state: &TableState) -> Result<Option<Payload>, Foreign> {
    if let Some(rule) = state.foreign() {
        return Err(Foreign(rule.to_owned()));
    }
    if !state.installed() {
        return Ok(None);
    }
    let mut lines = vec!["*nat".to_owned()];
    lines.extend(state.marked().map(delete));
    let own: Vec<&str> = state.own_chains().collect();
    lines.extend(own.iter().map(|c| format!(":{c} - [0:0]")));
    lines.extend(own.iter().map(|c| format!("-X {c}")));
    lines.push("COMMIT".to_owned());
    Ok(Some(Payload { lines }))
}

fn delete(rule: &str) -> String {
    format!("-D {}", rule.trim_start_matches("-A "))
}

/// The payload line `iptables-restore` names in its error output (`Error
/// occurred at line: 4` when parsing, `line 4 failed` when committing).
pub fn failing_line(stderr: &str) -> Option<usize> {
    let number = |s: &str| {
        let digits: String = s
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    if let Some((_, rest)) = stderr.split_once("line: ") {
        return number(rest);
    }
    stderr
        .match_indices("line ")
        .find_map(|(i, m)| number(&stderr[i + m.len()..]))
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Family, Options, plan};
    use super::*;

    const FRESH: &str =
        "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 30 13:19:20 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 10.9.9.9/32 -m comment --comment \"unrelated rule\" -j RETURN
COMMIT
# Completed on Mon Nov 30 13:19:20 2026
";

    fn installed() -> String {
        format!(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ISTIO_OUTPUT\nCOMMIT\n*nat
:PREROUTING ACCEPT [3:180]
:OUTPUT ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -m comment --comment {MARK} -j ISTIO_INBOUND
-A OUTPUT -d 10.9.9.9/32 -m comment --comment \"unrelated rule\" -j RETURN
-A OUTPUT -p tcp -m comment --comment {MARK} -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
        )
    }

    #[test]
    fn a_fresh_table_gets_chains_rules_then_jumps() {
        let plan = plan(&Options::default(), Family::V4);
        let text = install(&plan, &TableState::parse(FRESH))
            .unwrap()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(
            lines[1..5],
            [
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                ":ISTIO_REDIRECT - [0:0]"
            ]
        );
        assert!(!text.contains("-D "), "nothing to delete: {text}");
        assert!(!text.contains("unrelated"), "other rules are not touched");
        assert_eq!(lines.last(), Some(&"COMMIT"));
        assert_eq!(
            lines[lines.len() - 2],
            "-A OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT"
        );
    }

    #[test]
    fn installing_again_deletes_the_previous_jumps_first() {
        let plan = plan(&Options::default(), Family::V4);
        let text = install(&plan, &TableState::parse(&installed()))
            .unwrap()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..3],
            [
                "-D PREROUTING -p tcp -m comment --comment tracemesh -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT",
            ]
        );
        assert_eq!(text.matches("-A PREROUTING").count(), 1);
    }

    #[test]
    fn a_chain_the_new_plan_does_not_use_is_removed() {
        let options = Options {
            inbound_ports: super::super::plan::Selection::Only(Vec::new()),
            ..Options::default()
        };
        let text = install(
            &plan(&options, Family::V4),
            &TableState::parse(&installed()),
        )
        .unwrap()
        .to_string();
        assert!(text.contains(":ISTIO_INBOUND - [0:0]\n"), "{text}");
        assert!(text.contains("-X ISTIO_INBOUND\n"), "{text}");
        assert!(!text.contains("-A PREROUTING"), "{text}");
    }

    #[test]
    fn cleanup_removes_marked_jumps_and_own_chains_only() {
        let text = cleanup(&TableState::parse(&installed()))
            .unwrap()
            .expect("installed")
            .to_string();
        assert_eq!(
            text,
            "*nat
-D PREROUTING -p tcp -m comment --comment tracemesh -j ISTIO_INBOUND
-D OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-X ISTIO_INBOUND
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(cleanup(&TableState::parse(FRESH)), Ok(None));
    }

    #[test]
    fn istios_own_rules_are_not_taken_over() {
        let istio = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n";
        let state = TableState::parse(istio);
        let plan = plan(&Options::default(), Family::V4);
        let err = install(&plan, &state).unwrap_err();
        assert_eq!(err.0, "-A OUTPUT -p tcp -j ISTIO_OUTPUT");
        assert!(err.to_string().contains("istio-init"));
        assert!(cleanup(&state).is_err());
    }

    #[test]
    fn the_failing_line_is_read_from_both_error_forms() {
        let parse = "iptables-restore v1.8.9 (nf_tables): owner: Bad value for \"--uid-owner\" option: \"99999999999\"\nError occurred at line: 4\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n";
        assert_eq!(failing_line(parse), Some(4));
        assert_eq!(failing_line("iptables-restore: line 12 failed\n"), Some(12));
        assert_eq!(failing_line("Permission denied (you must be root)"), None);
        let payload = install(
            &plan(&Options::default(), Family::V4),
            &TableState::default(),
        )
        .unwrap();
        assert_eq!(payload.line(1), Some("*nat"));
        assert_eq!(payload.line(0), None);
    }
}
