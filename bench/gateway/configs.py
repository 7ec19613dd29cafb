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
pairs (Envoy's listeners, clusters, TLS) come from bench/agent/pairs.py.

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

HOST = pairs.HOST
UPSTREAM_PORT = pairs.UPSTREAM_PORT
GATEWAY_ACCOUNT = "istio-ingressgateway-service-account"
GATEWAY_SPIFFE = f"spiffe://{pairs.TRUST_DOMAIN}/ns/istio-system/sa/{GATEWAY_ACCOUNT}"
VARIANTS = {"gateway": {"tls": False}, "gateway_mtls": {"tls": True}}
KINDS = {"tracemesh": 18600, "envoy": 18700}


def ports(kind, variant):
    base = KINDS[kind] + 10 * list(VARIANTS).index(variant)
    return {"gateway": base, "gateway_admin": base + 1, "server": base + 3,
            "server_admin": base + 4, "server_spare": base + 5}


def identity(run, role, account):
    certs = f"{run}/certs/{role}"
    return (
        f"  serviceAccount: {account}\n"
        f"  identity:\n"
        f"    files: {{certChain: {certs}/cert-chain.pem, privateKey: {certs}/key.pem, "
        f"rootCert: {certs}/root-cert.pem}}\n"
    )


def tracemesh_gateway(run, variant, opts):
    p = ports("tracemesh", variant)
    tls_label = "\n    labels: {security.istio.io/tlsMode: istio}" if opts["tls"] else ""
    rule = (
        f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upstream, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{pairs.spiffe('bench-server')}]}}
"""
        if opts["tls"]
        else ""
    )
    return f"""apiVersion: tracemesh.io/v1
kind: IngressGateway
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway, app: istio-ingressgateway}}
  listeners: [{{port: 80, listen: "127.0.0.1:{p['gateway']}"}}]
  admin: {{listen: "127.0.0.1:{p['gateway_admin']}"}}
  concurrency: 1
{identity(run, 'gateway', GATEWAY_ACCOUNT) if opts['tls'] else ''}  telemetry:
    otlp: {{endpoint: "http://127.0.0.1:{pairs.SINK_PORT}", protocol: grpc}}
    sampling: 1.0
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {p['server']}}}{tls_label}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: upstream, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [bench-gateway]
  http:
  - name: default
    route:
    - destination: {{host: {HOST}}}
""" + rule


def tracemesh_server(run, variant, opts):
    p = ports("tracemesh", variant)
    doc = pairs.agent_bootstrap(run, variant, "server", p["server"], UPSTREAM_PORT,
                                p["server_spare"], p["server_admin"], opts["tls"])
    if opts["tls"]:
        doc += """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
"""
    return doc


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
    hcm = pairs.envoy_hcm("OUTBOUND", "istio-ingressgateway", route)
    hcm = hcm.replace("          generate_request_id: true\n",
                      "          generate_request_id: true\n          use_remote_address: true\n")
    return (
        pairs.envoy_common(p["gateway_admin"])
        + f"""static_resources:
  listeners:
  - name: 0.0.0.0_80
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p['gateway']}}}}}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
"""
        + hcm
        + "  clusters:\n"
        + pairs.envoy_cluster("upstream", p["server"], extra)
        + pairs.OTLP_CLUSTER
    )


def envoy_server(run, variant, opts):
    p = ports("envoy", variant)
    doc = pairs.envoy_server(run, "pair_mtls" if opts["tls"] else "pair", {"tls": opts["tls"], "policy": False})
    # The pair's server, on this path's ports.
    q = pairs.ports("envoy", "pair_mtls" if opts["tls"] else "pair")
    return (doc.replace(f"port_value: {q['server']}}}", f"port_value: {p['server']}}}")
               .replace(f"port_value: {q['server_admin']}}}", f"port_value: {p['server_admin']}}}"))


def main():
    run, command = sys.argv[1], sys.argv[2]
    for variant, opts in VARIANTS.items():
        for kind in KINDS:
            p = ports(kind, variant)
            if command == "ports":
                print(f"{kind}_{variant} {kind} gateway {p['gateway']} {p['gateway_admin']}")
                print(f"{kind}_{variant} {kind} server {p['server']} {p['server_admin']}")
                continue
            make = {"tracemesh": (tracemesh_gateway, tracemesh_server),
                    "envoy": (envoy_gateway, envoy_server)}[kind]
            for role, build in zip(("gateway", "server"), make):
                with open(f"{run}/{kind}-{variant}-{role}.yaml", "w") as out:
                    out.write(build(run, variant, opts))


if __name__ == "__main__":
    main()
