//! Channel names: `user:{user_id}` (personal) and `task:{task_id}` (one task's events). Anything
//! else is an unknown channel (protocol error 102).

use std::fmt;
use std::str::FromStr;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A parsed channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `user:{user_id}`: a user's task events and balance changes.
    User(String),
    /// `task:{task_id}`: one task's events.
    Task(String),
}

/// Why a channel name is not one the hub knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No `namespace:` prefix, or one the hub does not serve.
    #[error("unknown channel namespace in `{0}` (expected user:… or task:…)")]
    UnknownNamespace(String),
    /// The part after the namespace is empty, too long, or has characters ids never have.
    #[error("malformed channel name `{0}`")]
    Malformed(String),
}

impl Channel {
    /// The channel's full name.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The personal channel of `user_id`.
    pub fn user(user_id: &str) -> Self {
        Channel::User(user_id.to_owned())
    }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::Malformed(name.chars().take(32).collect()));
        }
        let (namespace, id) = name
            .split_once(':')
            .ok_or_else(|| ChannelError::UnknownNamespace(name.to_owned()))?;
        let build = match namespace {
            "user" => Channel::User,
            "task" => Channel::Task,
            _ => return Err(ChannelError::UnknownNamespace(name.to_owned())),
        };
        if !valid_id(id) {
            return Err(ChannelError::Malformed(name.to_owned()));
        }
        Ok(build(id.to_owned()))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::User(id) => write!(f, "user:{id}"),
            Channel::Task(id) => write!(f, "task:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_task_channels_parse_and_print_back() {
        for name in ["user:alice", "task:0b6f3c2e-8f7a-4c55-9a55-1d2a3b4c5d6e"] {
            let channel: Channel = name.parse().expect(name);
            assert_eq!(channel.name(), name);
        }
        assert_eq!("user:alice".parse(), Ok(Channel::user("alice")));
    }

    #[test]
    fn other_namespaces_are_unknown() {
        for name in ["chat:room", "alice", "", ":x", "User:alice"] {
            assert!(
                matches!(
                    name.parse::<Channel>(),
                    Err(ChannelError::UnknownNamespace(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for name in ["user:", "user:a b", "task:x:y", "user:ünï"] {
            assert!(
                matches!(name.parse::<Channel>(), Err(ChannelError::Malformed(_))),
                "{name}"
            );
        }
        assert!("user:".parse::<Channel>().is_err());
        assert!(
            format!("user:{}", "a".repeat(300))
                .parse::<Channel>()
                .is_err()
        );
    }
}
