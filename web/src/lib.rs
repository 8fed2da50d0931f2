//! What both HTTP servers (the gateway and the SSO) need to read requests
//! the same way: one reading of `Cookie` and one answer to "who is the
//! client" behind trusted proxies. Two readings of the same header are how
//! a check and an action come to disagree; here there is one of each, with
//! one table test.

pub mod client_ip;
pub mod cookie;
