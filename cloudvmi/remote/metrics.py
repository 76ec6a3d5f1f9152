"""The agent's Prometheus metrics (`metrics_listen` in its configuration): calls by
operation and outcome, their latency, denials, and the VMs it has attached."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("cloudvmi_agent_calls", "Calls served, by operation and outcome",
                             ["op", "result"], registry=self.registry)
        self.latency = Histogram("cloudvmi_agent_call_seconds", "Time to serve a call",
                                 ["op"], registry=self.registry)
        self.denied = Counter("cloudvmi_agent_denied", "Calls refused by authorization",
                              ["op"], registry=self.registry)
        self.vms = Gauge("cloudvmi_agent_vms_attached", "VMs the agent holds attached",
                         registry=self.registry)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                          registry=self.registry)
