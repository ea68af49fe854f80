//! The one masking layer every log line passes through (`shared/spec/api.md`, "Compliant logs"):
//! the log writer masks each formatted line before it leaves the process, so no handler has to
//! remember to. WeChat openids and unionids keep 4 characters, phone numbers their first 3 and
//! last 4 digits, client IPs are cut to their /24 (IPv4) or /48 (IPv6); bearer tokens, JWTs,
//! secrets, keys, signatures, cookies and card-like numbers never appear. The audit tables keep
//! full values (they are access-controlled); logs are not.

use regex::{Captures, Regex};
use std::borrow::Cow;
use std::io::Write;
use std::sync::LazyLock;

struct Rule {
    pattern: Regex,
    replace: fn(&Captures<'_>) -> String,
}

fn rule(pattern: &str, replace: fn(&Captures<'_>) -> String) -> Rule {
    Rule {
        // The patterns are constants of this file (the unit tests compile every one).
        pattern: Regex::new(pattern).expect("a masking pattern compiles"),
        replace,
    }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // A JWT (the hub's bearer tokens) anywhere.
        rule(
            r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            |_| "[jwt]".into(),
        ),
        // `Bearer <anything>`.
        rule(r"(?i)\b(bearer\s+)[^\s,;]+", |c| {
            format!("{}[redacted]", &c[1])
        }),
        // Cookie headers, whole (every cookie in them).
        rule(r#"(?i)\b((?:set-)?cookie\s*[:=]\s*)[^\r\n"]+"#, |c| {
            format!("{}[redacted]", &c[1])
        }),
        // Named secrets: `secret=…`, `"apiv3_key": "…"`, `HUB_WECHAT__APIV3_KEY=…`, signatures,
        // passwords, tokens (the name may end a longer one: `login_secret`, `X_API_KEY`).
        rule(
            r#"(?i)\b([a-z0-9_-]*(?:secret|password|passwd|api_?v3_?key|api_?key|access_token|refresh_token|token|authorization|signature)\\?"?\s*[:=]\s*\\?"?)([^\s",&;\\]+)"#,
            |c| format!("{}[redacted]", &c[1]),
        ),
        // WeChat openids and unionids (`o` + 27 characters, and the like): the first 4 stay.
        rule(r"\b(o[A-Za-z0-9_-]{3})[A-Za-z0-9_-]{16,40}\b", |c| {
            format!("{}****", &c[1])
        }),
        // Card-like numbers (13 to 19 digits).
        rule(r"\b\d{13,19}\b", |_| "[number]".into()),
        // Mainland mobile numbers: 3 + 4 digits stay.
        rule(r"\b(1[3-9]\d)\d{4}(\d{4})\b", |c| {
            format!("{}****{}", &c[1], &c[2])
        }),
        // IPv6: the first three groups (the /48) stay.
        rule(
            r"\b([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}):[0-9A-Fa-f:]*[0-9A-Fa-f]\b",
            |c| format!("{}::/48", &c[1]),
        ),
        // Compressed IPv6 (`2001:db8::1`): the groups before `::` stay, as a /48 at most.
        rule(
            r"\b([0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,2})::[0-9A-Fa-f:]*[0-9A-Fa-f]\b",
            |c| format!("{}::/48", &c[1]),
        ),
        // IPv4: the /24 stays (loopback is nobody's address: the node's own `listening` line).
        rule(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}\b", |c| {
            if c[1].starts_with("127.") {
                c[0].to_owned()
            } else {
                format!("{}.0/24", &c[1])
            }
        }),
    ]
});

/// `line` with every sensitive value masked.
pub fn mask(line: &str) -> Cow<'_, str> {
    let mut masked = Cow::Borrowed(line);
    for rule in RULES.iter() {
        if rule.pattern.is_match(&masked) {
            let replaced = rule
                .pattern
                .replace_all(&masked, |captures: &Captures<'_>| (rule.replace)(captures))
                .into_owned();
            masked = Cow::Owned(replaced);
        }
    }
    masked
}

/// A writer that masks what it is given before passing it on (the log formatter writes one
/// event per call).
#[derive(Debug)]
pub struct MaskingWriter<W> {
    inner: W,
}

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buffer);
        self.inner.write_all(mask(&text).as_bytes())?;
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Makes masking writers over standard output.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskedStdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStdout {
    type Writer = MaskingWriter<std::io::StdoutLock<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter {
            inner: std::io::stdout().lock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        for rule in RULES.iter() {
            assert!(!rule.pattern.as_str().is_empty());
            assert!(!rule.pattern.is_match(""), "{}", rule.pattern.as_str());
        }
    }

    #[test]
    fn sensitive_values_are_masked_and_the_rest_kept() {
        let cases = [
            (
                "auth Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig_nature-1 done",
                "auth Bearer [redacted] done",
            ),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.abc",
                "token [jwt]",
            ),
            (
                "login_secret=6437b8686cad8adb1ff2 ok",
                "login_secret=[redacted] ok",
            ),
            (
                r#"{"apiv3_key":"PAoLKvF2XmfR3caN"}"#,
                r#"{"apiv3_key":"[redacted]"}"#,
            ),
            ("openid=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o x", "openid=oUpF**** x"),
            ("unionid o6_bmasdasdsad6_2sgVt7hMZOPfL", "unionid o6_b****"),
            ("call 13812345678 now", "call 138****5678 now"),
            ("card 6222021234567890123", "card [number]"),
            ("from 203.0.113.77 port", "from 203.0.113.0/24 port"),
            ("listening on 127.0.0.1:8080", "listening on 127.0.0.1:8080"),
            (
                "from 2001:db8:85a3:8d3:1319:8a2e:370:7348 x",
                "from 2001:db8:85a3::/48 x",
            ),
            ("Cookie: a=1; hub_wechat_login=abcdef", "Cookie: [redacted]"),
            (
                "HUB_WECHAT__APIV3_KEY=PAoLKvF2XmfR3caN",
                "HUB_WECHAT__APIV3_KEY=[redacted]",
            ),
            ("peer 2001:db8::1 left", "peer 2001:db8::/48 left"),
        ];
        for (line, expected) in cases {
            assert_eq!(mask(line), expected, "{line}");
        }
        // Ordinary lines pass untouched.
        for line in [
            "order 2c8ee06b5e274477b0f30775d4a7c3b8 paid, 990 credits",
            "request failed after 12:34:56.789 with code insufficient_credits",
            "transaction 4200202612060909888987022212",
        ] {
            assert_eq!(mask(line), line);
        }
    }
}
