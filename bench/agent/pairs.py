"""Writes the configs of the two-proxy paths of the agent benchmark: a client
sidecar (outbound listener) in front of a server sidecar (inbound listener)
in front of the upstream, as a request crosses a mesh. Each path exists twice,
once as two tracemesh agents and once as two Envoys doing the same work:

- pair:          plaintext between the sidecars;
- pair_policy:   plaintext, with the policy of a production route, none of it
                 triggering: retries and a timeout on the route, connection
                 pool limits and outlier detection on the cluster (client),
                 a local rate limit that never empties (server);
- pair_mtls:     mutual TLS between the sidecars with SPIFFE certificates of
                 the same CA, kept-alive connections;
- pair_mtls_new: the same with one request per upstream connection, so every
                 request costs a full mTLS handshake: its throughput is the
                 pair's handshakes per second.

Every sidecar traces every request (sampling 1.0, spans batched 512 per export
or every second) to the run's OTLP sink.

    python3 pairs.py RUN_DIR ports   # prints `path kind role listen admin` lines
    python3 pairs.py RUN_DIR write   # writes RUN_DIR/{agent,envoy}-PATH-{client,server}.yaml

Certificates are expected in RUN_DIR/certs/{client,server}/ (run.sh makes them
with `tracemesh ca`).
"""

import sys
import textwrap

UPSTREAM_PORT = 18080
SINK_PORT = 18317
HOST = "upstream.bench.local"
TRUST_DOMAIN = "cluster.local"
VARIANTS = {
    "pair": {"tls": False, "policy": False, "new_connections": False},
    "pair_policy": {"tls": False, "policy": True, "new_connections": False},
    "pair_mtls": {"tls": True, "policy": False, "new_connections": False},
    "pair_mtls_new": {"tls": True, "policy": False, "new_connections": True},
}
KINDS = {"agent": 18400, "envoy": 18500}


def spiffe(account):
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{account}"


def ports(kind, variant):
    """Fixed loopback ports: client listener and admin, server listener and admin,
    and the agents' unused second listeners."""
    base = KINDS[kind] + 10 * list(VARIANTS).index(variant)
    return {
        "client": base,
        "client_admin": base + 1,
        "client_spare": base + 2,
        "server": base + 3,
        "server_admin": base + 4,
        "server_spare": base + 5,
    }


# --- tracemesh agents ---------------------------------------------------------


def agent_identity(run, role, account=None):
    """The `serviceAccount` (default `bench-ROLE`) and workload certificate
    lines of a bootstrap's spec (an Agent's or an IngressGateway's)."""
    certs = f"{run}/certs/{role}"
    return (
        f"  serviceAccount: {account or f'bench-{role}'}\n"
        f"  identity:\n"
        f"    files: {{certChain: {certs}/cert-chain.pem, privateKey: {certs}/key.pem, "
        f"rootCert: {certs}/root-cert.pem}}\n"
    )


def agent_bootstrap(run, variant, role, listen_in, app, listen_out, admin, tls):
    return f"""apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: bench-{role}-{variant.replace('_', '-')}, namespace: default}}
spec:
  service: {'bench-client' if role == 'client' else HOST}
  labels: {{app: bench-{role}, version: v1}}
  concurrency: 1
  inbound: {{listen: "127.0.0.1:{listen_in}", app: "127.0.0.1:{app}"}}
  outbound: {{listen: "127.0.0.1:{listen_out}"}}
  admin: {{listen: "127.0.0.1:{admin}"}}
{agent_identity(run, role) if tls else ''}  telemetry:
    otlp: {{endpoint: "http://127.0.0.1:{SINK_PORT}", protocol: grpc}}
    sampling: 1.0
"""


