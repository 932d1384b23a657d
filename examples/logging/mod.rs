//! Logging for the examples: to stderr, in colour only on a terminal.

/// Logs to stderr, filtered by `RUST_LOG`, or by `default` without it.
pub(crate) fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A closed stderr (a pipe whose reader went away) must not turn each
        // log line into a panic, as the default report of write errors on
        // stderr itself would: a task that logs, the signal handler's among
        // them, would die.
        .log_internal_errors(false)
        // Colours only for a person; logs written to a file or a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
