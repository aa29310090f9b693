"""The `alkit` command line (installed as `alkit_cli`): parse, call one use case, render."""
