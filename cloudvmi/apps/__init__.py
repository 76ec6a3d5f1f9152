"""Applications for centralized cloud security management, each a thin layer over the VM
interface (views, guest operations, `exec`): guard, hunt, fim, enforce."""