def agent_client(run, variant, opts):
    p = ports("agent", variant)
    route_policy = (
        "    timeout: 10s\n"
        '    retries: {attempts: 2, perTryTimeout: 5s, retryOn: "5xx,connect-failure,reset"}\n'
        if opts["policy"]
        else ""
    )
    traffic = []
    if opts["policy"]:
        traffic.append(
            "    connectionPool:\n"
            "      tcp: {maxConnections: 1024, connectTimeout: 1s}\n"
            "      http: {http1MaxPendingRequests: 1024, http2MaxRequests: 1024, maxRetries: 64}\n"
            "    outlierDetection:\n"
            "      consecutive5xxErrors: 5\n"
            "      interval: 10s\n"
            "      baseEjectionTime: 30s\n"
            "      maxEjectionPercent: 100\n"
        )
    if opts["new_connections"]:
        traffic.append("    connectionPool:\n      http: {maxRequestsPerConnection: 1}\n")
    if opts["tls"]:
        traffic.append(f"    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{spiffe('bench-server')}]}}\n")
    rule = upstream_rule("".join(traffic)) if traffic else ""
    return (
        agent_bootstrap(run, variant, "client", p["client_spare"], UPSTREAM_PORT, p["client"], p["client_admin"], opts["tls"])
        + upstream_entry(p["server"], opts["tls"])
        + upstream_route(route_policy)
        + rule
    )


def upstream_entry(server_port, tls):
    """The upstream's ServiceEntry: one endpoint, the server sidecar at
    `server_port` (labelled as a sidecar that takes mTLS when `tls`)."""
    tls_label = "\n    labels: {security.istio.io/tlsMode: istio}" if tls else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {server_port}}}{tls_label}
"""


def upstream_route(route_policy="", gateways=None):
    """The upstream's VirtualService: its one route, with `route_policy`
    lines, bound to `gateways` when given (else to the mesh)."""
    bound = f"  gateways: [{', '.join(gateways)}]\n" if gateways else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [{HOST}]
{bound}  http:
  - name: default
{route_policy}    route:
    - destination: {{host: {HOST}}}
"""


def upstream_rule(traffic_policy):
    """The upstream's DestinationRule with `traffic_policy` lines."""
    return f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upstream, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
{traffic_policy}"""


def upstream_mtls_rule():
    """ISTIO_MUTUAL to the server sidecar, whose SPIFFE ID it checks."""
    return upstream_rule(f"    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{spiffe('bench-server')}]}}\n")


STRICT_MTLS = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
"""


def agent_server(run, variant, opts, p=None):
    """The server sidecar; on this benchmark's ports unless `p` (a
    [`ports`] dict) gives others."""
    p = p or ports("agent", variant)
    doc = agent_bootstrap(run, variant, "server", p["server"], UPSTREAM_PORT, p["server_spare"], p["server_admin"], opts["tls"])
    if opts["tls"]:
        doc += STRICT_MTLS
    if opts["policy"]:
        doc += """---
apiVersion: tracemesh.io/v1
kind: RateLimitPolicy
metadata: {name: never-empty, namespace: default}
spec:
  selector: {matchLabels: {app: bench-server}}
  rules:
  - name: global
    tokenBucket: {maxTokens: 1000000000, tokensPerFill: 1000000000, fillInterval: 1s}
"""
    return doc


# --- Envoy ---------------------------------------------------------------------


def envoy_common(admin):
    return f"""layered_runtime:
  layers:
  - name: span-flushing
    static_layer:
      tracing.opentelemetry.min_flush_spans: 512
      tracing.opentelemetry.flush_interval_ms: 1000
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""


def envoy_config(admin, listener, port, direction, hcm, clusters, tls=""):
    """A whole Envoy bootstrap: one listener `listener` on 127.0.0.1:`port`
    with one filter chain (the `hcm` filter, then its `tls` transport
    socket), the `clusters` and the OTLP sink's cluster."""
    return (
        envoy_common(admin)
        + f"""static_resources:
  listeners:
  - name: {listener}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
"""
        + hcm
        + tls
        + "  clusters:\n"
        + clusters
        + OTLP_CLUSTER
    )


def envoy_hcm(direction, service, routes, filters="", use_remote_address=False):
    """The HTTP connection manager filter, tracing every request to the
    OTLP sink as `service`; `use_remote_address` as an edge proxy sets it."""
    remote = "          use_remote_address: true\n" if use_remote_address else ""
    return f"""      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {direction.lower()}
          codec_type: AUTO
          generate_request_id: true
{remote}          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {{envoy_grpc: {{cluster_name: otlp}}, timeout: 10s}}
                service_name: {service}
          route_config:
            name: {direction.lower()}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def envoy_tls(context, run, role, peer_san, require_client_certificate=False):
    """A TLS transport socket with the role's certificate, verifying the peer's
    SPIFFE URI SAN against the same root; unindented."""
    certs = f"{run}/certs/{role}"
    require = "    require_client_certificate: true\n" if require_client_certificate else ""
    return f"""transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context}
{require}    common_tls_context:
      tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
      tls_certificates:
      - certificate_chain: {{filename: {certs}/cert-chain.pem}}
        private_key: {{filename: {certs}/key.pem}}
      validation_context:
        trusted_ca: {{filename: {certs}/root-cert.pem}}
        match_typed_subject_alt_names:
        - san_type: URI
          matcher: {peer_san}
