//! What a session keeps besides its outcome: the values its `evaluate` steps returned
//! (bounded: a page decides what it returns), and the names its artifacts get.

use std::sync::Mutex;

/// Largest `evaluate` value kept, serialized (a page decides what it returns).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest total of one session's kept values.
pub const MAX_SESSION_VALUES_BYTES: usize = 1024 * 1024;

/// What one `evaluate` step returned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepValue {
    /// The step's number in the job (1-based).
    pub step: usize,
    pub value: serde_json::Value,
}

/// The `evaluate` values of one attempt, bounded: a value over [`MAX_VALUE_BYTES`] or past
/// [`MAX_SESSION_VALUES_BYTES`] in all is kept as `{"truncated": true, "bytes": N}`.
#[derive(Debug, Default)]
pub struct Values(Mutex<(Vec<StepValue>, usize)>);

impl Values {
    pub fn push(&self, step: usize, value: serde_json::Value) {
        let bytes = serde_json::to_string(&value).map(|s| s.len()).unwrap_or(0);
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let value = if bytes > MAX_VALUE_BYTES || g.1 + bytes > MAX_SESSION_VALUES_BYTES {
            serde_json::json!({ "truncated": true, "bytes": bytes })
        } else {
            g.1 += bytes;
            value
        };
        g.0.push(StepValue { step, value });
    }

    pub fn take(&self) -> Vec<StepValue> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = 0;
        std::mem::take(&mut g.0)
    }
}

pub fn artifact_name(prefix: &str, index: u64, attempt: u32, n: usize, ext: &str) -> String {
    format!("{prefix}-s{index:05}-a{attempt}-step{}.{ext}", n + 1)
}

/// `<job name>-<job id>` made safe for a file name: letters, digits, `.`, `_` and `-` only, at
/// most 64 bytes of the name.
pub fn artifact_prefix(job: &str, id: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let name = clean(job, 64);
    let name = if name.is_empty() || name.starts_with('.') {
        format!("job{name}")
    } else {
        name
    };
    format!("{name}-{}", clean(id, 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_kept_and_bounded() {
        let v = Values::default();
        v.push(3, serde_json::json!({"title": "x", "n": 2}));
        v.push(5, serde_json::Value::String("y".repeat(MAX_VALUE_BYTES)));
        let got = v.take();
        assert_eq!(got[0].step, 3);
        assert_eq!(got[0].value["n"], 2);
        assert_eq!(got[1].value["truncated"], true);
        assert!(v.take().is_empty());
        // The session's total is bounded too.
        for i in 0..40 {
            v.push(
                i,
                serde_json::Value::String("z".repeat(MAX_VALUE_BYTES - 10)),
            );
        }
        let kept: usize = v
            .take()
            .iter()
            .filter(|s| s.value.is_string())
            .map(|s| s.value.as_str().map_or(0, str::len))
            .sum();
        assert!(kept <= MAX_SESSION_VALUES_BYTES, "{kept}");
    }

    #[test]
    fn artifact_names_carry_job_and_session() {
        assert_eq!(
            artifact_name(
                &artifact_prefix("nightly crawl", "j7-4242-99"),
                12,
                1,
                4,
                "png"
            ),
            "nightly_crawl-j7-4242-99-s00012-a1-step5.png"
        );
        assert_eq!(artifact_prefix("../etc", "1"), "job.._etc-1");
    }

    proptest! {
        /// Whatever a job is named (a stranger writes jobs for the service), its artifacts stay
        /// plain file names inside the artifacts directory.
        #[test]
        fn artifact_prefix_is_a_plain_file_name(name in ".{0,100}", id in ".{0,30}") {
            let p = artifact_prefix(&name, &id);
            prop_assert!(!p.contains('/') && !p.contains('\0'));
            prop_assert!(!p.starts_with('.'));
            prop_assert!(p.len() <= 64 + 3 + 1 + 64 + 4);
        }
    }
}
