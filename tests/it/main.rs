//! Integration tests: the real `portcullis` binary against real backends
//! and clients on loopback. One test binary, modules per area.

mod admin;
mod auth;
mod cli;
mod demo;
mod directory;
mod edge;
mod health;
mod introspection;
mod lifecycle;
mod limits;
mod mfa;
mod oidc;
mod openapi;
mod portal;
mod protocols;
mod ratelimit;
mod routing;
mod signin;
mod soak;
mod sso;
mod support;
mod tls;
mod upstream_faults;
mod upstreams;
