//! `portcullis sso admin …`: the directory from the command line, for
//! bootstrap (the first admin of an empty database) and scripts. It works
//! on the database directly, so it needs no running SSO and no token; what
//! it cannot do is end live sessions (a running SSO's admin API does):
//! a disabled user cannot sign in again and their refresh tokens are
//! refused, so their sessions end at the access token's expiry.

use std::path::Path;
use std::sync::Arc;

use portcullis_config::sso::{SsoConfig, User};

use crate::directory::{Directory, SqlDirectory, UserChange, MAX_PAGE};

/// What to do.
pub enum AdminCommand {
    AddUser {
        user: User,
        password: String,
    },
    ListUsers {
        search: Option<String>,
    },
    SetDisabled {
        username: String,
        disabled: bool,
    },
    SetPassword {
        username: String,
        password: String,
        /// To be replaced by the user at the next sign-in.
        temporary: bool,
    },
    DeleteUser {
        username: String,
    },
    /// The client's definition (a confidential one's secret generated).
    AddClient {
        client: portcullis_config::sso::Client,
    },
    ListClients,
    RotateClientSecret {
        client_id: String,
    },
    DeleteClient {
        client_id: String,
    },
}

/// Why a command did not succeed; each has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    /// The database could not be used (exit 1).
    #[error("{0}")]
    Directory(#[from] crate::directory::DirectoryError),
    /// The request was refused: a taken name, no such user, a user of the
    /// users file, a short password (exit 3).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AdminCliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminCliError::Refused(_) => 3,
            _ => 1,
        }
    }
}

fn refused(why: impl Into<String>) -> AdminCliError {
    AdminCliError::Refused(why.into())
}

/// Runs one command; returns what to print.
pub fn admin(
    config: &SsoConfig,
    source: &Path,
    command: AdminCommand,
) -> Result<String, AdminCliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config, source, command))
}

