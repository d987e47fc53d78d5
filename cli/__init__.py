"""celvern's command line (`celvern apply`, `celvern test`): a Kyverno-CLI-compatible front to the engine."""
