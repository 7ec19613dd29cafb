//! Runs Debian's `iptables-save`/`iptables-restore` (and their `ip6tables`
//! twins, and `ip` for the IPv6 passthrough address), turning each failure
//! into an error that says which command or rule failed and why.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow};

use super::plan::Family;
use super::restore::{Payload, TableState, failing_line};

/// What `iptables` is spelled as for a family.
fn binary(family: Family, tool: &str) -> String {
    match family {
        Family::V4 => format!("iptables-{tool}"),
        Family::V6 => format!("ip6tables-{tool}"),
    }
}

/// Runs `program args` with `input` on stdin; `Ok(stdout)` when it exits 0,
/// else its stderr.
fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<Result<String, String>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "`{program}` was not found on PATH: install iptables and iproute2 (Debian: `apt-get install iptables iproute2`; the nft backend is the default)"
                )
            } else {
                anyhow!("cannot run `{program}`: {e}")
            }
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the rules to `{program}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{program}`"))?;
    if out.status.success() {
        Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Ok(Err(format!("{} ({})", stderr, out.status)))
    }
}

/// A hint for errors that mean missing privileges.
fn privilege_hint(stderr: &str) -> &'static str {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("must be root")
        || lower.contains("operation not permitted")
    {
        "; tracemesh iptables needs CAP_NET_ADMIN in the pod's network namespace (run it as root, or give the init container the NET_ADMIN and NET_RAW capabilities)"
    } else {
        ""
    }
}

/// The `nat` table as it is now.
pub fn save(family: Family) -> anyhow::Result<TableState> {
    let program = binary(family, "save");
    match run(&program, &["-t", "nat"], None)? {
        Ok(text) => Ok(TableState::parse(&text)),
        Err(stderr) => Err(anyhow!(
            "reading the {} nat table with `{program} -t nat` failed: {stderr}{}",
            family.name(),
            privilege_hint(&stderr)
        )),
    }
}

/// Applies `payload` in one `iptables-restore --noflush` transaction.
pub fn restore(family: Family, payload: &Payload) -> anyhow::Result<()> {
    let program = binary(family, "restore");
    let text = payload.to_string();
    match run(&program, &["--noflush"], Some(&text))? {
        Ok(_) => Ok(()),
        Err(stderr) => {
            let first = stderr.lines().next().unwrap_or_default();
            let hint = privilege_hint(&stderr);
            match failing_line(&stderr).and_then(|n| Some((n, payload.line(n)?))) {
                Some((n, rule)) => Err(anyhow!(
                    "{} rule `{rule}` (line {n} given to `{program} --noflush`) failed: {first}{hint}; nothing was changed",
                    family.name()
                )),
                None => Err(anyhow!(
                    "`{program} --noflush` failed: {stderr}{hint}; nothing was changed in the {} table",
                    family.name()
                )),
            }
        }
    }
}

/// `ip -6 addr add|del ::6/128 dev lo`: the address the agent's inbound
/// passthrough binds (IPv4 has 127.0.0.6 on `lo` already). `present` says
/// whether the address should be there afterwards.
pub fn passthrough_address(present: bool) -> anyhow::Result<()> {
    let address = Family::V6.passthrough_prefix().to_string();
    let verb = if present { "add" } else { "del" };
    match run("ip", &["-6", "addr", verb, &address, "dev", "lo"], None)? {
        Ok(_) => Ok(()),
        // Already there (add) or already gone (del): the state we want.
        Err(e) if present && (e.contains("File exists") || e.contains("already assigned")) => {
            Ok(())
        }
        Err(e)
            if !present
                && (e.contains("Cannot assign requested address") || e.contains("not found")) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!(
            "`ip -6 addr {verb} {address} dev lo` failed: {e}{}",
            privilege_hint(&e)
        )),
    }
}
