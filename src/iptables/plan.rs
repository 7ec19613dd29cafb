//! The rules `tracemesh iptables` installs, as a pure function of its
//! options: Istio's `istio-iptables` chains and rule order (REDIRECT mode),
//! one plan per address family.
//!
//! ```text
//! nat PREROUTING ─tcp─▶ ISTIO_INBOUND ─▶ ISTIO_IN_REDIRECT (REDIRECT → inbound capture port)
//! nat OUTPUT     ─tcp─▶ ISTIO_OUTPUT  ─▶ ISTIO_REDIRECT    (REDIRECT → outbound capture port)
//!                                     └▶ ISTIO_IN_REDIRECT (the agent calling its own pod)
//! ```
//!
//! The two jumps from the built-in chains carry the comment
//! [`MARK`], so a cleanup removes exactly the jumps this tool added.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use tracemesh_agent::capture;

/// The comment on the jumps from built-in chains: how a later run knows
/// which rules it installed.
pub const MARK: &str = "tracemesh";

/// The chains this tool owns (Istio's names, so operators and Istio's
/// troubleshooting guides read them as they know them).
pub const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
    "ISTIO_REDIRECT",
];

/// An address family, with the addresses its rules name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// The loopback host prefix (`127.0.0.1/32`, `::1/128`), as Istio's
    /// `HOST_IPV4_LOOPBACK_CIDR` default.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source address the agent binds when it forwards an inbound
    /// connection to the application's pod IP, so that connection is not
    /// captured again (Istio's inbound passthrough address).
    pub fn passthrough_source(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(capture::INBOUND_PASSTHROUGH_V4),
            Family::V6 => IpAddr::V6(capture::INBOUND_PASSTHROUGH_V6),
        }
    }

    /// [`Family::passthrough_source`] as a host prefix.
    pub fn passthrough_prefix(self) -> IpNet {
        IpNet::from(self.passthrough_source())
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// A set of ports or prefixes where `*` means every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`.
    All,
    /// The listed ones; empty selects nothing.
    Only(Vec<T>),
}

impl<T> Selection<T> {
    fn is_empty(&self) -> bool {
        matches!(self, Selection::Only(list) if list.is_empty())
    }
}

/// What to capture: the flags of `tracemesh iptables`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where outbound TCP is redirected (the agent's outbound listener).
    pub outbound_capture_port: u16,
    /// Where inbound TCP is redirected (the agent's inbound listener).
    pub inbound_capture_port: u16,
    /// The agent's admin port: never captured inbound, so probes and
    /// Prometheus reach it directly.
    pub admin_port: u16,
    /// The uid the agent runs as: its own connections are never captured.
    pub proxy_uid: u32,
    /// The gid the agent runs as: likewise.
    pub proxy_gid: u32,
    /// Inbound destination ports captured (Istio's `-b`; default all).
    pub inbound_ports: Selection<u16>,
    /// Inbound ports left alone when all are captured (Istio's `-d`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (Istio's `-o`).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination ports captured whatever their address (Istio's `-q`).
    pub include_outbound_ports: Vec<u16>,
    /// Outbound destination prefixes captured (Istio's `-i`; default all).
    pub include_outbound_cidrs: Selection<IpNet>,
    /// Outbound destination prefixes left alone (Istio's `-x`).
    pub exclude_outbound_cidrs: Vec<IpNet>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            outbound_capture_port: 15001,
            inbound_capture_port: 15006,
            admin_port: 15000,
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_ports: Selection::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_outbound_ports: Vec::new(),
            include_outbound_cidrs: Selection::All,
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// One rule: `-A <chain> <spec>` in the `nat` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: &'static str,
    /// Matches and target, as `iptables` arguments.
    pub spec: Vec<String>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec.join(" "))
    }
}

/// The rules of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    /// Which family.
    pub family: Family,
    /// Rules in this tool's own chains, in order.
    pub rules: Vec<Rule>,
    /// Jumps from the built-in chains into them (marked with [`MARK`]).
    pub jumps: Vec<Rule>,
}

