"""Cross-node VMI: a per-node agent serving its VMs over gRPC with mutual TLS, and a client."""