"""


def envoy_cluster(name, port, extra=""):
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 10s
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


OTLP_CLUSTER = envoy_cluster(
    "otlp",
    SINK_PORT,
    """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
""",
)


def envoy_client(run, variant, opts):
    p = ports("envoy", variant)
    route = "                route:\n                  cluster: upstream\n"
    if opts["policy"]:
        # As Istio renders a VirtualService's retries and timeout.
        route += (
            "                  timeout: 10s\n"
            "                  retry_policy:\n"
            "                    retry_on: 5xx,connect-failure,reset\n"
            "                    num_retries: 2\n"
            "                    per_try_timeout: 5s\n"
            "                    retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, "
            'typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]\n'
            "                    host_selection_retry_max_attempts: 5\n"
        )
    extra = ""
    if opts["policy"]:
        extra += """    circuit_breakers:
      thresholds:
      - {max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 64}
    outlier_detection:
      consecutive_5xx: 5
      interval: 10s
      base_ejection_time: 30s
      max_ejection_percent: 100
"""
    if opts["new_connections"]:
        extra += """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_requests_per_connection: 1}
        explicit_http_config: {http_protocol_options: {}}
"""
    if opts["tls"]:
        # Envoy clients stop at TLS 1.2 unless told otherwise; the agent speaks 1.3.
        san = f"{{exact: {spiffe('bench-server')}}}"
        extra += textwrap.indent(envoy_tls("UpstreamTlsContext", run, "client", san), "    ")
    hcm = envoy_hcm("OUTBOUND", "bench-client", route)
    clusters = envoy_cluster("upstream", p["server"], extra)
    return envoy_config(p["client_admin"], "outbound", p["client"], "OUTBOUND", hcm, clusters)


def envoy_server(run, variant, opts, p=None):
    """The server sidecar; on this benchmark's ports unless `p` (a
    [`ports`] dict) gives others."""
    p = p or ports("envoy", variant)
    route = "                route: {cluster: app}\n"
    filters = ""
    if opts["policy"]:
        filters = """          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: http_local_rate_limiter
              token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s}
              filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}, runtime_key: local_rate_limit_enabled}
              filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}, runtime_key: local_rate_limit_enforced}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
"""
    tls = ""
    if opts["tls"]:
        san = f'{{prefix: "spiffe://{TRUST_DOMAIN}/"}}'
        tls = textwrap.indent(envoy_tls("DownstreamTlsContext", run, "server", san, True), "      ")
    hcm = envoy_hcm("INBOUND", "bench-server", route, filters)
    clusters = envoy_cluster("app", UPSTREAM_PORT)
    return envoy_config(p["server_admin"], "inbound", p["server"], "INBOUND", hcm, clusters, tls)


def main_for(variants, kinds, roles, ports_of, makers):
    """The command line of a benchmark's config writer: `RUN_DIR ports`
    prints a `path kind role listen admin` line per path, kind and role;
    `RUN_DIR write` writes RUN_DIR/KIND-PATH-ROLE.yaml, made by
    `makers[kind]` (one function per role, in `roles`' order)."""
    run, command = sys.argv[1], sys.argv[2]
    for variant, opts in variants.items():
        for kind in kinds:
            p = ports_of(kind, variant)
            if command == "ports":
                for role in roles:
                    print(f"{kind}_{variant} {kind} {role} {p[role]} {p[role + '_admin']}")
                continue
            for role, build in zip(roles, makers[kind]):
                with open(f"{run}/{kind}-{variant}-{role}.yaml", "w") as out:
                    out.write(build(run, variant, opts))


def main():
    makers = {"agent": (agent_client, agent_server), "envoy": (envoy_client, envoy_server)}
    main_for(VARIANTS, KINDS, ("client", "server"), ports, makers)


if __name__ == "__main__":
    main()
