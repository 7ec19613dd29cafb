"""Writes the configs of the gateway benchmark: requests enter through an
ingress gateway, cross to a server sidecar and reach the upstream, as a
request from outside enters an Istio mesh. Each path exists twice, once as
`tracemesh gateway` in front of a tracemesh agent and once as Envoy
configured as Istio's ingress gateway in front of an Envoy sidecar:

- gateway:      plaintext between the gateway and the sidecar;
- gateway_mtls: mutual TLS between them (Istio's default, ISTIO_MUTUAL with
                the gateway's and the sidecar's SPIFFE certificates of one
                CA), kept-alive connections.

Every proxy traces every request (sampling 1.0, spans batched 512 per export
or every second) to the run's OTLP sink. The pieces shared with the sidecar
pairs come from bench/agent/pairs.py: the server sidecars (agent and Envoy),
the upstream's ServiceEntry, VirtualService and DestinationRule, and Envoy's
bootstrap, connection manager, clusters and TLS.

    python3 configs.py RUN_DIR ports   # prints `path kind role listen admin` lines
    python3 configs.py RUN_DIR write   # writes RUN_DIR/{tracemesh,envoy}-PATH-{gateway,server}.yaml

Certificates are expected in RUN_DIR/certs/{gateway,server}/ (run.sh makes
them with `tracemesh ca`).
"""

import os
import sys
import textwrap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent"))
import pairs  # noqa: E402

GATEWAY_ACCOUNT = "istio-ingressgateway-service-account"
GATEWAY_SPIFFE = f"spiffe://{pairs.TRUST_DOMAIN}/ns/istio-system/sa/{GATEWAY_ACCOUNT}"
VARIANTS = {"gateway": {"tls": False}, "gateway_mtls": {"tls": True}}
KINDS = {"tracemesh": 18600, "envoy": 18700}


def ports(kind, variant):
    base = KINDS[kind] + 10 * list(VARIANTS).index(variant)
    return {"gateway": base, "gateway_admin": base + 1, "server": base + 3,
            "server_admin": base + 4, "server_spare": base + 5}


def tracemesh_gateway(run, variant, opts):
    p = ports("tracemesh", variant)
    identity = pairs.agent_identity(run, "gateway", GATEWAY_ACCOUNT) if opts["tls"] else ""
    bootstrap = f"""apiVersion: tracemesh.io/v1
kind: IngressGateway
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway, app: istio-ingressgateway}}
  listeners: [{{port: 80, listen: "127.0.0.1:{p['gateway']}"}}]
  admin: {{listen: "127.0.0.1:{p['gateway_admin']}"}}
  concurrency: 1
{identity}  telemetry:
    otlp: {{endpoint: "http://127.0.0.1:{pairs.SINK_PORT}", protocol: grpc}}
    sampling: 1.0
"""
    gateway = """---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""
    return (
        bootstrap
        + pairs.upstream_entry(p["server"], opts["tls"])
        + gateway
        + pairs.upstream_route(gateways=["bench-gateway"])
        + (pairs.upstream_mtls_rule() if opts["tls"] else "")
    )


def tracemesh_server(run, variant, opts):
    """The sidecar pair's server agent, on this path's ports."""
    return pairs.agent_server(run, variant, {"tls": opts["tls"], "policy": False},
                              ports("tracemesh", variant))


def envoy_gateway(run, variant, opts):
    """Envoy as Istio renders its ingress gateway: one HTTP listener for the
    Gateway's port, the VirtualService's route, the remote address used for
    x-forwarded-for (`use_remote_address`), mTLS to the sidecar with the
    gateway's workload certificate."""
    p = ports("envoy", variant)
    route = "                route: {cluster: upstream}\n"
    extra = ""
    if opts["tls"]:
        san = f"{{exact: {pairs.spiffe('bench-server')}}}"
        extra = textwrap.indent(pairs.envoy_tls("UpstreamTlsContext", run, "gateway", san), "    ")
    hcm = pairs.envoy_hcm("OUTBOUND", "istio-ingressgateway", route, use_remote_address=True)
    clusters = pairs.envoy_cluster("upstream", p["server"], extra)
    return pairs.envoy_config(p["gateway_admin"], "0.0.0.0_80", p["gateway"], "OUTBOUND", hcm, clusters)


def envoy_server(run, variant, opts):
    """The sidecar pair's server Envoy, on this path's ports."""
    return pairs.envoy_server(run, variant, {"tls": opts["tls"], "policy": False},
                              ports("envoy", variant))


def main():
    makers = {"tracemesh": (tracemesh_gateway, tracemesh_server),
              "envoy": (envoy_gateway, envoy_server)}
    pairs.main_for(VARIANTS, KINDS, ("gateway", "server"), ports, makers)


if __name__ == "__main__":
    main()
