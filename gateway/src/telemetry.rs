//! Tracing set-up, once per process: JSON lines in production, human-readable in dev mode,
//! `RUST_LOG` honoured (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls are no-ops.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    // Every line goes through the masking layer (`crate::masking`) on its way out.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::masking::MaskedStdout)
        // Colour codes would hide values from the masking patterns.
        .with_ansi(false)
        .with_target(true);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // Already installed (a test harness started another app first): keep the first one.
    drop(result);
}
