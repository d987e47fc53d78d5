"""The admission webhook server and the background controllers (later issues).

This package is the only code that talks to the Kubernetes API. It calls the same engine functions as the
command line (`engine.policy_set.evaluate`), so a policy decides the same way offline and in a cluster.
"""