async fn run(
    config: &SsoConfig,
    source: &Path,
    command: AdminCommand,
) -> Result<String, AdminCliError> {
    let directory: Arc<dyn Directory> = Arc::new(
        SqlDirectory::open(
            &crate::directory_url(config, source),
            1,
            config.directory.timeout.0,
        )
        .await?,
    );
    let seeds: Vec<User> = match &config.users.file {
        Some(file) => {
            portcullis_config::load_users(&portcullis_config::resolve_path(source, file))
                .map_err(|e| refused(e.to_string()))?
                .users
        }
        None => Vec::new(),
    };
    let is_seed = |name: &str| seeds.iter().any(|u| u.username == name);
    let hash = |password: String| async move {
        let min = config.users.min_password_length;
        if password.chars().count() < min {
            return Err(refused(format!(
                "the password needs at least {min} characters"
            )));
        }
        tokio::task::spawn_blocking(move || crate::clients::hash_secret(&password))
            .await
            .map_err(|e| refused(e.to_string()))?
            .map_err(refused)
    };
    let change = |username: String, change: UserChange, what: &'static str| {
        let directory = directory.clone();
        let seed = is_seed(&username);
        async move {
            if seed {
                return Err(refused(format!(
                    "`{username}` is in the users file; change it there"
                )));
            }
            if directory.change_user(&username, change).await? {
                Ok(format!("{username}: {what}"))
            } else {
                Err(refused(format!("no user `{username}`")))
            }
        }
    };
    match command {
        AdminCommand::AddUser { mut user, password } => {
            if is_seed(&user.username) {
                return Err(refused(format!("`{}` is in the users file", user.username)));
            }
            user.password_hash = hash(password).await?;
            let users = crate::users::Users::new(Vec::new(), directory.clone());
            match users.register(user.clone()).await {
                Ok(Ok(())) => Ok(format!("{}: created", user.username)),
                Ok(Err(crate::users::RegisterRefused::Taken)) => {
                    Err(refused(format!("`{}` is taken", user.username)))
                }
                Ok(Err(crate::users::RegisterRefused::Invalid(why))) => Err(refused(why)),
                Err(e) => Err(refused(e.to_string())),
            }
        }
        AdminCommand::ListUsers { search } => {
            let mut out = String::from("username\temail\troles\tdisabled\n");
            let mut after: Option<String> = None;
            loop {
                let page = directory
                    .users(search.as_deref(), after.as_deref(), MAX_PAGE)
                    .await?;
                for record in &page {
                    let user = &record.user;
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\n",
                        user.username,
                        user.email.as_deref().unwrap_or("-"),
                        user.roles.join(","),
                        user.disabled
                    ));
                }
                if page.len() < MAX_PAGE as usize {
                    return Ok(out.trim_end().to_owned());
                }
                after = page.last().map(|r| r.user.username.clone());
            }
        }
        AdminCommand::SetDisabled { username, disabled } => {
            let what = if disabled { "disabled" } else { "enabled" };
            let update = UserChange {
                disabled: Some(disabled),
                ..UserChange::default()
            };
            change(username, update, what).await
        }
        AdminCommand::SetPassword {
            username,
            password,
            temporary,
        } => {
            let update = UserChange {
                password_hash: Some(hash(password).await?),
                password_change_required: Some(temporary),
                ..UserChange::default()
            };
            change(username, update, "password set").await
        }
        AdminCommand::AddClient { mut client } => {
            if config
                .clients
                .iter()
                .any(|c| c.client_id == client.client_id)
            {
                return Err(refused(format!(
                    "`{}` is in the config file",
                    client.client_id
                )));
            }
            let secret = if client.client_type == portcullis_config::sso::ClientType::Confidential {
                let (secret, hash) = crate::admin::new_client_secret()
                    .await
                    .ok_or_else(|| refused("hashing failed"))?;
                client.secret_hash = Some(hash);
                Some(secret)
            } else {
                None
            };
            crate::admin::check_client(&client, &crate::signing_algorithms(config))
                .map_err(refused)?;
            if !directory.create_client(&client).await? {
                return Err(refused(format!("`{}` is taken", client.client_id)));
            }
            Ok(match secret {
                Some(secret) => format!(
                    "{}: created\nclient_secret: {secret}\n(shown once: store it now)",
                    client.client_id
                ),
                None => format!("{}: created", client.client_id),
            })
        }
        AdminCommand::ListClients => {
            let mut out = String::from("client_id\ttype\tredirect_uris\n");
            let mut after: Option<String> = None;
            loop {
                let page = directory.clients(after.as_deref(), MAX_PAGE).await?;
                for client in &page {
                    let kind = match client.client_type {
                        portcullis_config::sso::ClientType::Public => "public",
                        portcullis_config::sso::ClientType::Confidential => "confidential",
                    };
                    out.push_str(&format!(
                        "{}\t{kind}\t{}\n",
                        client.client_id,
                        client.redirect_uris.join(",")
                    ));
                }
                if page.len() < MAX_PAGE as usize {
                    return Ok(out.trim_end().to_owned());
                }
                after = page.last().map(|c| c.client_id.clone());
            }
        }
        AdminCommand::RotateClientSecret { client_id } => {
            let mut client = directory
                .client(&client_id)
                .await?
                .ok_or_else(|| refused(format!("no run-time client `{client_id}`")))?;
            if client.secret_hash.is_none() {
                return Err(refused(format!("`{client_id}` has no secret")));
            }
            let (secret, hash) = crate::admin::new_client_secret()
                .await
                .ok_or_else(|| refused("hashing failed"))?;
            client.secret_hash = Some(hash);
            directory.replace_client(&client).await?;
            Ok(format!(
                "{client_id}: secret rotated\nclient_secret: {secret}\n(shown once: store it now)"
            ))
        }
        AdminCommand::DeleteClient { client_id } => {
            if directory.delete_client(&client_id).await? {
                Ok(format!("{client_id}: deleted"))
            } else {
                Err(refused(format!("no run-time client `{client_id}`")))
            }
        }
        AdminCommand::DeleteUser { username } => {
            if is_seed(&username) {
                return Err(refused(format!("`{username}` is in the users file")));
            }
            if directory.delete_user(&username).await? {
                Ok(format!("{username}: deleted"))
            } else {
                Err(refused(format!("no user `{username}`")))
            }
        }
    }
}
