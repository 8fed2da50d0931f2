//! The SSO's HTTP API as OpenAPI (utoipa), served at `{issuer}/openapi.json`
//! so the gateway's portal can merge it like any backend's document.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis SSO",
        description = "The OpenID Provider: OAuth 2.0 / OpenID Connect endpoints. Paths are relative to the issuer URL."
    ),
    paths(crate::discovery, crate::jwks, crate::flow::authorize, crate::token, crate::userinfo,
        crate::introspect, crate::revoke, crate::flow::end_session,
        crate::admin::list_users, crate::admin::create_user, crate::admin::get_user,
        crate::admin::update_user, crate::admin::set_password, crate::admin::delete_user,
        crate::admin::end_user_sessions, crate::admin::list_clients, crate::admin::create_client,
        crate::admin::get_client, crate::admin::update_client, crate::admin::rotate_client_secret,
        crate::admin::delete_client, crate::admin::list_roles, crate::admin::list_groups,
        crate::admin::role_members, crate::admin::group_members, crate::admin::give_role,
        crate::admin::take_role, crate::admin::give_group, crate::admin::take_group,
        crate::admin::list_audit, crate::admin::list_user_sessions,
        crate::admin::end_user_session),
    components(schemas(TokenForm, TokenResponse, OAuthErrorBody, TokenRequestForm, IntrospectionResponse,
        crate::admin::UserView, crate::admin::UserPage, crate::admin::NewUser,
        crate::admin::UserPatch, crate::admin::NewPassword, crate::admin::AuditView,
        crate::admin::AuditPage)),
    tags((name = "oidc", description = "OpenID Connect and OAuth 2.0"),
        (name = "admin", description = "For operators: an access token with the admin role"))
)]
pub struct SsoApi;

/// RFC 6749 §5.2 error.
#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_client`, `invalid_grant`, `invalid_request`, `invalid_scope`,
    /// `unauthorized_client`, `unsupported_grant_type`, ...
    error: String,
    error_description: String,
}

/// The token endpoint's form (`application/x-www-form-urlencoded`).
#[derive(Serialize, ToSchema)]
pub struct TokenRequestForm {
    /// `authorization_code`, `refresh_token`, `client_credentials` (or the
    /// legacy `password`, for clients given it).
    grant_type: String,
    code: Option<String>,
    redirect_uri: Option<String>,
    /// PKCE verifier (43 to 128 characters).
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    /// With `client_secret_post`, or alone for a public client.
    client_id: Option<String>,
    client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` for `private_key_jwt`.
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// An RFC 9068 JWT (`typ: at+jwt`).
    access_token: String,
    /// `Bearer`
    token_type: String,
    expires_in: u64,
    scope: Option<String>,
    /// With the `openid` scope.
    id_token: Option<String>,
    /// For clients with the `refresh_token` grant; rotated on every use.
    refresh_token: Option<String>,
}

/// The introspection and revocation form.
#[derive(Serialize, ToSchema)]
pub struct TokenForm {
    token: String,
    /// `access_token` or `refresh_token`.
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// RFC 7662.
#[derive(Serialize, ToSchema)]
pub struct IntrospectionResponse {
    active: bool,
    token_type: Option<String>,
    sub: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    #[schema(value_type = Option<Object>)]
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    jti: Option<String>,
}

/// The document with the issuer as its server and the security schemes.
pub fn document(issuer: &str) -> serde_json::Value {
    let mut doc = serde_json::to_value(SsoApi::openapi()).unwrap_or_default();
    doc["servers"] = serde_json::json!([{ "url": issuer }]);
    doc["components"]["securitySchemes"] = serde_json::json!({
        "basic": { "type": "http", "scheme": "basic", "description": "client_secret_basic" },
        "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
    });
    doc
}