fn rule(chain: &'static str, spec: &[&str]) -> Rule {
    Rule {
        chain,
        spec: spec.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The plan for `family`: Istio's rule order.
pub fn plan(options: &Options, family: Family) -> FamilyPlan {
    let mut rules = Vec::new();
    let outbound_port = options.outbound_capture_port.to_string();
    let inbound_port = options.inbound_capture_port.to_string();
    rules.push(rule(
        "ISTIO_REDIRECT",
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &outbound_port],
    ));
    rules.push(rule(
        "ISTIO_IN_REDIRECT",
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &inbound_port],
    ));
    let mut jumps = Vec::new();
    if !options.inbound_ports.is_empty() {
        inbound(options, &mut rules);
        jumps.push(rule(
            "PREROUTING",
            &[
                "-p",
                "tcp",
                "-m",
                "comment",
                "--comment",
                MARK,
                "-j",
                "ISTIO_INBOUND",
            ],
        ));
    }
    outbound(options, family, &mut rules);
    jumps.push(rule(
        "OUTPUT",
        &[
            "-p",
            "tcp",
            "-m",
            "comment",
            "--comment",
            MARK,
            "-j",
            "ISTIO_OUTPUT",
        ],
    ));
    FamilyPlan {
        family,
        rules,
        jumps,
    }
}

/// `ISTIO_INBOUND`: the agent's own ports pass, then the selected ports
/// (or all but the excluded ones) go to the inbound capture port.
fn inbound(options: &Options, rules: &mut Vec<Rule>) {
    let mut own = vec![
        options.inbound_capture_port,
        options.outbound_capture_port,
        options.admin_port,
    ];
    own.dedup();
    for port in own {
        rules.push(rule(
            "ISTIO_INBOUND",
            &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
        ));
    }
    match &options.inbound_ports {
        Selection::All => {
            for port in &options.exclude_inbound_ports {
                rules.push(rule(
                    "ISTIO_INBOUND",
                    &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
                ));
            }
            rules.push(rule(
                "ISTIO_INBOUND",
                &["-p", "tcp", "-j", "ISTIO_IN_REDIRECT"],
            ));
        }
        Selection::Only(ports) => {
            for port in ports {
                rules.push(rule(
                    "ISTIO_INBOUND",
                    &[
                        "-p",
                        "tcp",
                        "--dport",
                        &port.to_string(),
                        "-j",
                        "ISTIO_IN_REDIRECT",
                    ],
                ));
            }
        }
    }
}

