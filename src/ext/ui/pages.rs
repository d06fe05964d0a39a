//! The pages, as `maud` templates: every `(value)` is HTML-escaped, so
//! names, tags, labels, annotations and messages show as text whatever
//! they hold. No inline script or style anywhere (the CSP forbids both).

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use maud::{html, Markup, DOCTYPE};

use super::{encode, Visitor};
use crate::ext::search::details::ImageDetails;
use crate::ext::search::{RepoPage, TagsResult};
use crate::oci::{Reference, RepoName};

/// What the vulnerability section shows.
pub(crate) enum Vulnerabilities {
    #[cfg(not(feature = "scan"))]
    NotBuilt,
    #[cfg(feature = "scan")]
    Disabled,
    #[cfg(feature = "scan")]
    Pending,
    #[cfg(feature = "scan")]
    Failed(String),
    #[cfg(feature = "scan")]
    Ready(std::sync::Arc<crate::ext::scan::report::Report>),
}

/// `1.5 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `2026-11-30 12:00 UTC` from RFC 3339; anything else (an image config's
/// `created` is whatever its author wrote) as it is.
fn when(t: Option<&str>) -> String {
    match t {
        Some(t) => match (t.get(..10), t.get(11..16)) {
            (Some(date), Some(time)) => format!("{date} {time} UTC"),
            _ => t.to_owned(),
        },
        None => "unknown".to_owned(),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

fn layout(v: Option<&Visitor>, title: &str, query: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Berth" }
                // No icon request (none is served).
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "Berth" }
                    form.search role="search" action="/ui/" method="get" {
                        label.visually-hidden for="q" { "Search repositories" }
                        input #q type="search" name="q" value=(query) placeholder="Search repositories" autocomplete="off";
                        button type="submit" { "Search" }
                    }
                    nav.account aria-label="Account" {
                        @if let Some(v) = v {
                            @if let (Some(name), Some(s)) = (v.name(), &v.session) {
                                span.who { "Signed in as " strong { (name) } }
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            } @else if v.can_sign_in {
                                a href="/ui/login" { "Sign in" }
                            }
                        }
                    }
                }
                main #main { (main) }
            }
        }
    }
}

