//! `tracemesh iptables` in network-namespace pods, with no agent yet: the
//! rules redirect an unchanged client's connections (`curl` to a service
//! VIP, another pod, its own pod) to a capture listener on the agent's
//! ports, which reads each connection's original destination the way the
//! agent does; the agent's own uid/gid, loopback, excluded ports and
//! prefixes and UDP pass untouched; `--cleanup` restores the rules exactly.
//!
//! Needs root (skips and says why otherwise; fails under `CI=true`).

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

#[path = "capture/agents.rs"]
mod agents;
mod common;
#[path = "capture/edges.rs"]
mod edges;
#[path = "capture/service_entries.rs"]
mod service_entries;
#[path = "capture/sni.rs"]
mod sni;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use common::agent::binary;
use common::pods::{Bed, Pod, PodExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracemesh_agent::capture::original_dst::original_dst;

/// The agent's uid and gid (Istio's 1337).
const PROXY: u32 = 1337;
/// An application's uid and gid.
const APP: u32 = 1000;

const REVIEWS_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
const REVIEWS_VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20));

/// One accepted connection, as the listener saw it.
#[derive(Debug)]
struct Seen {
    /// Where the client was going, when iptables redirected it.
    original: Option<SocketAddr>,
}

/// A listener in a pod that answers every HTTP request with who it is and
/// the connection's original destination (the capture listener the agent
/// will be), or as a plain application (`original` then shows none).
struct Listener {
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    fn start(pod: &Pod, addr: SocketAddr, role: &str) -> Listener {
        let listener = tokio::net::TcpListener::from_std(pod.listen(addr)).expect("tokio listener");
        let (tx, seen) = mpsc::unbounded_channel();
        let role = format!("{role}@{}", pod.name);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let original = original_dst(&stream).expect("SO_ORIGINAL_DST");
                let _ = tx.send(Seen { original });
                let role = role.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = match original {
                        Some(dst) => format!("{role} original-dst={dst}\n"),
                        None => format!("{role} original-dst=none\n"),
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Listener { seen, task }
    }

    /// The capture listener the outbound rules redirect to (IPv4 and IPv6 loopback).
    fn outbound(pod: &Pod) -> (Listener, Listener) {
        (
            Self::start(pod, "127.0.0.1:15001".parse().unwrap(), "outbound"),
            Self::start(pod, "[::1]:15001".parse().unwrap(), "outbound"),
        )
    }

    /// The capture listener the inbound rules redirect to: one dual-stack
    /// socket, which sees IPv4 connections as `::ffff:a.b.c.d`.
    fn inbound(pod: &Pod) -> Listener {
        Self::start(pod, "[::]:15006".parse().unwrap(), "inbound")
    }

    /// A plain application on `port`, IPv4 and IPv6.
    fn app(pod: &Pod, port: u16) -> (Listener, Listener) {
        (
            Self::start(pod, SocketAddr::new(IpAddr::V4(pod.ip), port), "app"),
            Self::start(pod, SocketAddr::new(IpAddr::V6(pod.ip6), port), "app"),
        )
    }

    fn nothing_seen(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

/// `tracemesh iptables args` inside `pod`, as root.
fn iptables(pod: &Pod, args: &[&str]) -> Output {
    pod.command(binary())
        .arg("iptables")
        .args(args)
        .output()
        .expect("tracemesh iptables")
}

fn install(pod: &Pod, args: &[&str]) {
    let out = iptables(pod, args);
    assert!(
        out.status.success(),
        "tracemesh iptables {args:?} in {}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl url` in `pod` as `uid`/`gid`: the body, or why it failed.
async fn curl(pod: &Pod, uid: u32, gid: u32, url: &str) -> Result<String, String> {
    let out = pod
        .tokio_command_as(uid, gid, "curl")
        .args(["-sS", "-g", "--noproxy", "*", "--max-time", "20", url])
        .output()
        .await
        .expect("curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

async fn get(pod: &Pod, uid: u32, gid: u32, url: &str) -> String {
    curl(pod, uid, gid, url)
        .await
        .unwrap_or_else(|e| panic!("curl {url} from {} as {uid}:{gid}: {e}", pod.name))
}

#[tokio::test]
async fn a_client_calling_a_service_vip_is_captured_with_its_original_destination() {
    let Some(mut bed) = Bed::new("vip capture") else {
        return;
    };
    let productpage = bed.pod("productpage");
    bed.service("reviews", REVIEWS_VIP);
    bed.service("reviews6", REVIEWS_VIP6);
    install(&productpage, &[]);
    let (mut v4, mut v6) = Listener::outbound(&productpage);

    let body = get(&productpage, APP, APP, "http://reviews:9080/reviews/0").await;
    assert_eq!(body, "outbound@productpage original-dst=10.96.0.20:9080");
    assert_eq!(
        v4.seen.recv().await.unwrap().original,
        Some("10.96.0.20:9080".parse().unwrap())
    );

    let body = get(&productpage, APP, APP, "http://reviews6:9080/reviews/0").await;
    assert_eq!(body, "outbound@productpage original-dst=[fd00:96::20]:9080");
    assert_eq!(
        v6.seen.recv().await.unwrap().original,
        Some("[fd00:96::20]:9080".parse().unwrap())
    );

    // The same listener reached directly (explicit mode) was not redirected.
    let body = get(&productpage, APP, APP, "http://127.0.0.1:15001/").await;
    assert_eq!(body, "outbound@productpage original-dst=none");
}

#[tokio::test]
async fn a_connection_from_another_pod_is_captured_inbound_with_its_original_destination() {
    let Some(mut bed) = Bed::new("inbound capture") else {
        return;
    };
    let productpage = bed.pod("productpage");
    let reviews = bed.pod("reviews");
    install(&reviews, &[]);
    let _inbound = Listener::inbound(&reviews);

    let url = format!("http://{}:9080/reviews/0", reviews.ip);
    let body = get(&productpage, APP, APP, &url).await;
    assert_eq!(
        body,
        format!("inbound@reviews original-dst={}:9080", reviews.ip)
    );
    let body = get(&productpage, APP, APP, "http://reviews:9080/").await;
    assert_eq!(
        body,
        format!("inbound@reviews original-dst={}:9080", reviews.ip),
        "by pod name"
    );
    let url = format!("http://[{}]:9080/", reviews.ip6);
    let body = get(&productpage, APP, APP, &url).await;
    assert_eq!(
        body,
        format!("inbound@reviews original-dst=[{}]:9080", reviews.ip6)
    );

    // The agent's own ports are never captured inbound.
    let (mut admin, _) = Listener::app(&reviews, 15000);
    let body = get(
        &productpage,
        APP,
        APP,
        &format!("http://{}:15000/", reviews.ip),
    )
    .await;
    assert_eq!(body, "app@reviews original-dst=none");
    assert!(admin.seen.recv().await.is_some());
}

#[tokio::test]
async fn the_agents_uid_and_gid_pass_and_its_calls_to_its_own_pod_go_inbound() {
    let Some(mut bed) = Bed::new("proxy uid") else {
        return;
    };
    let productpage = bed.pod("productpage");
    let details = bed.pod("details");
    install(&productpage, &[]);
    let (mut outbound, _) = Listener::outbound(&productpage);
    let mut inbound = Listener::inbound(&productpage);
    let (mut details_app, _) = Listener::app(&details, 9080);
    let (mut own_app, _) = Listener::app(&productpage, 9080);
    let details_url = format!("http://{}:9080/details/0", details.ip);

    // The agent (uid 1337, or gid 1337) reaches the other pod directly.
    let body = get(&productpage, PROXY, PROXY, &details_url).await;
    assert_eq!(body, "app@details original-dst=none");
    let body = get(&productpage, APP, PROXY, &details_url).await;
    assert_eq!(
        body, "app@details original-dst=none",
        "the proxy gid alone is enough"
    );
    assert!(outbound.nothing_seen());
    // The application is captured.
    let body = get(&productpage, APP, APP, &details_url).await;
    assert_eq!(
        body,
        format!("outbound@productpage original-dst={}:9080", details.ip)
    );
    assert_eq!(
        details_app.seen.recv().await.map(|s| s.original),
        Some(None)
    );

    // The application calling its own pod IP stays on `lo`, uncaptured...
    let own_url = format!("http://{}:9080/", productpage.ip);
    let body = get(&productpage, APP, APP, &own_url).await;
    assert_eq!(body, "app@productpage original-dst=none");
    assert!(own_app.seen.recv().await.is_some());
    // ...while the agent calling it (a VIP routed back to this pod) is
    // sent to the inbound listener, as Istio's rules do.
    let body = get(&productpage, PROXY, PROXY, &own_url).await;
    assert_eq!(
        body,
        format!("inbound@productpage original-dst={}:9080", productpage.ip)
    );
    assert!(inbound.seen.recv().await.is_some());
    // Loopback is never captured.
    let mut local = Listener::start(&productpage, "127.0.0.1:8080".parse().unwrap(), "local");
    let body = get(&productpage, APP, APP, "http://127.0.0.1:8080/").await;
    assert_eq!(body, "local@productpage original-dst=none");
    assert!(local.seen.recv().await.is_some());
}

#[tokio::test]
async fn excluded_ports_and_prefixes_and_udp_are_not_captured() {
    let Some(mut bed) = Bed::new("exclusions") else {
        return;
    };
    let client = bed.pod("client");
    let ratings = bed.pod("ratings");
    let mongo = bed.pod("mongo");
    let ratings_net = format!("{}/32", ratings.ip);
    install(
        &client,
        &[
            "--exclude-outbound-ports",
            "27017",
            "--exclude-outbound-cidrs",
            &ratings_net,
        ],
    );
    install(&mongo, &["--exclude-inbound-ports", "27017"]);
    let (mut outbound, _) = Listener::outbound(&client);
    let (_ratings_app, _) = Listener::app(&ratings, 9080);
    let _mongo_in = Listener::inbound(&mongo);
    let (_mongo_db, _) = Listener::app(&mongo, 27017);
    let (_mongo_http, _) = Listener::app(&mongo, 9080);

    // An excluded prefix and an excluded port go straight out...
    let body = get(&client, APP, APP, &format!("http://{}:9080/", ratings.ip)).await;
    assert_eq!(body, "app@ratings original-dst=none");
    // ...and an inbound-excluded port reaches the application directly.
    let body = get(&client, APP, APP, &format!("http://{}:27017/", mongo.ip)).await;
    assert_eq!(body, "app@mongo original-dst=none");
    assert!(outbound.nothing_seen());
    // Other destinations are captured.
    let body = get(&client, APP, APP, &format!("http://{}:9080/", mongo.ip)).await;
    assert_eq!(
        body,
        format!("outbound@client original-dst={}:9080", mongo.ip)
    );

    // UDP (DNS) is never redirected: the datagram reaches the other pod,
    // and nothing arrives on the capture port.
    let trap = client.udp("0.0.0.0:15001".parse().unwrap());
    trap.set_nonblocking(true).unwrap();
    let dns = mongo.udp(SocketAddr::new(IpAddr::V4(mongo.ip), 53));
    dns.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let target = SocketAddr::new(IpAddr::V4(mongo.ip), 53);
    client
        .enter(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(b"dns query", target).unwrap();
        })
        .unwrap();
    let received = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 64];
        dns.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
    })
    .await
    .unwrap()
    .expect("the datagram reaches the DNS port");
    assert_eq!(received, b"dns query");
    assert!(
        trap.recv_from(&mut [0u8; 64]).is_err(),
        "nothing redirected to 15001/udp"
    );
}

#[test]
fn cleanup_restores_the_rules_exactly_and_install_is_idempotent() {
    let Some(mut bed) = Bed::new("cleanup") else {
        return;
    };
    let pod = bed.pod("reviews");
    // Rules that are not ours, in the tables and chains ours use.
    for (program, rule) in [
        (
            "iptables",
            "-t nat -A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN",
        ),
        (
            "iptables",
            "-t nat -A PREROUTING -p tcp --dport 22 -j RETURN",
        ),
        ("iptables", "-t filter -A INPUT -p tcp --dport 9999 -j DROP"),
        ("iptables", "-t nat -N UNRELATED"),
        ("iptables", "-t nat -A UNRELATED -j RETURN"),
        (
            "ip6tables",
            "-t nat -A OUTPUT -d 2001:db8::1/128 -p tcp -j RETURN",
        ),
    ] {
        let out = pod.command(program).args(rule.split(' ')).output().unwrap();
        assert!(
            out.status.success(),
            "{rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = pod.netfilter_state();
    install(&pod, &[]);
    let installed = pod.netfilter_state();
    assert!(installed.contains("-A OUTPUT -p tcp -m comment --comment tracemesh -j ISTIO_OUTPUT"));
    assert!(
        installed.contains("inet6 ::6/128"),
        "the IPv6 passthrough source: {installed}"
    );
    // Every rule --dry-run prints is what was installed.
    let dry = iptables(&pod, &["--dry-run"]);
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    for rule in dry.lines().filter(|l| l.starts_with("-A ")) {
        // iptables-save spells `--dport` matches with their implicit `-m tcp`.
        let saved = rule.replace("-p tcp --dport", "-p tcp -m tcp --dport");
        assert!(
            installed.contains(&saved),
            "{rule} is not installed:\n{installed}"
        );
    }
    install(&pod, &[]);
    assert_eq!(
        pod.netfilter_state(),
        installed,
        "a second run changes nothing"
    );
    install(&pod, &["--cleanup"]);
    assert_eq!(
        pod.netfilter_state(),
        before,
        "cleanup restores the rules exactly"
    );
    install(&pod, &["--cleanup"]);
    assert_eq!(pod.netfilter_state(), before, "a second cleanup is a no-op");

    // A namespace with no rules at all ends with none of ours either.
    let fresh = bed.pod("fresh");
    install(&fresh, &[]);
    install(&fresh, &["--cleanup"]);
    let state = fresh.netfilter_state();
    assert!(
        !state.contains("ISTIO") && !state.contains("tracemesh") && !state.contains("::6/128"),
        "{state}"
    );
}

#[test]
fn errors_name_the_rule_the_privilege_or_the_binary_that_is_missing() {
    let Some(mut bed) = Bed::new("errors") else {
        return;
    };
    let pod = bed.pod("reviews");
    let stderr = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let before = pod.netfilter_state();

    let out = pod
        .command_as(65534, 65534, binary())
        .arg("iptables")
        .output()
        .unwrap();
    let err = stderr(out);
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");

    let out = pod
        .command("env")
        .args(["PATH=/nonexistent", binary(), "iptables"])
        .output()
        .unwrap();
    let err = stderr(out);
    assert!(
        err.contains("`iptables-save` was not found on PATH"),
        "{err}"
    );

    let err = stderr(iptables(&pod, &["--proxy-uid", "4294967295"]));
    assert!(
        err.contains("rule `-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 4294967295 -j ISTIO_IN_REDIRECT`"),
        "{err}"
    );
    assert!(err.contains("Bad value for \"--uid-owner\""), "{err}");
    assert_eq!(
        pod.netfilter_state(),
        before,
        "a failed run leaves nothing behind"
    );

    // Istio's own rules are not taken over.
    for rule in [
        "-t nat -N ISTIO_OUTPUT",
        "-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
    ] {
        assert!(
            pod.command("iptables")
                .args(rule.split(' '))
                .status()
                .unwrap()
                .success()
        );
    }
    let err = stderr(iptables(&pod, &[]));
    assert!(
        err.contains("`-A OUTPUT -p tcp -j ISTIO_OUTPUT`") && err.contains("istio-init"),
        "{err}"
    );
}

#[test]
fn namespaces_a_crashed_run_left_behind_are_swept() {
    let Some(_bed) = Bed::new("sweep") else {
        return;
    };
    // A run whose process is gone (pids never reach this value).
    let stale = format!("{}4999999-0-hub", common::pods::PREFIX);
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir_all(format!("/etc/netns/{stale}")).unwrap();
    common::pods::sweep_stale();
    assert!(
        !std::path::Path::new("/var/run/netns")
            .join(&stale)
            .try_exists()
            .unwrap()
    );
    assert!(
        !std::path::Path::new("/etc/netns")
            .join(&stale)
            .try_exists()
            .unwrap()
    );
}

#[test]
fn dry_run_needs_no_privilege() {
    let out = std::process::Command::new(binary())
        .args(["iptables", "--dry-run", "--ipv6", "on", "-d", "15090,15021"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("# IPv4: iptables-restore --noflush\n*nat\n"),
        "{text}"
    );
    assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN"));
    assert!(text.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
    assert!(text.contains("# IPv6: ip6tables-restore --noflush"));
    assert!(text.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
}