/// `ISTIO_OUTPUT`, in Istio's order: excluded ports; the agent's inbound
/// passthrough source; for the proxy uid and then gid, (1) the agent
/// calling its own pod IP goes to the inbound capture port, (2) the
/// application calling its own pod IP over `lo` is left alone, (3) every
/// other connection of the agent is left alone; loopback destinations;
/// excluded prefixes; included ports; included prefixes (or everything).
fn outbound(options: &Options, family: Family, rules: &mut Vec<Rule>) {
    const CHAIN: &str = "ISTIO_OUTPUT";
    for port in &options.exclude_outbound_ports {
        rules.push(rule(
            CHAIN,
            &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
        ));
    }
    let passthrough = family.passthrough_prefix().to_string();
    rules.push(rule(
        CHAIN,
        &["-s", &passthrough, "-o", "lo", "-j", "RETURN"],
    ));
    // Traffic to loopback prefixes the user explicitly includes is captured
    // even from the application, so the `lo` shortcut is skipped then (as Istio).
    let includes_loopback = matches!(&options.include_outbound_cidrs,
        Selection::Only(nets) if nets.iter().any(|n| family.holds(n) && n.network().is_loopback()));
    let owners = [
        ("--uid-owner", options.proxy_uid.to_string()),
        ("--gid-owner", options.proxy_gid.to_string()),
    ];
    for (owner, id) in &owners {
        rules.push(rule(
            CHAIN,
            &[
                "!",
                "-d",
                family.loopback(),
                "-o",
                "lo",
                "-p",
                "tcp",
                "-m",
                "owner",
                owner,
                id,
                "-j",
                "ISTIO_IN_REDIRECT",
            ],
        ));
        if !includes_loopback {
            rules.push(rule(
                CHAIN,
                &["-o", "lo", "-m", "owner", "!", owner, id, "-j", "RETURN"],
            ));
        }
        rules.push(rule(CHAIN, &["-m", "owner", owner, id, "-j", "RETURN"]));
    }
    rules.push(rule(CHAIN, &["-d", family.loopback(), "-j", "RETURN"]));
    for net in options
        .exclude_outbound_cidrs
        .iter()
        .filter(|n| family.holds(n))
    {
        rules.push(rule(CHAIN, &["-d", &net.to_string(), "-j", "RETURN"]));
    }
    for port in &options.include_outbound_ports {
        rules.push(rule(
            CHAIN,
            &[
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "ISTIO_REDIRECT",
            ],
        ));
    }
    match &options.include_outbound_cidrs {
        Selection::All => rules.push(rule(CHAIN, &["-j", "ISTIO_REDIRECT"])),
        Selection::Only(nets) => {
            for net in nets.iter().filter(|n| family.holds(n)) {
                rules.push(rule(
                    CHAIN,
                    &["-d", &net.to_string(), "-j", "ISTIO_REDIRECT"],
                ));
            }
        }
    }
}

/// Parses a comma-separated port list (`15090,15021`); empty is none.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => return Err(format!("{item:?} is not a port (1-65535)")),
        }
    }
    Ok(ports)
}

/// Parses a port list where `*` means every port.
pub fn parse_port_selection(text: &str) -> Result<Selection<u16>, String> {
    if text.trim() == "*" {
        Ok(Selection::All)
    } else {
        parse_ports(text).map(Selection::Only)
    }
}

/// Parses a comma-separated prefix list (`10.96.0.0/12,fd00::/8`); a bare
/// address is a host prefix; empty is none.
pub fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{item:?} is not an IP prefix (a.b.c.d/n or x::/n)"))?;
        nets.push(net.trunc());
    }
    Ok(nets)
}

