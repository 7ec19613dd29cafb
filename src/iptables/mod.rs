//! `tracemesh iptables`: redirects a pod's TCP to its agent, run as root
//! inside the pod's network namespace as Istio's `istio-iptables` is (an
//! init container on Kubernetes). Outbound TCP goes to the agent's
//! outbound capture port, inbound TCP to its inbound capture port; the
//! agent's own traffic (by uid and gid), loopback and the agent's ports
//! are left alone; UDP is never touched.
//!
//! [`plan`] says which rules, [`restore`] turns them into one
//! `iptables-restore` transaction against the current table, [`apply`]
//! runs the binaries.

mod apply;
mod plan;
mod restore;

use clap::{Args, ValueEnum};
use ipnet::IpNet;

use plan::{Family, Options, Selection};

/// A comma-separated list given as one flag value (Istio's spelling).
#[derive(Debug, Clone, Default)]
pub struct List<T>(Vec<T>);

fn ports(text: &str) -> Result<List<u16>, String> {
    plan::parse_ports(text).map(List)
}

fn cidrs(text: &str) -> Result<List<IpNet>, String> {
    plan::parse_cidrs(text).map(List)
}

/// Flags of `tracemesh iptables`; the short forms are `istio-iptables`'s.
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Port outbound TCP is redirected to: the agent's outbound listener.
    #[arg(short = 'p', long, default_value_t = 15001)]
    outbound_capture_port: u16,
    /// Port inbound TCP is redirected to: the agent's inbound listener.
    #[arg(short = 'z', long, default_value_t = 15006)]
    inbound_capture_port: u16,
    /// The agent's admin port, never captured inbound (like the two capture ports).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The uid the agent runs as; its connections are not captured.
    #[arg(short = 'u', long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The gid the agent runs as; its connections are not captured
    /// (default: the same number as --proxy-uid).
    #[arg(short = 'g', long)]
    proxy_gid: Option<u32>,
    /// Inbound ports to capture, comma-separated; `*` all; empty none.
    #[arg(short = 'b', long, default_value = "*", value_parser = plan::parse_port_selection)]
    inbound_ports: Selection<u16>,
    /// Inbound ports not captured when --inbound-ports is `*` (e.g. a
    /// health port probed from outside the mesh).
    #[arg(short = 'd', long, default_value = "", value_parser = ports)]
    exclude_inbound_ports: List<u16>,
    /// Outbound destination ports not captured.
    #[arg(short = 'o', long, default_value = "", value_parser = ports)]
    exclude_outbound_ports: List<u16>,
    /// Outbound destination ports captured whatever the address (useful
    /// with a narrowed --include-outbound-cidrs).
    #[arg(short = 'q', long, default_value = "", value_parser = ports)]
    include_outbound_ports: List<u16>,
    /// Outbound destination prefixes captured, comma-separated, IPv4 and
    /// IPv6 mixed; `*` all; empty none.
    #[arg(short = 'i', long, default_value = "*", value_parser = plan::parse_cidr_selection)]
    include_outbound_cidrs: Selection<IpNet>,
    /// Outbound destination prefixes not captured.
    #[arg(short = 'x', long, default_value = "", value_parser = cidrs)]
    exclude_outbound_cidrs: List<IpNet>,
    /// Install ip6tables rules too: `auto` when the namespace has IPv6.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
    /// Remove exactly what an earlier run installed, and nothing else.
    #[arg(long)]
    cleanup: bool,
    /// Print the `iptables-restore` input instead of applying it (needs no
    /// privileges).
    #[arg(short = 'n', long)]
    dry_run: bool,
}

