//! WeChat: the WeChat Pay APIv3 protocol primitives (`apiv3`): request signing, verification of
//! WeChat's signed answers and callbacks, and notification decryption. The protocol facts are in
//! `shared/spec/wechat.md` (§C, §D); the HTTP client, the login flow and the sandbox build on these.

pub mod apiv3;
pub mod bill;
pub mod client;
pub mod login;
pub mod notify;
