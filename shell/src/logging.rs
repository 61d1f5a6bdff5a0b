//! One log subscriber for every veil binary.
//!
//! Colour escapes only when stderr is a terminal: a journal, a pipe or a
//! file gets plain text (they used to receive raw escape codes). JSON lines
//! (`--log-format json`) are for log shippers; each line carries the level,
//! target, fields and message.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The logging options every veil binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "veil_protocol=debug"
    /// [default: "info" for services, "warn" for the demo and tools]
    #[arg(long, global = true, env = "VEIL_LOG")]
    pub log: Option<String>,
    /// Log line format: text (coloured on a terminal only) or json.
    #[arg(
        long,
        global = true,
        env = "VEIL_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
}

/// The filter of a long-running service: its start-up lines (keys,
/// fingerprints, listeners) and reconnects are what an operator reads.
pub const SERVICE_FILTER: &str = "info,rumqttd=warn";
/// The filter of the demo and one-shot tools, whose stdout is the report.
pub const TOOL_FILTER: &str = "warn,rumqttd=off";

impl LogArgs {
    /// Installs the subscriber (see [`init`]), with `default_filter` unless
    /// `--log`/`VEIL_LOG` says otherwise.
    pub fn init(&self, default_filter: &str) {
        init(
            self.log.as_deref().unwrap_or(default_filter),
            self.log_format,
        );
    }
}

/// Installs the process's subscriber, writing to stderr. A filter that does
/// not parse falls back to `warn` and says so once it is installed. A
/// second call does nothing (tests start several roles in one process).
pub fn init(filter: &str, format: LogFormat) {
    let (env_filter, bad_filter) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("warn"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    if installed.is_ok()
        && let Some(e) = bad_filter
    {
        tracing::warn!(filter, error = %e, "invalid log filter; logging warnings only");
    }
}