/// Whether to install IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ipv6 {
    /// When the kernel has IPv6 in this namespace (`/proc/net/if_inet6`).
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl IptablesArgs {
    fn options(&self) -> Options {
        Options {
            outbound_capture_port: self.outbound_capture_port,
            inbound_capture_port: self.inbound_capture_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid.unwrap_or(self.proxy_uid),
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.0.clone(),
            include_outbound_ports: self.include_outbound_ports.0.clone(),
            include_outbound_cidrs: self.include_outbound_cidrs.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.0.clone(),
        }
    }

    fn families(&self) -> Vec<Family> {
        let v6 = match self.ipv6 {
            Ipv6::On => true,
            Ipv6::Off => false,
            Ipv6::Auto => std::fs::metadata("/proc/net/if_inet6").is_ok(),
        };
        if v6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

/// Runs the command: installs, removes, or prints the rules.
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let options = args.options();
    let families = args.families();
    if args.dry_run {
        print!("{}", dry_run(&options, &families, args.cleanup));
        return Ok(());
    }
    if args.cleanup {
        remove(&families)?;
        println!("tracemesh iptables: removed");
        return Ok(());
    }
    for (i, family) in families.iter().enumerate() {
        if let Err(error) = install(&options, *family) {
            // All or nothing: what this run installed so far goes again.
            if let Err(undo) = remove(&families[..=i]) {
                return Err(error.context(format!("and undoing the rest failed: {undo:#}")));
            }
            return Err(error);
        }
    }
    let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
    println!(
        "tracemesh iptables: {} TCP captured (outbound → :{}, inbound → :{}); uid {} and gid {} not captured",
        names.join(" and "),
        options.outbound_capture_port,
        options.inbound_capture_port,
        options.proxy_uid,
        options.proxy_gid,
    );
    Ok(())
}

fn install(options: &Options, family: Family) -> anyhow::Result<()> {
    let plan = plan::plan(options, family);
    let state = apply::save(family)?;
    let payload = restore::install(&plan, &state).map_err(|e| anyhow::anyhow!("{e}"))?;
    apply::restore(family, &payload)?;
    if family == Family::V6 {
        apply::passthrough_address(true)?;
    }
    Ok(())
}

fn remove(families: &[Family]) -> anyhow::Result<()> {
    for family in families {
        let state = apply::save(*family)?;
        if let Some(payload) = restore::cleanup(&state).map_err(|e| anyhow::anyhow!("{e}"))? {
            apply::restore(*family, &payload)?;
        }
        if *family == Family::V6 {
            apply::passthrough_address(false)?;
        }
    }
    Ok(())
}

/// What would be run, as `iptables-restore` input per family (a cleanup
/// as it would run after an install with these options).
fn dry_run(options: &Options, families: &[Family], cleanup: bool) -> String {
    let mut out = String::new();
    for family in families {
        let plan = plan::plan(options, *family);
        let (tool, ip) = match family {
            Family::V4 => ("iptables-restore --noflush", None),
            Family::V6 => (
                "ip6tables-restore --noflush",
                Some(format!(
                    "ip -6 addr {} {} dev lo",
                    if cleanup { "del" } else { "add" },
                    family.passthrough_prefix()
                )),
            ),
        };
        let payload = if cleanup {
            restore::cleanup(&restore::TableState::after(&plan))
                .ok()
                .flatten()
        } else {
            restore::install(&plan, &restore::TableState::default()).ok()
        };
        out.push_str(&format!("# {}: {tool}\n", family.name()));
        if let Some(payload) = payload {
            out.push_str(&payload.to_string());
        }
        if let Some(ip) = ip {
            out.push_str(&format!("# {}: {ip}\n", family.name()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IptablesArgs,
    }

    fn args(list: &[&str]) -> IptablesArgs {
        Cli::try_parse_from(std::iter::once("iptables").chain(list.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
            .args
    }

    #[test]
    fn istios_short_flags_and_defaults() {
        let a = args(&[
            "-p",
            "16001",
            "-z",
            "16006",
            "-u",
            "2000",
            "-d",
            "15090,15021",
            "-x",
            "",
        ]);
        let o = a.options();
        assert_eq!(
            (o.outbound_capture_port, o.inbound_capture_port),
            (16001, 16006)
        );
        assert_eq!((o.proxy_uid, o.proxy_gid), (2000, 2000), "gid follows uid");
        assert_eq!(o.exclude_inbound_ports, [15090, 15021]);
        assert!(o.exclude_outbound_cidrs.is_empty());
        assert_eq!(o.inbound_ports, Selection::All);
        assert_eq!(o.include_outbound_cidrs, Selection::All);
        assert!(
            Cli::try_parse_from(["iptables", "--exclude-outbound-cidrs", "10.0.0.0/40"]).is_err()
        );
    }

    #[test]
    fn dry_run_prints_both_families_and_the_cleanup_mirrors_it() {
        let a = args(&["--ipv6", "on"]);
        let install = dry_run(&a.options(), &a.families(), false);
        assert!(
            install.starts_with("# IPv4: iptables-restore --noflush\n*nat\n"),
            "{install}"
        );
        assert!(install.contains("# IPv6: ip6tables-restore --noflush\n*nat\n"));
        assert!(install.contains("# IPv6: ip -6 addr add ::6/128 dev lo\n"));
        let cleanup = dry_run(&a.options(), &a.families(), true);
        assert!(
            cleanup.contains("-D OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT")
        );
        assert!(cleanup.contains("-X ISTIO_REDIRECT"));
        assert!(cleanup.contains("ip -6 addr del ::6/128 dev lo"));
        assert_eq!(args(&["--ipv6", "off"]).families(), [Family::V4]);
    }
}