pub(crate) fn error_page(v: Option<&Visitor>, status: StatusCode, message: &str) -> Response {
    let page = layout(
        v,
        status.canonical_reason().unwrap_or("Error"),
        "",
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/ui/" { "Back to the repositories" } }
        },
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

pub(crate) fn home(v: &Visitor, q: &str, page: &RepoPage) -> Markup {
    let heading =
        if q.trim().is_empty() { "Repositories".to_owned() } else { format!("Repositories matching “{q}”") };
    layout(
        Some(v),
        &heading,
        q,
        html! {
            h1 { (heading) }
            p.count { (page.total) " " (if page.total == 1 { "repository" } else { "repositories" }) }
            @if page.items.is_empty() {
                p.empty {
                    "Nothing to show."
                    @if v.session.is_none() && v.can_sign_in { " " a href="/ui/login" { "Sign in" } " to see more." }
                }
            } @else {
                ul.repos {
                    @for r in &page.items {
                        li {
                            a.repo href={ "/ui/repositories/" (r.name) } { (r.name) }
                            span.meta {
                                (r.tags) " " (if r.tags == 1 { "tag" } else { "tags" })
                                @if let Some(t) = crate::ext::search::index::rfc3339(r.last_push) {
                                    " · pushed " (when(Some(&t)))
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next {
                p.pager { a rel="next" href={ "/ui/?q=" (encode(q)) "&last=" (encode(next)) } { "Next page" } }
            }
        },
    )
}

pub(crate) fn repository(v: &Visitor, repo: &RepoName, tags: &TagsResult, filter: &str, sort: &str) -> Markup {
    let other = if sort == "pushed" { ("name", "Sort by name") } else { ("pushed", "Newest first") };
    layout(
        Some(v),
        repo.as_str(),
        "",
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/ui/" { "Repositories" } " / " }
            h1 { (repo.as_str()) }
            (copy_box("pull-latest", "Pull", &format!("docker pull {}/{}", v.host, repo)))
            form.filter method="get" action={ "/ui/repositories/" (repo) } {
                label for="tag-filter" { "Filter tags" }
                input #tag-filter type="search" name="q" value=(filter);
                input type="hidden" name="sort" value=(sort);
                button type="submit" { "Filter" }
                a href={ "/ui/repositories/" (repo) "?sort=" (other.0) "&q=" (encode(filter)) } { (other.1) }
            }
            p.count { (tags.total) " " (if tags.total == 1 { "tag" } else { "tags" }) }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Tag" } th scope="col" { "Digest" } th scope="col" { "Pushed" } } }
                    tbody {
                        @for t in &tags.tags {
                            tr {
                                td { a href={ "/ui/images/" (repo) "/" (t.name) } { (t.name) } }
                                td.mono {
                                    @if let Some(d) = &t.digest {
                                        a href={ "/ui/images/" (repo) "/" (d) } title=(d) { (short(d)) }
                                    } @else { "—" }
                                }
                                td { (when(t.pushed.as_deref())) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &tags.next {
                p.pager {
                    a rel="next" href={ "/ui/repositories/" (repo) "?sort=" (sort) "&q=" (encode(filter)) "&last=" (encode(next)) } { "Next page" }
                }
            }
        },
    )
}

fn copy_box(id: &str, label: &str, command: &str) -> Markup {
    html! {
        div.copy {
            label for=(id) { (label) }
            div.copy-row {
                input.command id=(id) type="text" readonly value=(command) spellcheck="false";
                button.copy-button type="button" data-copy-target=(id) aria-label={ "Copy: " (command) } { "Copy" }
            }
        }
    }
}

fn kv_table(caption: &str, rows: &[(&str, &str)]) -> Markup {
    html! {
        div.table-wrap {
            table.kv {
                caption { (caption) }
                tbody {
                    @for (k, value) in rows {
                        tr { th scope="row" { (k) } td { (value) } }
                    }
                }
            }
        }
    }
}

pub(crate) fn image(
    v: &Visitor,
    repo: &RepoName,
    reference: &Reference,
    d: &ImageDetails,
    vulns: &Vulnerabilities,
) -> Markup {
    let by_digest = format!("{}/{}@{}", v.host, repo, d.digest);
    let by_tag = match reference {
        Reference::Tag(t) => Some(format!("{}/{}:{}", v.host, repo, t)),
        Reference::Digest(_) => None,
    };
    let title = match reference {
        Reference::Tag(t) => format!("{repo}:{t}"),
        Reference::Digest(dg) => format!("{repo}@{}", short(&dg.to_string())),
    };
    let summary: Vec<(&str, String)> = vec![
        ("Digest", d.digest.clone()),
        ("Media type", d.media_type.clone()),
        ("Manifest size", size(d.size)),
        ("Pushed", when(d.pushed.as_deref())),
        ("Last pulled", when(d.pulled.as_deref())),
    ];
    layout(
        Some(v),
        &title,
        "",
        html! {
            nav.crumbs aria-label="Breadcrumb" {
                a href="/ui/" { "Repositories" } " / " a href={ "/ui/repositories/" (repo) } { (repo.as_str()) } " / "
            }
            h1 { (title) }
            section aria-labelledby="pull-h" {
                h2 #pull-h { "Pull" }
                @if let Some(t) = &by_tag {
                    (copy_box("docker-tag", "docker, by tag", &format!("docker pull {t}")))
                }
                (copy_box("docker-digest", "docker, by digest", &format!("docker pull {by_digest}")))
                (copy_box("podman-digest", "podman, by digest", &format!("podman pull {by_digest}")))
            }
            section aria-labelledby="summary-h" {
                h2 #summary-h { "Summary" }
                div.table-wrap {
                    table.kv {
                        tbody {
                            @for (k, value) in &summary { tr { th scope="row" { (k) } td.mono { (value) } } }
                            @if let Some(a) = &d.artifact_type { tr { th scope="row" { "Artifact type" } td.mono { (a) } } }
                            @if let Some(s) = &d.subject {
                                tr { th scope="row" { "Refers to" } td.mono { a href={ "/ui/images/" (repo) "/" (s) } { (s) } } }
                            }
                        }
                    }
                }
            }
            @if !d.platforms.is_empty() {
                section aria-labelledby="platforms-h" {
                    h2 #platforms-h { "Platforms" }
                    div.table-wrap {
                        table {
                            thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } th scope="col" { "Layers" } th scope="col" { "Size" } } }
                            tbody {
                                @for p in &d.platforms {
                                    tr {
                                        td { (p.platform.as_deref().unwrap_or("(none)")) }
                                        td.mono { a href={ "/ui/images/" (repo) "/" (p.digest) } title=(p.digest) { (short(&p.digest)) } }
                                        td { (p.layers.map_or("—".to_owned(), |l| l.to_string())) }
                                        td { (p.total_size.map_or("not stored here".to_owned(), size)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(img) = &d.image {
                section aria-labelledby="image-h" {
                    h2 #image-h { "Image" }
                    @let f = &img.facts;
                    @let platform = match (&f.os, &f.architecture) {
                        (Some(os), Some(arch)) => match &f.variant { Some(var) => format!("{os}/{arch}/{var}"), None => format!("{os}/{arch}") },
                        _ => "unknown".to_owned(),
                    };
                    (kv_table("Configuration", &[
                        ("Platform", &platform),
                        ("Created", &when(f.created.as_deref())),
                        ("Author", f.author.as_deref().unwrap_or("")),
                        ("Entrypoint", &f.entrypoint.join(" ")),
                        ("Command", &f.cmd.join(" ")),
                        ("Ports", &f.exposed_ports.join(", ")),
                        ("Total size", &size(img.total_size)),
                    ]))
                    @if let Some(e) = &img.config_error { p.note { "The configuration could not be read: " (e) } }
                    h3 { "Layers" }
                    div.table-wrap {
                        table {
                            thead { tr { th scope="col" { "#" } th scope="col" { "Digest" } th scope="col" { "Media type" } th scope="col" { "Size" } } }
                            tbody {
                                @for (i, l) in img.layers.iter().enumerate() {
                                    tr { td { (i + 1) } td.mono title=(l.digest) { (short(&l.digest)) } td.mono { (l.media_type) } td { (size(l.size)) } }
                                }
                            }
                        }
                    }
                    h3 { "Labels" }
                    @if f.labels.is_empty() { p.empty { "No labels." } } @else {
                        div.table-wrap {
                            table.kv.labels {
                                tbody { @for (k, value) in &f.labels { tr { th scope="row" { (k) } td { (value) } } } }
                            }
                        }
                    }
                    @if !f.history.is_empty() {
                        h3 { "History" }
                        ol.history {
                            @for h in &f.history {
                                li {
                                    span.mono { (h.created_by.as_deref().unwrap_or("")) }
                                    @if h.empty_layer { " " span.tag { "no layer" } }
                                    @if let Some(c) = &h.comment { " — " (c) }
                                }
                            }
                        }
                    }
                }
            }
            @if !d.annotations.is_empty() {
                section aria-labelledby="annotations-h" {
                    h2 #annotations-h { "Annotations" }
                    div.table-wrap {
                        table.kv.annotations {
                            tbody { @for (k, value) in &d.annotations { tr { th scope="row" { (k) } td { (value) } } } }
                        }
                    }
                }
            }
            section aria-labelledby="referrers-h" {
                h2 #referrers-h { "Attached artifacts" }
                @if d.referrers.is_empty() { p.empty { "No signatures, SBOMs or other artifacts refer to this manifest." } }
                @for g in &d.referrers {
                    h3.mono { (g.artifact_type) }
                    ul.referrers {
                        @for r in &g.manifests {
                            li {
                                a.mono href={ "/ui/images/" (repo) "/" (r.digest) } { (short(&r.digest.to_string())) }
                                " · " (size(r.size))
                                @if let Some(created) = r.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.created")) {
                                    " · " (created)
                                }
                            }
                        }
                    }
                }
                @if d.referrers_truncated { p.note { "More artifacts exist than are listed." } }
            }
            section aria-labelledby="vulns-h" {
                h2 #vulns-h { "Vulnerabilities" }
                (vulnerabilities(vulns))
            }
        },
    )
}

fn vulnerabilities(v: &Vulnerabilities) -> Markup {
    match v {
        #[cfg(not(feature = "scan"))]
        Vulnerabilities::NotBuilt => html! { p.empty { "This build has no scanner." } },
        #[cfg(feature = "scan")]
        Vulnerabilities::Disabled => html! { p.empty { "Scanning is disabled on this registry." } },
        #[cfg(feature = "scan")]
        Vulnerabilities::Pending => html! { p.empty { "The scan is running. Reload in a moment." } },
        #[cfg(feature = "scan")]
        Vulnerabilities::Failed(e) => html! { p.note { "No report: " (e) } },
        #[cfg(feature = "scan")]
        Vulnerabilities::Ready(report) => {
            let order = ["critical", "high", "medium", "low", "unknown", "none"];
            html! {
                @if let Some(why) = &report.not_an_image { p.empty { "Not scanned: " (why) } } @else {
                    p {
                        (report.package_count) " packages"
                        @if let Some(os) = &report.os { " · " (os.id) " " (os.version_id) }
                        @if report.database.is_none() { " · no vulnerability database imported yet" }
                    }
                    ul.severity {
                        @for s in order {
                            @if let Some(n) = report.summary.get(s) { li class={ "sev sev-" (s) } { (s) ": " (n) } }
                        }
                    }
                    @if report.findings.is_empty() { p.empty { "No known vulnerabilities." } } @else {
                        div.table-wrap {
                            table {
                                thead { tr { th scope="col" { "ID" } th scope="col" { "Severity" } th scope="col" { "Package" } th scope="col" { "Installed" } th scope="col" { "Fixed in" } } }
                                tbody {
                                    @for f in report.findings.iter().take(500) {
                                        tr {
                                            td.mono {
                                                // Links only to web pages: an advisory's URL is data.
                                                @match f.url.as_deref().filter(|u| u.starts_with("https://") || u.starts_with("http://")) {
                                                    Some(u) => a href=(u) rel="noreferrer noopener" { (f.id) },
                                                    None => (f.id),
                                                }
                                            }
                                            td { span class={ "sev sev-" (f.severity.as_str()) } { (f.severity.as_str()) } }
                                            td { (f.package) }
                                            td.mono { (f.installed_version) }
                                            td.mono { (f.fixed_version.as_deref().unwrap_or("—")) }
                                        }
                                    }
                                }
                            }
                        }
                        @if report.findings.len() > 500 { p.note { "The first 500 findings are shown; the JSON report has them all." } }
                    }
                }
            }
        }
    }
}

pub(crate) fn login(v: &Visitor, next: &str, csrf: &str, message: Option<&str>) -> Markup {
    layout(
        Some(v),
        "Sign in",
        "",
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { p.error role="alert" { (m) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="username" { "User name" }
                input #username type="text" name="username" autocomplete="username" autocapitalize="none" spellcheck="false";
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password";
                details {
                    summary { "Sign in with an access token instead" }
                    label for="token" { "Access token" }
                    input #token type="password" name="token" autocomplete="off";
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(when(Some("2026-11-30T12:00:00Z")), "2026-11-30 12:00 UTC");
        assert_eq!(when(None), "unknown");
        // Written by an image's author: never sliced inside a character.
        assert_eq!(when(Some("2026-11-3€ 12:00:00")), "2026-11-3€ 12:00:00");
        assert_eq!(when(Some("yesterday")), "yesterday");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
