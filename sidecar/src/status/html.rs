//! The status page's HTML: one document, inline CSS and SVG sparklines, refreshed by the browser
//! every few seconds (`<meta http-equiv="refresh">`), no script. Everything that comes from a
//! process (comm, command line, paths) or a policy goes through [`esc`].

use std::fmt::Write as _;

use super::{Point, Status};
use crate::policy::units::{format_duration, format_size};

/// Seconds between refreshes.
const REFRESH_SECS: u32 = 5;

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn secs(s: f64) -> String {
    format_duration(std::time::Duration::from_secs_f64(s.max(0.0)))
}

/// An SVG polyline of `values`, scaled to its own range.
fn sparkline(values: &[f64], title: &str) -> String {
    let (w, h) = (120.0, 24.0);
    if values.len() < 2 {
        return format!("<span class=\"muted\" title=\"{}\">—</span>", esc(title));
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let step = w / (values.len() - 1) as f64;
    let pts: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - (v - lo) / span * (h - 4.0)
            )
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title><polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        pts.join(" "),
        t = esc(title)
    )
}

fn table(o: &mut String, id: &str, head: &[&str], rows: &[Vec<String>], empty: &str) {
    let _ = write!(o, "<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            o,
            "<tr><td colspan=\"{}\" class=\"muted\">{}</td></tr>",
            head.len(),
            esc(empty)
        );
    }
    for r in rows {
        o.push_str("<tr>");
        // Cells are already escaped (or markup built here from escaped parts).
        for c in r {
            let _ = write!(o, "<td>{c}</td>");
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
}

/// The whole page.
pub fn page(st: &Status<'_>) -> String {
    let mut o = String::with_capacity(32 * 1024);
    let p = st.policy;
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"><title>leakwarden status</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        o,
        "<header><h1>leakwarden</h1><p>version {} · scanned {} processes in {:.1} ms · refreshes every {REFRESH_SECS} s · policy <code>{}</code> · {}</p></header>",
        esc(st.version),
        st.scan.processes_scanned,
        st.scan.scan_seconds * 1000.0,
        esc(&p.source),
        if p.dry_run {
            "<span class=\"badge dry\" id=\"dry-run\">DRY RUN: nothing is signalled or removed</span>"
        } else {
            "<span class=\"badge live\" id=\"dry-run\">enforcing</span>"
        }
    );

    o.push_str("<h2>Families</h2>");
    let rows: Vec<Vec<String>> = st
        .scan
        .families
        .iter()
        .map(|f| {
            let all: Vec<Point> = st
                .history
                .get(&f.name)
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default();
            vec![
                esc(&f.name),
                f.processes.to_string(),
                f.trees.to_string(),
                f.orphan_trees.to_string(),
                f.orphans.to_string(),
                esc(&format_size(f.rss_bytes)),
                if f.fds_unknown > 0 {
                    format!("≥ {} ({} unknown)", f.fds, f.fds_unknown)
                } else {
                    f.fds.to_string()
                },
                f.threads.to_string(),
                sparkline(
                    &all.iter().map(|x| x.rss_bytes as f64).collect::<Vec<_>>(),
                    &format!("{} RSS, last hour", f.name),
                ),
                sparkline(
                    &all.iter().map(|x| x.fds as f64).collect::<Vec<_>>(),
                    &format!("{} FDs, last hour", f.name),
                ),
            ]
        })
        .collect();
    table(
        &mut o,
        "families",
        &[
            "family",
            "processes",
            "trees",
            "orphaned trees",
            "orphaned processes",
            "RSS",
            "FDs",
            "threads",
            "RSS (1 h)",
            "FDs (1 h)",
        ],
        &rows,
        "no families",
    );

    o.push_str("<h2>Trees</h2>");
    let rows: Vec<Vec<String>> = st
        .scan
        .trees
        .iter()
        .map(|t| {
            let root = t
                .members
                .iter()
                .find(|m| m.pid == t.root_pid)
                .map(|m| m.comm.as_str())
                .unwrap_or("");
            let verdict = match t.orphaned_for_seconds {
                Some(d) => format!(
                    "<span class=\"bad\">ORPHANED {}</span> <span class=\"muted\">{}</span>",
                    esc(&secs(d)),
                    esc(t.why_text)
                ),
                None => format!("owned <span class=\"muted\">{}</span>", esc(t.why_text)),
            };
            vec![
                esc(t
                    .profile_dir
                    .as_deref()
                    .unwrap_or(&format!("{} {}", t.family, t.root_pid))),
                esc(&t.family),
                format!("{} <code>{}</code>", t.root_pid, esc(root)),
                t.processes.to_string(),
                esc(&format_size(t.rss_bytes)),
                t.fds.to_string(),
                esc(&secs(t.age_seconds)),
                verdict,
                t.owner
                    .as_ref()
                    .map(|w| {
                        format!(
                            "{} <code>{}</code> (subtree {})",
                            w.pid,
                            esc(&w.comm),
                            esc(&format_size(w.subtree_rss_bytes))
                        )
                    })
                    .unwrap_or_else(|| "—".into()),
            ]
        })
        .collect();
    table(
        &mut o,
        "trees",
        &[
            "tree",
            "family",
            "root",
            "processes",
            "RSS",
            "FDs",
            "age",
            "verdict",
            "owner",
        ],
        &rows,
        "no trees",
    );

    o.push_str("<h2>Leak suspects</h2>");
    let rows: Vec<Vec<String>> = st
        .scan
        .leak_suspects
        .iter()
        .map(|l| {
            vec![
                esc(&l.family),
                format!("{} <code>{}</code>", l.root_pid, esc(&l.root_comm)),
                esc(l.resource),
                format!("{:.0}", l.current),
                format!("{:+.0}/h", l.slope_per_hour),
                l.growing_for_seconds
                    .map(|s| esc(&secs(s)))
                    .unwrap_or_default(),
                match (l.time_to_limit_seconds, l.limit_source) {
                    (Some(t), Some(src)) => format!("{} ({})", esc(&secs(t)), esc(src)),
                    _ => "—".into(),
                },
            ]
        })
        .collect();
    table(
        &mut o,
        "leaks",
        &[
            "family",
            "root",
            "resource",
            "now",
            "slope",
            "growing for",
            "time to limit",
        ],
        &rows,
        "nothing is growing",
    );

    o.push_str("<h2>Zombie parents</h2>");
    let rows: Vec<Vec<String>> = st
        .scan
        .zombie_parents
        .iter()
        .map(|z| {
            vec![
                format!("{} <code>{}</code>", z.parent_pid, esc(&z.parent_comm)),
                z.zombies.to_string(),
                esc(&secs(z.for_seconds)),
            ]
        })
        .collect();
    table(
        &mut o,
        "zombies",
        &["parent", "zombies", "for"],
        &rows,
        "no zombies",
    );

    o.push_str("<h2>Recent kill decisions</h2>");
    let rows: Vec<Vec<String>> = st
        .recent_kills
        .iter()
        .map(|k| {
            vec![
                esc(&secs(st.generated_at_unix - k.at_unix)) + " ago",
                esc(&k.rule),
                esc(&k.action),
                format!("{} <code>{}</code>", k.pid, esc(&k.comm)),
                esc(&k.outcome),
            ]
        })
        .collect();
    table(
        &mut o,
        "kills",
        &["when", "rule", "action", "process", "outcome"],
        &rows,
        "none yet",
    );

    o.push_str("<h2>Stale profile directories</h2>");
    let rows: Vec<Vec<String>> = st
        .scan
        .stale_dirs
        .iter()
        .map(|d| {
            vec![
                esc(&d.path.display().to_string()),
                esc(&secs(d.age_seconds as f64)),
                esc(&d.result),
            ]
        })
        .collect();
    table(
        &mut o,
        "stale",
        &["directory", "unmodified for", "result"],
        &rows,
        "none",
    );

    o.push_str("<h2>Policy in force</h2>");
    let _ = write!(
        o,
        "<p>families: {} · stale-profile roots: {}</p>",
        esc(&p.families.join(", ")),
        esc(&p.stale_roots.join(", "))
    );
    let rows: Vec<Vec<String>> = p
        .rules
        .iter()
        .map(|r| {
            vec![
                esc(&r.name),
                esc(&r.action),
                esc(&if r.families.is_empty() {
                    "every family".to_string()
                } else {
                    r.families.join(", ")
                }),
                format!("<code>{}</code>", esc(&r.when.to_string())),
            ]
        })
        .collect();
    table(
        &mut o,
        "rules",
        &["rule", "action", "families", "when"],
        &rows,
        "no rules",
    );
    o.push_str("<footer>Also as JSON: <a href=\"/api/v1/status\">/api/v1/status</a> · <a href=\"/metrics\">/metrics</a></footer></body></html>\n");
    o
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{margin:0}h2{margin-top:1.5em;font-size:1.1em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f4f4f4}code{font-size:12px;background:#f6f6f6;padding:0 3px;white-space:pre-wrap;word-break:break-all}\
.muted{color:#888}.bad{color:#b00;font-weight:bold}.badge{padding:2px 8px;border-radius:4px;font-weight:bold}\
.dry{background:#fd7;color:#540}.live{background:#cfc;color:#050}.spark{color:#36c}footer{margin-top:2em;color:#888}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("a\"b&c"), "a&quot;b&amp;c");
        assert_eq!(esc("new\nline"), "new\u{fffd}line");
    }

    #[test]
    fn a_sparkline_of_a_flat_or_short_series_draws_nothing_wrong() {
        assert!(sparkline(&[1.0], "t").contains('—'));
        let s = sparkline(&[5.0, 5.0, 5.0], "<t>");
        assert!(s.contains("polyline") && s.contains("&lt;t&gt;"));
    }
}
