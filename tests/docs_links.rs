//! Every link in README.md and docs/*.md stays inside the repository: a relative path to a
//! file or directory that exists (and, for `file.md#anchor` or `#anchor`, a heading that
//! GitHub gives that anchor), never `../` out of the tree, an absolute path or an http(s)
//! URL. Fenced code blocks and inline code are examples, not links, and are skipped.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// Links that break the rule and are known, not fixed yet. Each entry must still exist,
/// so a fixed one is removed from this list.
const REPORTED: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// Lines outside fenced code blocks (``` or ~~~), with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<String> = None;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker: String = t.chars().take_while(|c| *c == '`' || *c == '~').collect();
        match &fence {
            Some(open) if t.starts_with(open.as_str()) && t[open.len()..].trim().is_empty() => {
                fence = None
            }
            Some(_) => {}
            None if marker.len() >= 3
                && marker.chars().all(|c| c == marker.as_bytes()[0] as char) =>
            {
                fence = Some(marker)
            }
            None => out.push((n + 1, line)),
        }
    }
    out
}

/// The line without its inline code spans (`...`, ``...``).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let delim = "`".repeat(ticks);
        out.push_str(&rest[..start]);
        match rest[start + ticks..].find(&delim) {
            Some(end) => rest = &rest[start + ticks + end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Link targets of one prose line: `[text](target)`, `![alt](target)`, `[ref]: target`,
/// `<scheme://...>`, bare http(s) URLs, and HTML href/src attributes.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    // [text](target "title") and images; the text may itself hold brackets.
    let bytes = line.as_bytes();
    let mut i = 0;
    while let Some(at) = line[i..].find("](") {
        let start = i + at + 2;
        let mut depth = 1;
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        let inner = line[start..end.min(line.len())].trim();
        let target = if let Some(angled) = inner.strip_prefix('<') {
            angled.split('>').next().unwrap_or_default()
        } else {
            inner.split_whitespace().next().unwrap_or_default()
        };
        out.push(target.to_string());
        i = end.min(line.len());
    }
    // Reference definitions.
    let t = line.trim_start();
    if t.starts_with('[') {
        if let Some((label, target)) = t.split_once("]:") {
            if !label.contains("](") {
                out.push(
                    target
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    }
    // HTML attributes.
    for attr in ["href=\"", "src=\""] {
        for (at, _) in line.match_indices(attr) {
            let v = &line[at + attr.len()..];
            out.push(v.split('"').next().unwrap_or_default().to_string());
        }
    }
    // Autolinks and bare URLs (GitHub links both), unless already part of a [..](..).
    for scheme in ["http://", "https://"] {
        for (at, _) in line.match_indices(scheme) {
            let url: String = line[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"<>\"')".contains(*c))
                .collect();
            let url = url.trim_end_matches(['.', ',', ';', ':']).to_string();
            if !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out
}

/// GitHub's anchor for a heading text: lower case, punctuation dropped (but `-` and `_`),
/// spaces to `-`.
fn slug(heading: &str) -> String {
    let mut text = heading.replace('`', "");
    // [text](url) renders as its text.
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')') else {
            break;
        };
        if open > mid {
            break;
        }
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[mid + close + 1..]
        );
    }
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown file offers: its headings (duplicates get -1, -2, ...) and
/// explicit HTML ids / names.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') {
            let heading = t[hashes..].trim().trim_end_matches('#').trim();
            let base = slug(heading);
            let mut candidate = base.clone();
            let mut n = 0;
            while seen.contains(&candidate) {
                n += 1;
                candidate = format!("{base}-{n}");
            }
            seen.insert(candidate);
        }
        for attr in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(attr) {
                let v = &line[at + attr.len()..];
                seen.insert(v.split('"').next().unwrap_or_default().to_string());
            }
        }
    }
    seen
}

/// `path` normalised without touching the file system; `None` if it climbs above `/`.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// What is wrong with one link target of `doc`, if anything.
fn problem(doc: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link target".into());
    }
    if target.contains("://") || target.starts_with("mailto:") || target.starts_with("//") {
        return Some("leaves the repository (an external URL)".into());
    }
    if target.starts_with('/') {
        return Some("absolute path: write it relative to the document".into());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let path = path.split('?').next().unwrap_or_default();
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        let joined = doc.parent().unwrap().join(path);
        match normalise(&joined) {
            Some(p) if p.starts_with(root()) => p,
            _ => return Some("leaves the repository (climbs out of it with ../)".into()),
        }
    };
    if !file.exists() {
        return Some(format!(
            "{} does not exist",
            file.strip_prefix(root()).unwrap_or(&file).display()
        ));
    }
    if let Some(anchor) = anchor {
        if file.extension().is_some_and(|x| x == "md") {
            let text = std::fs::read_to_string(&file).expect("linked markdown");
            if !anchors(&text).contains(anchor) {
                return Some(format!(
                    "no heading gives the anchor #{anchor} in {}",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                ));
            }
        }
    }
    None
}

#[test]
fn every_link_in_readme_and_docs_stays_in_the_repository_and_resolves() {
    let mut bad = Vec::new();
    let mut reported_seen = BTreeSet::new();
    let mut checked = 0;
    for doc in documents() {
        let rel = doc.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&doc).expect("document");
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                checked += 1;
                if REPORTED.contains(&(rel.as_str(), target.as_str())) {
                    reported_seen.insert((rel.clone(), target.clone()));
                    continue;
                }
                if let Some(why) = problem(&doc, &target) {
                    bad.push(format!("{rel}:{n}: ({target}) {why}"));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the scan broken?"
    );
    for (doc, target) in REPORTED {
        assert!(
            reported_seen.contains(&(doc.to_string(), target.to_string())),
            "{doc} no longer links {target}: remove it from REPORTED"
        );
    }
    assert!(
        bad.is_empty(),
        "broken or outgoing links:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_link_scan_finds_what_it_must() {
    assert_eq!(
        link_targets("see [`a.md`](a.md#x-y), ![i](img/p.png \"t\") and <https://x.example/a>."),
        ["a.md#x-y", "img/p.png", "https://x.example/a"]
    );
    assert_eq!(
        link_targets("code `[no](link.md)` and `http://127.0.0.1:8080/x` are examples"),
        Vec::<String>::new()
    );
    assert_eq!(link_targets("[ref]: ../shared/x.md"), ["../shared/x.md"]);
    assert_eq!(
        link_targets("bare https://example.com/doc, then"),
        ["https://example.com/doc"]
    );
    let fenced = "a\n```sh\n[x](missing.md)\n```\nb [y](z.md)\n";
    let lines: Vec<&str> = prose_lines(fenced).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["a", "b [y](z.md)"]);
    assert_eq!(
        slug("5. Cursors and recovery (durable mode)"),
        "5-cursors-and-recovery-durable-mode"
    );
    assert_eq!(
        slug("`herald_connections` and [links](x.md)"),
        "herald_connections-and-links"
    );
    let a = anchors("# T\n## Watch it\n## Watch it\n```\n# not a heading\n```\n");
    assert!(a.contains("watch-it") && a.contains("watch-it-1") && !a.contains("not-a-heading"));
    let doc = root().join("docs/deploy.md");
    assert!(problem(&doc, "../../outside.md").is_some());
    assert!(problem(&doc, "../README.md").is_none());
    assert!(problem(&doc, "missing.md").is_some());
    assert!(problem(&doc, "protocol.md#no-such-heading").is_some());
    assert!(problem(&doc, "https://kubernetes.io/docs/").is_some());
}
