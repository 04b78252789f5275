//! The `herald` binary: parse the configuration, set up logging, run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use herald::config::{Cli, Command, Config, LogFormat};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => herald::cli::token(args),
        Some(Command::Publish(args)) => herald::cli::publish(args),
        Some(Command::Revoke(args)) => herald::admin::revoke(args),
        Some(Command::Block(args)) => herald::admin::block(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn serve(args: herald::config::ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("herald: {p}");
            }
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    // JWKS: the first fetch starts now; serving does not wait for it (handshakes wait up
    // to 2 s for a fetch in flight, then get 401 until keys arrive; see docs/decisions.md).
    config.auth.start();
    let listener = match herald::server::bind(config.listen, config.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let result = actix_web::rt::System::new().block_on(herald::server::run(config, listener));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(1)
        }
    }
}
