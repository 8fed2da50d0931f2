//! `portcullis`: dispatches subcommands; the work lives in the crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

// pingora allocates per request (headers, buffers, tasks); glibc malloc was
// ~10% of the gateway's CPU under load (perf, benches/load.sh), mimalloc
// about a third of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Edge API gateway and single sign-on service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge proxy.
    Gateway {
        /// Config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 valid, 2 invalid.
    Check {
        /// Config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
    /// Run the gateway and the SSO together on loopback, on generated
    /// configs and credentials: the docs portal, tokens, a protected route.
    Demo {
        /// The gateway's port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The gateway's admin port.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// The SSO's own port (it is also reachable through the gateway at /sso).
        #[arg(long, default_value_t = 9000)]
        sso_port: u16,
        /// Where to write the configs and keys (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the OpenID Provider (`sso -c sso.yaml`), or its helpers.
    Sso {
        /// SSO config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_SSO_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<SsoCommand>,
    },
    /// OpenAPI tools.
    Openapi {
        #[command(subcommand)]
        command: OpenapiCommand,
    },
}

#[derive(Subcommand)]
enum SsoCommand {
    /// Read a password or client secret from stdin and print its argon2id
    /// hash, for `secret_hash` and the users file.
    HashPassword,
    /// Print the JSON Schema of the SSO config file, for editors.
    Schema,
    /// Validate an SSO config file (and its users file) and exit: 0 valid,
    /// 2 invalid.
    Check {
        /// SSO config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_SSO_CONFIG")]
        config: PathBuf,
    },
    /// Manage the directory's users from the command line (on the database
    /// directly: no running SSO needed; bootstraps the first admin).
    /// Exit codes: 0 done, 1 the database failed, 2 invalid config or
    /// arguments, 3 refused (name taken, no such user, a user of the users
    /// file, a short password). Passwords are read from stdin.
    Admin {
        /// SSO config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_SSO_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        what: AdminWhat,
    },
    /// Create or upgrade the directory's schema and exit (the SSO also does
    /// it at start): 0 done, 1 the database failed, 2 invalid config.
    Migrate {
        /// SSO config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_SSO_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminWhat {
    /// Users of the directory.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Clients registered at run time.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client; a confidential client's secret is printed once.
    Add {
        client_id: String,
        /// `confidential` (a secret) or `public` (PKCE only).
        #[arg(long = "type", value_parser = ["confidential", "public"])]
        client_type: String,
        #[arg(long)]
        name: Option<String>,
        /// An exact redirect URI (repeatable).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A post-logout redirect URI (repeatable).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// A grant type (repeatable); defaults by type.
        #[arg(long = "grant")]
        grant_types: Vec<String>,
        /// An allowed scope (repeatable); defaults by grant.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Skip the consent page.
        #[arg(long)]
        first_party: bool,
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
    },
    /// List clients registered at run time (tab-separated).
    List,
    /// A new secret for a confidential client, printed once.
    Rotate { client_id: String },
    /// Delete a client registered at run time.
    Delete { client_id: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (password on stdin); `--role sso-admin` makes the
    /// first admin.
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
        /// Display name.
        #[arg(long = "display-name")]
        display_name: Option<String>,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List users (tab-separated), optionally those whose name or email
    /// contains SEARCH.
    List {
        #[arg(long)]
        search: Option<String>,
    },
    /// Disable a user: no sign-in, no refresh.
    Disable { username: String },
    /// Enable a disabled user.
    Enable { username: String },
    /// Set a user's password (on stdin).
    Passwd {
        username: String,
        /// A temporary password: the user chooses a new one at the next
        /// sign-in.
        #[arg(long)]
        temporary: bool,
    },
    /// Delete a user, their roles, groups and consents.
    Delete { username: String },
}

#[derive(Subcommand)]
enum OpenapiCommand {
    /// Merge backend OpenAPI 3 documents into one, under their public paths.
    Merge {
        /// Public URL of the gateway (repeatable), for `servers`.
        #[arg(long = "server")]
        servers: Vec<String>,
        /// Output format.
        #[arg(long, default_value = "json", value_parser = ["json", "yaml"])]
        format: String,
        /// OpenAPI version of the output.
        #[arg(long, default_value = "3.1", value_parser = ["3.1", "3.0"])]
        openapi: String,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// A service whose route does not strip its prefix (repeatable).
        #[arg(long = "keep-prefix")]
        keep_prefix: Vec<String>,
        /// `NAME=PREFIX=PATH_OR_URL`, e.g. `petstore=/petstore=./petstore.yaml`
        /// or `users=/users=http://users.internal/openapi.json`; refs into
        /// other files (or URLs) are bundled.
        #[arg(required = true)]
        specs: Vec<String>,
    },
}

/// Exit codes: 0 ok, 1 runtime failure, 2 invalid config or arguments.
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    match cli.command {
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&portcullis_config::json_schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Openapi {
            command:
                OpenapiCommand::Merge {
                    servers,
                    format,
                    openapi,
                    output,
                    keep_prefix,
                    specs,
                },
        } => match openapi_merge(servers, &format, &openapi, output, &keep_prefix, &specs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis openapi merge: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Sso {
            command: Some(SsoCommand::Admin { config, what }),
            ..
        } => sso_admin(&config, what),
        Command::Sso {
            command: Some(SsoCommand::HashPassword),
            ..
        } => {
            let secret = match secret_from_stdin("portcullis sso hash-password") {
                Ok(secret) => secret,
                Err(code) => return code,
            };
            match portcullis_sso::hash_secret(&secret) {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis sso hash-password: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Sso {
            command: Some(SsoCommand::Schema),
            ..
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&portcullis_config::sso_json_schema())
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Sso {
            command: Some(SsoCommand::Check { config }),
            ..
        } => match check_sso(&config) {
            Ok(summary) => {
                println!("{}: ok ({summary})", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Sso {
            command: Some(SsoCommand::Migrate { config: path }),
            ..
        } => on_sso_config(&path, "portcullis sso migrate", |config| {
            portcullis_sso::migrate(&config, &path)?;
            println!("{}: the directory's schema is current", path.display());
            Ok(())
        }),
        Command::Sso {
            config: None,
            command: None,
        } => {
            eprintln!("portcullis sso: give -c FILE (or PORTCULLIS_SSO_CONFIG)");
            ExitCode::from(EXIT_INVALID)
        }
        Command::Sso {
            config: Some(path),
            command: None,
        } => on_sso_config(&path, "portcullis sso", |config| {
            portcullis_sso::run(config, &path)
        }),
        Command::Demo {
            port,
            admin_port,
            sso_port,
            dir,
        } => {
            let ports = demo::Ports {
                gateway: port,
                admin: admin_port,
                sso: sso_port,
            };
            match demo::run(dir, &ports) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Check { config } => match portcullis_config::load(&config) {
            Ok(valid) => {
                for warning in valid.warnings() {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    valid.config.listeners.len(),
                    valid.config.upstreams.len(),
                    valid.config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Gateway { config } => {
            let valid = match portcullis_config::load(&config) {
                Ok(valid) => {
                    for warning in valid.warnings() {
                        log::warn!("{warning}");
                    }
                    valid
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match portcullis_gateway::run(valid) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {:#}", anyhow::Error::from(e));
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

/// Loads an SSO config and its users file; a one-line summary.
/// The first line of stdin (a password or secret): exit 1 when stdin
/// cannot be read, 2 when it is empty.
fn secret_from_stdin(name: &str) -> Result<String, ExitCode> {
    let mut secret = String::new();
    if std::io::stdin().read_line(&mut secret).is_err() {
        eprintln!("{name}: cannot read stdin");
        return Err(ExitCode::from(EXIT_RUNTIME));
    }
    let secret = secret.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        eprintln!("{name}: give the secret on stdin");
        return Err(ExitCode::from(EXIT_INVALID));
    }
    Ok(secret.to_owned())
}

fn sso_admin(path: &std::path::Path, what: AdminWhat) -> ExitCode {
    let config = match portcullis_config::load_sso(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let command = match what {
        AdminWhat::User { command } => user_command(command),
        AdminWhat::Client { command } => client_command(command),
    };
    let command = match command {
        Ok(command) => command,
        Err(code) => return code,
    };
    match portcullis_sso::admin(&config, path, command) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

const NAME: &str = "portcullis sso admin";

fn client_command(command: ClientCommand) -> Result<portcullis_sso::AdminCommand, ExitCode> {
    use portcullis_sso::AdminCommand;
    Ok(match command {
        ClientCommand::Add {
            client_id,
            client_type,
            name,
            redirect_uris,
            post_logout_redirect_uris,
            grant_types,
            scopes,
            first_party,
            backchannel_logout_uri,
        } => {
            // The config file's shape, so defaults and checks are the same.
            let definition = serde_json::json!({
                "client_id": client_id, "type": client_type, "name": name,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "grant_types": grant_types, "scopes": scopes, "first_party": first_party,
                "backchannel_logout_uri": backchannel_logout_uri,
            });
            match serde_json::from_value(definition) {
                Ok(client) => AdminCommand::AddClient { client },
                Err(e) => {
                    eprintln!("{NAME}: {e}");
                    return Err(ExitCode::from(EXIT_INVALID));
                }
            }
        }
        ClientCommand::List => AdminCommand::ListClients,
        ClientCommand::Rotate { client_id } => AdminCommand::RotateClientSecret { client_id },
        ClientCommand::Delete { client_id } => AdminCommand::DeleteClient { client_id },
    })
}

fn user_command(command: UserCommand) -> Result<portcullis_sso::AdminCommand, ExitCode> {
    use portcullis_sso::AdminCommand;
    Ok(match command {
        UserCommand::Add {
            username,
            email,
            display_name,
            roles,
            groups,
        } => match secret_from_stdin(NAME) {
            Ok(password) => AdminCommand::AddUser {
                user: portcullis_config::sso::User {
                    username,
                    password_hash: String::new(),
                    email,
                    name: display_name,
                    roles,
                    groups,
                    disabled: false,
                },
                password,
            },
            Err(code) => return Err(code),
        },
        UserCommand::List { search } => AdminCommand::ListUsers { search },
        UserCommand::Disable { username } => AdminCommand::SetDisabled {
            username,
            disabled: true,
        },
        UserCommand::Enable { username } => AdminCommand::SetDisabled {
            username,
            disabled: false,
        },
        UserCommand::Passwd {
            username,
            temporary,
        } => match secret_from_stdin(NAME) {
            Ok(password) => AdminCommand::SetPassword {
                username,
                password,
                temporary,
            },
            Err(code) => return Err(code),
        },
        UserCommand::Delete { username } => AdminCommand::DeleteUser { username },
    })
}

/// Loads an SSO config (exit 2 when invalid) and runs `action` on it
/// (exit 1 when it fails, with `name` and the cause).
fn on_sso_config(
    path: &std::path::Path,
    name: &str,
    action: impl FnOnce(portcullis_config::sso::SsoConfig) -> Result<(), portcullis_sso::SsoError>,
) -> ExitCode {
    let config = match portcullis_config::load_sso(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match action(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {:#}", anyhow::Error::from(e));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn check_sso(path: &std::path::Path) -> Result<String, portcullis_config::LoadError> {
    let config = portcullis_config::load_sso(path)?;
    let users = match &config.users.file {
        Some(file) => portcullis_config::load_users(&portcullis_config::resolve_path(path, file))?
            .users
            .len(),
        None => 0,
    };
    Ok(format!("{} clients, {users} users", config.clients.len()))
}

/// Largest document `openapi merge` reads from a file or URL.
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a document from a file, or from an http(s) URL (30 s timeout, no
/// proxy from the environment, at most 5 redirects).
fn read_location(location: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    if !(location.starts_with("http://") || location.starts_with("https://")) {
        let size = std::fs::metadata(location)
            .with_context(|| format!("reading {location}"))?
            .len();
        anyhow::ensure!(
            size <= MAX_DOCUMENT_BYTES,
            "{location}: larger than {MAX_DOCUMENT_BYTES} bytes"
        );
        return std::fs::read_to_string(location).with_context(|| format!("reading {location}"));
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()?;
    let response = client
        .get(location)
        .header("accept", "application/json, application/yaml;q=0.9")
        .send()
        .with_context(|| format!("fetching {location}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "fetching {location}: {}",
        response.status()
    );
    let mut text = String::new();
    response
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {location}"))?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_DOCUMENT_BYTES,
        "{location}: larger than {MAX_DOCUMENT_BYTES} bytes"
    );
    Ok(text)
}

fn openapi_merge(
    servers: Vec<String>,
    format: &str,
    openapi: &str,
    output: Option<PathBuf>,
    keep_prefix: &[String],
    specs: &[String],
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut inputs = Vec::new();
    for spec in specs {
        let mut parts = spec.splitn(3, '=');
        let (Some(name), Some(prefix), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("`{spec}`: expected NAME=PREFIX=PATH_OR_URL");
        };
        let text = read_location(path)?;
        let mut document = portcullis_openapi_merge::parse(name, &text)?;
        if document.get("swagger").and_then(|v| v.as_str()) == Some("2.0") {
            // Refs into other files are bundled into OpenAPI 3 components.
            document = portcullis_openapi_merge::convert_swagger2(&document);
        }
        let warnings = portcullis_openapi_merge::bundle_external_refs(
            name,
            &mut document,
            path,
            &mut |location: &str| read_location(location).map_err(|e| format!("{e:#}")),
        )?;
        for warning in warnings {
            eprintln!("portcullis openapi merge: warning: {warning}");
        }
        inputs.push(portcullis_openapi_merge::Input {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            strip_prefix: !keep_prefix.iter().any(|k| k == name),
            document,
        });
    }
    let options = portcullis_openapi_merge::Options {
        servers,
        openapi: if openapi == "3.0" { "3.0.3" } else { "3.1.0" }.to_owned(),
        ..Default::default()
    };
    let merged = portcullis_openapi_merge::merge(inputs, &options)?;
    let text = match format {
        "yaml" => portcullis_openapi_merge::to_yaml(&merged),
        _ => serde_json::to_string_pretty(&merged)? + "\n",
    };
    match output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}
