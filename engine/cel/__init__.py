"""The CEL layer: a Kyverno-compatible CEL environment on top of cel-expr-python.

cel-expr-python wraps Google's C++ CEL runtime, which is fast but lacks what Kubernetes and Kyverno add
to CEL. This package supplies the rest: an expression parser and rewriter (`syntax`, `rewriting`) for
language features the runtime cannot parse or dispatch, function libraries (`libraries/`), and the
environment (`environment`) that compiles an expression once into an immutable program.
"""
