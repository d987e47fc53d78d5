"""celvern's policy engine: load, compile, match and evaluate Kyverno CEL policies.

The engine is pure: it reads no network, starts no server and never talks to a Kubernetes API.
Every front (the CLI, the admission webhook, the background controllers) calls the same functions
here, so a policy behaves the same offline and in a cluster.
"""