/// Parses a prefix list where `*` means every destination.
pub fn parse_cidr_selection(text: &str) -> Result<Selection<IpNet>, String> {
    if text.trim() == "*" {
        Ok(Selection::All)
    } else {
        parse_cidrs(text).map(Selection::Only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(plan: &FamilyPlan) -> Vec<String> {
        plan.rules
            .iter()
            .chain(&plan.jumps)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_are_istios_sidecar_rules() {
        let plan = plan(&Options::default(), Family::V4);
        assert_eq!(
            lines(&plan),
            [
                "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A ISTIO_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15001 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                "-A PREROUTING -p tcp -m comment --comment tracemesh -j ISTIO_INBOUND",
                "-A OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT",
            ]
        );
    }

    #[test]
    fn ipv6_names_its_own_loopback_and_passthrough_source() {
        let text = lines(&plan(&Options::default(), Family::V6)).join("\n");
        assert!(text.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
        assert!(text.contains("! -d ::1/128 -o lo -p tcp -m owner --uid-owner 1337"));
        assert!(!text.contains("127.0.0"), "{text}");
    }

    #[test]
    fn exclusions_come_before_captures_in_istios_order() {
        let options = Options {
            proxy_uid: 3,
            proxy_gid: 4,
            exclude_inbound_ports: vec![22, 9090],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: parse_cidrs("10.0.0.0/8,fd00::/8,192.168.1.7").unwrap(),
            include_outbound_ports: vec![443],
            ..Options::default()
        };
        let got = lines(&plan(&options, Family::V4));
        let at = |l: &str| {
            got.iter()
                .position(|g| g == l)
                .unwrap_or_else(|| panic!("{l} missing from {got:#?}"))
        };
        assert!(
            at("-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN")
                < at("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        );
        assert!(at("-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN") > 0);
        let first = at("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN");
        assert!(first < at("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"));
        assert!(
            at("-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN")
                < at("-A ISTIO_OUTPUT -m owner --gid-owner 4 -j RETURN")
        );
        let loopback = at("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN");
        let excluded = at("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN");
        let host = at("-A ISTIO_OUTPUT -d 192.168.1.7/32 -j RETURN");
        let port = at("-A ISTIO_OUTPUT -p tcp --dport 443 -j ISTIO_REDIRECT");
        let all = at("-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
        assert!(loopback < excluded && excluded < host && host < port && port < all);
        assert!(
            !got.iter().any(|l| l.contains("fd00::")),
            "IPv6 prefixes stay out of iptables"
        );
        let v6 = lines(&plan(&options, Family::V6));
        assert!(v6.contains(&"-A ISTIO_OUTPUT -d fd00::/8 -j RETURN".to_owned()));
        assert!(!v6.iter().any(|l| l.contains("10.0.0.0")));
    }

    #[test]
    fn listed_inbound_ports_only_and_none_disables_inbound() {
        let options = Options {
            inbound_ports: parse_port_selection("9080, 9443").unwrap(),
            exclude_inbound_ports: vec![9080],
            ..Options::default()
        };
        let got = lines(&plan(&options, Family::V4));
        assert!(got.contains(&"-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT".into()));
        assert!(got.contains(&"-A ISTIO_INBOUND -p tcp --dport 9443 -j ISTIO_IN_REDIRECT".into()));
        assert!(!got.contains(&"-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into()));
        assert!(
            !got.contains(&"-A ISTIO_INBOUND -p tcp --dport 9080 -j RETURN".into()),
            "exclusions apply to `*` only, as Istio's -d"
        );
        let none = Options {
            inbound_ports: parse_port_selection("").unwrap(),
            ..Options::default()
        };
        let got = plan(&none, Family::V4);
        assert!(got.rules.iter().all(|r| r.chain != "ISTIO_INBOUND"));
        assert_eq!(got.jumps.len(), 1, "no PREROUTING jump: {:?}", got.jumps);
    }

    #[test]
    fn listed_outbound_prefixes_only_and_loopback_inclusion_keeps_lo_traffic() {
        let options = Options {
            include_outbound_cidrs: parse_cidr_selection("10.96.0.0/12,127.0.0.0/8").unwrap(),
            ..Options::default()
        };
        let got = lines(&plan(&options, Family::V4));
        assert!(got.contains(&"-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT".into()));
        assert!(!got.contains(&"-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into()));
        assert!(
            !got.iter().any(|l| l.contains("-o lo -m owner !")),
            "loopback explicitly included: the application's lo traffic is captured"
        );
        let v6 = lines(&plan(&options, Family::V6));
        assert!(
            v6.iter()
                .any(|l| l.contains("-o lo -m owner ! --uid-owner"))
        );
        assert!(
            !v6.iter()
                .any(|l| l.ends_with("-j ISTIO_REDIRECT") && l.starts_with("-A ISTIO_OUTPUT -d"))
        );
    }

    #[test]
    fn lists_parse_and_refuse_what_is_not_a_port_or_prefix() {
        assert_eq!(parse_ports(" 80, 443 ,").unwrap(), [80, 443]);
        assert!(parse_ports("80,http").unwrap_err().contains("\"http\""));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert_eq!(parse_port_selection("*").unwrap(), Selection::All);
        assert_eq!(
            parse_cidrs("10.1.2.3/8").unwrap()[0].to_string(),
            "10.0.0.0/8",
            "host bits cleared, as iptables prints it"
        );
        assert_eq!(parse_cidrs("::1").unwrap()[0].to_string(), "::1/128");
        assert!(
            parse_cidrs("10.0.0.0/33")
                .unwrap_err()
                .contains("10.0.0.0/33")
        );
        assert_eq!(parse_cidr_selection(" * ").unwrap(), Selection::All);
    }
}
