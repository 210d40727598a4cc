use clap::{CommandFactory, FromArgMatches};
use tokenvend_server::{
    app,
    config::{Cli, Command, LogFormat},
    panic, telemetry,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config_file = match tokenvend_server::config::load_config_file(&args) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("tokenvend: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if e.use_stderr() => {
            // One line naming the setting, with its variable: the value may have come from
            // the environment, where a flag name would not help.
            eprintln!("tokenvend: {}", tokenvend_server::config::arg_error(&e));
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => e.exit(), // --help, --version
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = cli.command.load_secrets() {
        eprintln!("tokenvend: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve(args) => match telemetry::init(args.log_format, &args.log) {
            Ok(telemetry) => {
                panic::install_hook();
                let result = app::serve(*args).await;
                telemetry.shutdown().await;
                result
            }
            Err(e) => Err(e),
        },
        Command::Rewrap(db) => match telemetry::init(LogFormat::Human, "info") {
            Ok(telemetry) => {
                panic::install_hook();
                let result = app::rewrap(db).await;
                telemetry.shutdown().await;
                result
            }
            Err(e) => Err(e),
        },
        Command::Migrate(db) => match telemetry::init(LogFormat::Human, "info") {
            Ok(telemetry) => {
                panic::install_hook();
                let result = app::migrate(db).await;
                telemetry.shutdown().await;
                result
            }
            Err(e) => Err(e),
        },
        Command::CheckConfig(args) => {
            let serve = Cli::command();
            let serve = serve
                .find_subcommand("check-config")
                .expect("the check-config subcommand");
            let sub = matches
                .subcommand_matches("check-config")
                .expect("check-config matches");
            match tokenvend_server::preflight::check(&args) {
                Ok(_) => {
                    println!(
                        "{}",
                        tokenvend_server::preflight::describe(serve, sub, &args, &config_file)
                    );
                    println!("# configuration OK");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Command::Version => {
            println!(
                "tokenvend {} (git {})",
                env!("CARGO_PKG_VERSION"),
                env!("TOKENVEND_GIT_REVISION")
            );
            Ok(())
        }
        Command::Keygen { id, api_key } => {
            if api_key {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                use base64::Engine;
                println!(
                    "tv_{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                );
            } else {
                println!("{}", *tokenvend_core::crypto::KeyRing::generate_entry(&id));
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line; none of it holds secrets.
            tracing::error!("{e:#}");
            eprintln!("tokenvend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
